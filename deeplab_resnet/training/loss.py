"""The loss DeepLab trains: softmax cross-entropy over labelled pixels on the logits' grid.

Labels are shrunk to the logits' grid (1/8 of the input) by nearest
neighbour and pixels whose label is the ignore label count for nothing. One
tower returns the loss *summed* over its labelled pixels with their count, so
that towers, accumulated batches and workers add up before the one division
that gives the mean: k batches (or devices) of b images give exactly the
update of one batch of k*b (with frozen BatchNorm), however many pixels each
ignores.

Label values outside ``0..num_classes-1`` that reach the loss are counted,
not fed to the cross-entropy (which fails on CPU and returns NaN on GPU).
"""
import collections

from deeplab_resnet.constants import IGNORE_LABEL
from deeplab_resnet.model import build_model
from deeplab_resnet.runtime import tf
from deeplab_resnet.training.gradients import CONV2D_GRADIENT

Tower = collections.namedtuple(
    "Tower", ["net", "images", "labels", "logits", "label", "loss_sum", "num_valid",
              "num_correct", "num_bad_labels", "max_bad_label"])


def prepare_label(label, size):
    """Resize labels to the logit grid with nearest neighbour.

    Bilinear would invent class ids between neighbours (e.g. 7.5).

    Args:
      label: int tensor [N, H, W] or [N, H, W, 1].
      size: (height, width) of the logits, ints or scalar tensors.
    Returns:
      int32 tensor [N, h, w].
    """
    if label.get_shape().ndims == 3:
        label = tf.expand_dims(label, -1)
    label = tf.image.resize_nearest_neighbor(label, tf.stack(size),
                                             align_corners=True)
    return tf.cast(tf.squeeze(label, axis=[3]), tf.int32)


def tower_loss(images, labels, num_classes, *, ignore_label=IGNORE_LABEL,
               is_training=False, config=None):
    """DeepLab on one batch and its summed pixel loss: what one device computes.

    Args:
      images: float32 [N, H, W, 3], BGR minus ``IMG_MEAN``.
      labels: integer [N, H, W, 1] class ids, ``ignore_label`` where unlabelled.
      num_classes: classifier outputs.
      is_training: BatchNorm uses batch statistics and updates its averages.
      config: ``ModelConfig``; None for ResNet-101.
    Returns:
      ``Tower``: ``net``, the inputs ``images`` and ``labels``, ``logits``
      float32 [N, h, w, C] at 1/8 size, ``label`` int32 [N, h, w] on the
      logits' grid, and the scalars ``loss_sum`` (cross-entropy summed over
      labelled pixels), ``num_valid`` (labelled pixels), ``num_correct``
      (labelled pixels predicted right), ``num_bad_labels`` (pixels whose
      label is neither a class id nor ``ignore_label``; left out of the loss)
      and ``max_bad_label`` (the largest such value, -1 if none).
    """
    with tf.get_default_graph().gradient_override_map({"Conv2D": CONV2D_GRADIENT}):
        net, logits = build_model(images, num_classes, is_training=is_training,
                                  config=config)
    logits = tf.cast(logits, tf.float32)
    label = prepare_label(labels, tf.unstack(tf.shape(logits)[1:3]))
    labelled = tf.not_equal(label, ignore_label)
    valid = tf.logical_and(labelled, tf.logical_and(label >= 0, label < num_classes))
    bad = tf.logical_and(labelled, tf.logical_not(valid))
    # Ignored pixels get class 0 so the op accepts them, then count for nothing.
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, label, tf.zeros_like(label)), logits=logits)
    loss_sum = tf.reduce_sum(tf.where(valid, pixel_loss, tf.zeros_like(pixel_loss)))
    pred = tf.argmax(logits, axis=3, output_type=tf.int32)
    num_correct = tf.reduce_sum(tf.cast(tf.logical_and(valid, tf.equal(pred, label)),
                                        tf.float32))
    num_valid = tf.reduce_sum(tf.cast(valid, tf.float32))
    num_bad = tf.reduce_sum(tf.cast(bad, tf.float32))
    max_bad = tf.reduce_max(tf.where(bad, label, tf.fill(tf.shape(label), -1)))
    return Tower(net, images, labels, logits, label, loss_sum, num_valid, num_correct,
                 num_bad, max_bad)
