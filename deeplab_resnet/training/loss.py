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

Multi-scale training (DeepLab-v2's MSC, ``scales``) takes one loss per
scale's output and one on their element-wise max, each the mean over its
own labelled pixels, summed (Caffe's four SoftmaxWithLoss layers).
"""
import collections

from deeplab_resnet.constants import IGNORE_LABEL
from deeplab_resnet.evaluation.predict import scale_branches
from deeplab_resnet.model import build_model
from deeplab_resnet.runtime import tf
from deeplab_resnet.training.gradients import CONV2D_GRADIENT

Tower = collections.namedtuple(
    "Tower", ["net", "images", "labels", "logits", "label", "outputs", "loss_sum",
              "num_valid", "num_correct", "num_bad_labels", "max_bad_label"])
Output = collections.namedtuple("Output", ["name", "logits", "label", "loss_sum",
                                           "num_valid"])
Output.__doc__ = """One output the loss is taken on: a scale's logits, or their fusion.

name: '1', '0.75', ... for a scale's branch, 'max' for the fused output;
logits float32 [N, h, w, C]; label int32 [N, h, w] on their grid; the
scalars loss_sum (cross-entropy over its labelled pixels) and num_valid
(their count)."""
# The fused output of multi-scale training.
FUSED = "max"


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


def pixel_losses(logits, labels, num_classes, ignore_label=IGNORE_LABEL):
    """Cross-entropy of ``logits`` against ``labels`` on the logits' grid.

    Returns:
      (label int32 [N, h, w], loss_sum, num_valid, valid bool [N, h, w],
      bad bool [N, h, w]): pixels whose label is neither a class id nor the
      ignore label are ``bad`` and left out of the loss.
    """
    label = prepare_label(labels, tf.unstack(tf.shape(logits)[1:3]))
    labelled = tf.not_equal(label, ignore_label)
    valid = tf.logical_and(labelled, tf.logical_and(label >= 0, label < num_classes))
    bad = tf.logical_and(labelled, tf.logical_not(valid))
    # Ignored pixels get class 0 so the op accepts them, then count for nothing.
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, label, tf.zeros_like(label)), logits=logits)
    loss_sum = tf.reduce_sum(tf.where(valid, pixel_loss, tf.zeros_like(pixel_loss)))
    num_valid = tf.reduce_sum(tf.cast(valid, tf.float32))
    return label, loss_sum, num_valid, valid, bad


def scale_name(scale):
    """'1', '0.75', '0.5': how progress lines and summaries name a branch."""
    return "%g" % scale


def multi_scale_logits(images, num_classes, scales, is_training=False, config=None,
                       **model_kwargs):
    """DeepLab-v2's multi-scale inputs (MSC): one shared network per scale.

    The branches are ``predict.scale_branches``'s, the builder prediction
    uses too: each scale's input is the batch resized bilinearly to Caffe
    ``Interp``'s size, ``(size - 1) * scale + 1`` with aligned corners (what
    DeepLab-v2's prototxt does: 321 gives 241 and 161 at 0.75 and 0.5;
    DrSleep's train_msc.py floors ``size * scale`` instead, 240 and 160).
    The fused output is the element-wise max of every branch's logits resized
    bilinearly (aligned corners) to the grid of the first scale's.

    With ``is_training``, BatchNorm statistics of the first scale's branch
    alone update the moving averages, as one network would.

    ``model_kwargs`` go to ``build_model`` (dtypes, ``narrow_taps``).

    Returns:
      (net, [(name, logits float32 [N, h_s, w_s, C])] for each scale and then
      the fused output).
    """
    net, branches = scale_branches(
        images, scales, lambda inputs: build_model(
            inputs, num_classes, is_training=is_training, config=config, **model_kwargs),
        dtype=model_kwargs.get("compute_dtype", tf.float32))
    outputs = [(scale_name(scale), logits) for scale, logits in branches]
    with tf.name_scope("fuse_scales"):
        grid = tf.shape(outputs[0][1])[1:3]
        fused = outputs[0][1]
        for _, logits in outputs[1:]:
            fused = tf.maximum(fused, tf.image.resize_bilinear(logits, grid,
                                                               align_corners=True))
    return net, outputs + [(FUSED, fused)]


def _branches(images, num_classes, scales, is_training, config, model_kwargs):
    """(net, [(name, logits)]): the one network, or ``multi_scale_logits``'s."""
    if tuple(scales) != (1.0,):
        return multi_scale_logits(images, num_classes, scales, is_training=is_training,
                                  config=config, **model_kwargs)
    compute_dtype = model_kwargs["compute_dtype"]
    data = images if images.dtype == compute_dtype else tf.cast(images, compute_dtype)
    net, logits = build_model(data, num_classes, is_training=is_training,
                              config=config, **model_kwargs)
    return net, [(scale_name(1.0), tf.cast(logits, tf.float32))]


def tower_loss(images, labels, num_classes, *, ignore_label=IGNORE_LABEL,
               is_training=False, config=None, scales=(1.0,), compute_dtype=tf.float32,
               on_gpu=None):
    """DeepLab on one batch and its summed pixel losses: what one device computes.

    Args:
      images: float32 [N, H, W, 3], BGR minus ``IMG_MEAN``.
      labels: integer [N, H, W, 1] class ids, ``ignore_label`` where unlabelled.
      num_classes: classifier outputs.
      is_training: BatchNorm uses batch statistics and updates its averages.
      config: ``ModelConfig``; None for ResNet-101.
      scales: input scales; more than one trains DeepLab-v2's MSC
        (``multi_scale_logits``): one loss per scale's output and one on
        their fusion, each on labels shrunk to its own grid by nearest
        neighbour.
      compute_dtype: tf.bfloat16 for mixed precision: activations and
        convolutions in bfloat16, weights kept in float32 and cast where
        used (their gradients come back float32 through the casts),
        BatchNorm parameters and statistics, logits, loss and accuracy in
        float32. bfloat16 has float32's exponent range, so no loss scaling.
      on_gpu: whether the tower's convolutions run on a GPU (None: whether
        TensorFlow sees one). On CPU the narrow ASPP classifier is built as
        ``network.taps_conv2d``, whose backward pass is the fast one there.
    Returns:
      ``Tower``: ``net``, the inputs ``images`` and ``labels``, ``logits``
      float32 [N, h, w, C] at 1/8 size (the fused output with several
      scales), ``label`` int32 [N, h, w] on their grid, ``outputs`` (an
      ``Output`` per loss term), and the scalars ``loss_sum`` and
      ``num_valid`` (of the one output; with several scales, of the fused
      one), ``num_correct`` (labelled pixels of ``logits`` predicted right),
      ``num_bad_labels`` (pixels whose label is neither a class id nor
      ``ignore_label``; left out of the loss) and ``max_bad_label`` (the
      largest such value, -1 if none).
    """
    compute_dtype = tf.as_dtype(compute_dtype)
    if on_gpu is None:
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
    model_kwargs = dict(compute_dtype=compute_dtype, variable_dtype=tf.float32,
                        narrow_taps=compute_dtype == tf.bfloat16 if on_gpu else True)
    with tf.get_default_graph().gradient_override_map({"Conv2D": CONV2D_GRADIENT}):
        net, branches = _branches(images, num_classes, scales, is_training, config,
                                  model_kwargs)
    outputs = []
    for name, logits in branches:
        label, loss_sum, num_valid, valid, bad = pixel_losses(logits, labels,
                                                              num_classes, ignore_label)
        outputs.append(Output(name, logits, label, loss_sum, num_valid))
    logits, label = outputs[-1].logits, outputs[-1].label
    pred = tf.argmax(logits, axis=3, output_type=tf.int32)
    num_correct = tf.reduce_sum(tf.cast(tf.logical_and(valid, tf.equal(pred, label)),
                                        tf.float32))
    num_bad = tf.reduce_sum(tf.cast(bad, tf.float32))
    max_bad = tf.reduce_max(tf.where(bad, label, tf.fill(tf.shape(label), -1)))
    return Tower(net, images, labels, logits, label, outputs, outputs[-1].loss_sum,
                 outputs[-1].num_valid, num_correct, num_bad, max_bad)
