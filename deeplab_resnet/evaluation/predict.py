"""Prediction at full image size, with DeepLab's multi-scale inputs, flip and bf16.

The network's logits are at 1/8 of the input size. As in DeepLab's Caffe
deploy nets, they are upsampled bilinearly with aligned corners (Caffe's
``Interp`` layer: a 321 input gives 41 logits and 40 * 8 = 320 maps the
corner logits exactly onto the corner pixels) to the image's own size, and
the prediction is their argmax there; no cropping or padding is involved.

Test-time augmentation follows DeepLab-v2's multi-scale inputs (MSC): the
image is resized by each scale (Caffe ``Interp`` with a shrink factor,
``(size - 1) * scale + 1`` pixels, so corners stay aligned), each scale's
logits are resized back to the image's size and the scales are fused by an
element-wise max. With ``flip`` the mirrored image goes through the network
in the same batch and its logits, mirrored back, are *averaged* with the
unmirrored ones at each scale before the max over scales.

``scale_branches`` builds the network once per scale with shared
variables; prediction here and multi-scale training (``training.loss``)
both use it, so the two resize inputs the same way.

One graph serves every image size: the input is ``[1, None, None, 3]`` and
all sizes are computed from ``tf.shape``. Weights are restored with
``checkpoints.restore`` into a network built with BatchNorm folded into the
convolutions (fewer ops per image; the stored weights are folded on load).
"""
import collections
import dataclasses
import logging
from typing import Tuple

from deeplab_resnet import checkpoints
from deeplab_resnet.images import label_dtype_for, preprocess
from deeplab_resnet.model import build_model
from deeplab_resnet.layer_ops import interp_size
from deeplab_resnet.runtime import tf

log = logging.getLogger(__name__)

Prediction = collections.namedtuple("Prediction", ["logits", "probs", "pred"])
Prediction.__doc__ = """Outputs at the input's size.

logits: float32 [N, H, W, C], fused over scales and flips; probs: their
softmax; pred: int32 [N, H, W] argmax class ids."""


@dataclasses.dataclass(frozen=True)
class PredictConfig(object):
    """How the network predicts: test-time input scales, mirroring and bfloat16.

    scales: input scales fused by max, e.g. (0.5, 0.75, 1.0) (DeepLab MSC).
    flip: average with the mirrored input's logits at each scale.
    bf16: run the network in bfloat16 (see ``build_prediction``).

    Raises:
      ValueError: no scale, or one outside (0, 4].
    """
    scales: Tuple[float, ...] = (1.0,)
    flip: bool = False
    bf16: bool = False

    def __post_init__(self):
        scales = tuple(float(s) for s in self.scales)
        if not scales:
            raise ValueError("At least one scale is needed.")
        if not all(0 < s <= 4 for s in scales):
            raise ValueError("Scales must each be in (0, 4]; got %s."
                             % ",".join("%g" % s for s in scales))
        object.__setattr__(self, "scales", scales)

    def build(self, images, num_classes, config=None):
        """``build_prediction`` with these options: (net, Prediction)."""
        return build_prediction(images, num_classes, config, scales=self.scales,
                                flip=self.flip, bf16=self.bf16)

    def describe(self):
        """'scales 0.5,1, flip, bf16': for log lines."""
        return "scales %s%s%s" % (",".join("%g" % s for s in self.scales),
                                  ", flip" if self.flip else "",
                                  ", bf16" if self.bf16 else "")


def scale_branches(images, scales, build, *, flip=False, dtype=tf.float32):
    """DeepLab's multi-scale inputs (MSC): one network per scale, variables shared.

    Each scale's input is ``images`` resized bilinearly to Caffe ``Interp``'s
    size, ``(size - 1) * scale + 1`` with aligned corners (DeepLab-v2's
    prototxt: 321 gives 241 and 161 at 0.75 and 0.5). Only the first
    branch's BatchNorm updates are kept, as one network would have them.

    Args:
      images: float32 [N, H, W, 3]; H and W may be unknown.
      scales: the input scales, in order.
      build: ``build(inputs) -> (net, logits)``, called once per scale.
      flip: each branch also runs the mirrored batch, appended after it.
      dtype: the branches' input dtype (bfloat16 for a bfloat16 network).
    Returns:
      (first branch's net, [(scale, logits float32 [N or 2N, h_s, w_s, C])]).
    """
    size = tf.shape(images)[1:3]
    updates = tf.get_collection_ref(tf.GraphKeys.UPDATE_OPS)
    first_net, branches = None, []
    with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
        for scale in scales:
            before = len(updates)
            with tf.name_scope("scale_%g" % scale):
                inputs = images
                if scale != 1.0:
                    inputs = tf.image.resize_bilinear(
                        images, interp_size(size, scale), align_corners=True)
                if flip:
                    inputs = tf.concat([inputs, tf.reverse(inputs, [2])], axis=0)
                inputs = tf.cast(inputs, dtype)
            net, logits = build(inputs)
            if first_net is None:
                first_net = net
            else:
                del updates[before:]
            branches.append((scale, tf.cast(logits, tf.float32)))
    return first_net, branches


def build_prediction(images, num_classes, config=None, *, scales=(1.0,), flip=False,
                     fold_batchnorm=True, bf16=False):
    """DeepLab's prediction at the input's size, with optional MSC and flip.

    Every scale builds the network once more with shared variables (the
    variable names stay those of one network, so ``checkpoints.restore`` fills
    them all).

    Args:
      images: float32 [N, H, W, 3], BGR minus ``IMG_MEAN``; H and W may
        be unknown.
      num_classes: classifier outputs.
      config: ``ModelConfig`` (see ``checkpoints.resolve_model``).
      scales: input scales fused by max, e.g. (0.5, 0.75, 1.0).
      flip: average with the mirrored input's logits at each scale.
      fold_batchnorm: build BatchNorm as biases (inference only).
      bf16: run the network in bfloat16, with its weights stored in
        bfloat16 (restore casts them). Its logits are cast to float32 at
        once: resizing, fusing, softmax and argmax are float32 either way.
    Returns:
      (net, Prediction): ``net`` holds the variables to restore.
    """
    if not scales:
        raise ValueError("At least one scale is needed.")
    size = tf.shape(images)[1:3]
    batch = tf.shape(images)[0]
    dtypes = {}
    if bf16:
        dtypes = dict(compute_dtype=tf.bfloat16, variable_dtype=tf.bfloat16)
    first_net, branches = scale_branches(
        images, scales, lambda inputs: build_model(
            inputs, num_classes, config=config, fold_batchnorm=fold_batchnorm, **dtypes),
        flip=flip, dtype=tf.bfloat16 if bf16 else tf.float32)
    fused = None
    for scale, logits in branches:
        with tf.name_scope("scale_%g_fuse" % scale):
            logits = tf.image.resize_bilinear(logits, size, align_corners=True)
            if flip:
                logits = (logits[:batch] + tf.reverse(logits[batch:], [2])) / 2.0
            fused = logits if fused is None else tf.maximum(fused, logits)
    probs = tf.nn.softmax(fused, name="probs")
    pred = tf.argmax(fused, axis=3, output_type=tf.int32, name="pred")
    return first_net, Prediction(fused, probs, pred)


class Segmenter(object):
    """A restored network that segments RGB photos of any size.

    Builds one prediction graph (``build_prediction``) on a
    ``[1, None, None, 3]`` placeholder in the default graph and keeps its
    session open; ``close()`` releases it.

    Raises (from the constructor):
      IOError: no weights at ``weights``; ValueError: weights for another
      network or class count.
    """

    def __init__(self, weights, num_classes, *, predict=None, intra_op_threads=0,
                 inter_op_threads=0):
        path, config = checkpoints.resolve_model(weights, num_classes)
        self.images = tf.placeholder(tf.float32, [1, None, None, 3], name="image")
        net, self.prediction = (predict or PredictConfig()).build(self.images,
                                                                  num_classes, config)
        self.sess = checkpoints.open_session(net, path, intra_op_threads,
                                             inter_op_threads)
        log.info("Restored %s (%s)", path, ", ".join(
            "%s=%s" % kv for kv in sorted(config.to_dict().items())))

    def probabilities(self, image):
        """Softmax [H, W, C] (float32) for an RGB uint8 image [H, W, 3]."""
        return self.sess.run(self.prediction.probs,
                             {self.images: preprocess(image)})[0]

    def segment(self, image):
        """Class ids [H, W] (uint8) for an RGB uint8 image [H, W, 3]."""
        pred = self.sess.run(self.prediction.pred,
                             {self.images: preprocess(image)})[0]
        return label_dtype_for(pred)

    def close(self):
        self.sess.close()
