"""Prediction at full image size, shared by evaluate.py and inference.py.

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

One graph serves every image size: the input is ``[1, None, None, 3]`` and
all sizes are computed from ``tf.shape``. Weights are restored with
``utils.restore`` into a network built with BatchNorm folded into the
convolutions (fewer ops per image; the stored weights are folded on load).
"""
import collections
import glob
import logging
import os

import numpy as np
import tensorflow.compat.v1 as tf
from PIL import Image

from deeplab_resnet import crf, dataset_files, utils

log = logging.getLogger(__name__)

# The first ASPP branch's weights: their last dimension is the class count.
CLASSIFIER_WEIGHTS = utils.CLASSIFIER_PREFIX + "_c0/weights"

Prediction = collections.namedtuple("Prediction", ["logits", "probs", "pred"])
Prediction.__doc__ = """Outputs at the input's size.

logits: float32 [N, H, W, C], fused over scales and flips; probs: their
softmax; pred: int32 [N, H, W] argmax class ids."""


def parse_scales(text):
    """'0.5,0.75,1.0' -> (0.5, 0.75, 1.0).

    Raises:
      ValueError: not a comma-separated list of positive numbers.
    """
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError("--scales must be comma-separated numbers such as "
                         "0.5,0.75,1.0; got %r." % text)
    if not all(0 < s <= 4 for s in scales):
        raise ValueError("--scales must each be in (0, 4]; got %r." % text)
    return scales


def add_prediction_flags(parser):
    """--scales and --flip: DeepLab's test-time multi-scale and mirroring;
    --bf16: the network in bfloat16 (see ``build_prediction``)."""
    parser.add_argument("--scales", default="1.0",
                        help="Comma-separated input scales, e.g. 0.5,0.75,1.0 "
                             "(DeepLab MSC): each scale's logits are resized "
                             "to the image size and fused by element-wise max "
                             "(default: %(default)s).")
    parser.add_argument("--flip", action="store_true",
                        help="Also run the left-right mirrored image and "
                             "average its logits, mirrored back, with the "
                             "unmirrored ones at each scale (default: off).")
    parser.add_argument("--bf16", action="store_true",
                        help="Run the network in bfloat16: about 1.9x faster "
                             "on CPUs with native bfloat16 (AVX512_BF16 or "
                             "AMX); logits move by a few percent of their "
                             "range, which changes the label of under 0.5%% "
                             "of pixels (default: off, float32).")


# ------------------------------------------------------------------- model
def classifier_classes(path):
    """Number of classes the weights at ``path`` were trained for, or None.

    Reads only the classifier's shape (npz members load lazily; checkpoints
    have a shape map), so it is cheap even for ResNet-101.
    """
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                if CLASSIFIER_WEIGHTS in data.files:
                    return int(data[CLASSIFIER_WEIGHTS].shape[-1])
        except (ValueError, OSError) as err:
            raise IOError("%r is not a weight file written by convert.py or "
                          "train.py (%s)." % (path, err))
        return None
    shape = tf.train.load_checkpoint(path).get_variable_to_shape_map().get(
        CLASSIFIER_WEIGHTS)
    return int(shape[-1]) if shape else None


def resolve_model(weights, num_classes):
    """The weight file to restore and the architecture to build for it.

    The architecture comes from ``model_config.json`` beside checkpoints
    written by train.py; a file without one (converted Caffe weights) is the
    published ResNet-101.

    Args:
      weights: --restore-from / --model-weights: .npz, checkpoint prefix or
        directory.
      num_classes: --num-classes.
    Returns:
      (path, ModelConfig): ``path`` resolved as by ``utils.resolve_checkpoint``.
    Raises:
      IOError: nothing usable at ``weights``.
      ValueError: the weights were trained for another number of classes.
    """
    path = utils.resolve_checkpoint(weights)
    recorded, config = utils.load_model_config(path)
    trained = classifier_classes(path)
    if trained is None:
        trained = recorded
    if trained is not None and trained != num_classes:
        raise ValueError("%s was trained for %d classes but --num-classes is %d. "
                         "Run with --num-classes %d, or point at weights trained "
                         "for %d classes." % (path, trained, num_classes, trained,
                                              num_classes))
    return path, config


def scaled_size(size, scale):
    """Caffe ``Interp`` size of a resize by ``scale``: (size - 1) * scale + 1.

    Args:
      size: int32 tensor [2], (height, width).
    Returns:
      int32 tensor [2], at least 1 each.
    """
    if scale == 1.0:
        return size
    scaled = tf.floor(tf.cast(size - 1, tf.float32) * scale)
    return tf.maximum(tf.cast(scaled, tf.int32) + 1, 1)


def build_prediction(images, num_classes, config=None, scales=(1.0,), flip=False,
                     fold_batchnorm=True, bf16=False):
    """DeepLab's prediction at the input's size, with optional MSC and flip.

    Every scale builds the network once more with shared variables (the
    variable names stay those of one network, so ``utils.restore`` fills
    them all).

    Args:
      images: float32 [N, H, W, 3], BGR minus ``utils.IMG_MEAN``; H and W may
        be unknown.
      num_classes: classifier outputs.
      config: ``ModelConfig`` (see ``resolve_model``).
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
    first_net, fused = None, None
    with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
        for scale in scales:
            with tf.name_scope("scale_%g" % scale):
                inputs = images
                if scale != 1.0:
                    inputs = tf.image.resize_bilinear(
                        images, scaled_size(size, scale), align_corners=True)
                if flip:
                    inputs = tf.concat([inputs, tf.reverse(inputs, [2])], axis=0)
                if bf16:
                    inputs = tf.cast(inputs, tf.bfloat16)
            net, logits = utils.build_model(inputs, num_classes, config=config,
                                            fold_batchnorm=fold_batchnorm, **dtypes)
            logits = tf.cast(logits, tf.float32)
            first_net = first_net or net
            with tf.name_scope("scale_%g_fuse" % scale):
                logits = tf.image.resize_bilinear(logits, size, align_corners=True)
                if flip:
                    logits = (logits[:batch] + tf.reverse(logits[batch:], [2])) / 2.0
                fused = logits if fused is None else tf.maximum(fused, logits)
    probs = tf.nn.softmax(fused, name="probs")
    pred = tf.argmax(fused, axis=3, output_type=tf.int32, name="pred")
    return first_net, Prediction(fused, probs, pred)


def open_session(net, path, intra_op_threads=0, inter_op_threads=0):
    """A session with ``net``'s weights restored from ``path``.

    Raises:
      ValueError: the weights do not fit the network.
    """
    sess = tf.Session(config=utils.session_config(intra_op_threads,
                                                  inter_op_threads))
    try:
        utils.restore(sess, path, net)
    except Exception:
        sess.close()
        raise
    return sess


# ------------------------------------------------------------------ images
def preprocess(image):
    """RGB uint8 [H, W, 3] -> the network's input [1, H, W, 3]: BGR - mean."""
    image = np.asarray(image, dtype=np.float32)[..., ::-1] - utils.IMG_MEAN
    return image[None]


def labels_from(image, pred=None, probs=None, crf_params=None):
    """Class ids for one image: the network's argmax, or the CRF's.

    Args:
      image: uint8 RGB [H, W, 3] (used by the CRF only).
      pred: int [H, W] argmax of the network (used without CRF).
      probs: float [H, W, C] softmax (needed with CRF).
      crf_params: ``crf.CrfParams`` or None.
    Returns:
      uint8 array [H, W] when class ids fit 8 bits, else int32.
    """
    if crf_params is not None:
        pred = crf.crf_labels(image, probs, crf_params)
    pred = np.asarray(pred)
    return pred.astype(np.uint8 if pred.max(initial=0) < 256 else np.int32)


def colour_mask(label):
    """VOC colours of a label map: uint8 RGB [H, W, 3]."""
    return utils.decode_labels(np.asarray(label)[None])[0]


def overlay(image, label, alpha=0.5):
    """The photo blended with its colour mask: (1 - alpha) image + alpha mask.

    Background (class 0, black in the VOC palette) is left as the photo:
    blending it would only darken everything that was not segmented.

    Args:
      image: uint8 RGB [H, W, 3]; label: [H, W] class ids.
    Returns:
      uint8 RGB [H, W, 3].
    """
    image = np.asarray(image, np.float32)
    blended = (1.0 - alpha) * image + alpha * colour_mask(label).astype(np.float32)
    blended = np.where((np.asarray(label) == 0)[..., None], image, blended)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_label_png(label, path):
    """Palette-mode PNG (index = class id, VOC colours), written atomically."""
    dataset_files.save_label(label, path)


def save_rgb(image, path, **save_kwargs):
    """An RGB array as PNG/JPEG (format from the extension), atomically."""
    dataset_files.save_image(Image.fromarray(np.ascontiguousarray(image)), path,
                             **save_kwargs)


def output_path(directory, image_path, suffix):
    """``directory/<image name without extension><suffix>``."""
    name = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(directory, name + suffix)


# ------------------------------------------------------------ photo inputs
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                    ".webp", ".ppm", ".pgm")
# What inference.py writes; a directory listing skips these so that a second
# run into the same directory does not segment its own masks.
OUTPUT_SUFFIXES = ("_mask.png", "_label.png", "_overlay.png", "_overlay.jpg")


def _is_listed_image(path):
    name = os.path.basename(path).lower()
    return (os.path.isfile(path) and name.endswith(IMAGE_EXTENSIONS)
            and not name.endswith(OUTPUT_SUFFIXES))


def expand_inputs(specs):
    """Image paths from command-line inputs: files, directories or globs.

    A directory contributes the image files directly inside it, a glob the
    image files it matches (both sorted, both skipping earlier outputs such
    as ``x_mask.png``); a file named explicitly is always taken, whatever its
    extension, so that a bad file is reported rather than silently skipped.

    Args:
      specs: the positional arguments.
    Returns:
      (paths, problems): paths in order without duplicates, and one message
      per input that gave nothing (missing file, empty directory, glob
      without matches).
    """
    paths, problems, seen = [], [], set()
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(p for p in (os.path.join(spec, n) for n in os.listdir(spec))
                           if _is_listed_image(p))
            if not found:
                problems.append("Directory %s holds no images (%s)."
                                % (spec, ", ".join(IMAGE_EXTENSIONS)))
        elif os.path.exists(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec) if _is_listed_image(p))
            if not found:
                problems.append("Pattern %s matches no images." % spec)
        else:
            found = []
            problems.append("Input %s does not exist." % spec)
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths, problems


class Segmenter(object):
    """A restored network that segments RGB photos of any size.

    Builds one prediction graph (``build_prediction``) on a
    ``[1, None, None, 3]`` placeholder in the default graph and keeps its
    session open; ``close()`` releases it.

    Raises (from the constructor):
      IOError: no weights at ``weights``; ValueError: weights for another
      network or class count.
    """

    def __init__(self, weights, num_classes, scales=(1.0,), flip=False,
                 crf_params=None, intra_op_threads=0, inter_op_threads=0,
                 bf16=False):
        path, config = resolve_model(weights, num_classes)
        self.crf_params = crf_params
        self.images = tf.placeholder(tf.float32, [1, None, None, 3], name="image")
        net, self.prediction = build_prediction(self.images, num_classes, config,
                                                scales, flip, bf16=bf16)
        self.sess = open_session(net, path, intra_op_threads, inter_op_threads)
        log.info("Restored %s (%s)", path, ", ".join(
            "%s=%s" % kv for kv in sorted(config.to_dict().items())))

    def probabilities(self, image):
        """Softmax [H, W, C] (float32) for an RGB uint8 image [H, W, 3]."""
        return self.sess.run(self.prediction.probs,
                             {self.images: preprocess(image)})[0]

    def segment(self, image):
        """Class ids [H, W] (uint8) for an RGB uint8 image [H, W, 3]."""
        if self.crf_params is not None:
            return labels_from(image, probs=self.probabilities(image),
                               crf_params=self.crf_params)
        pred = self.sess.run(self.prediction.pred,
                             {self.images: preprocess(image)})[0]
        return labels_from(image, pred=pred)

    def close(self):
        self.sess.close()


# --------------------------------------------------------------- reporting
def format_scores(scores, names):
    """The per-class IoU/accuracy table and the summary lines, as text.

    A class absent from both labels and predictions has no IoU; it is shown
    as '-' and left out of the mean.
    """
    width = max(12, max(len(n) for n in names))
    lines = ["%-*s %8s %8s" % (width, "class", "IoU", "accuracy")]
    fmt = lambda v: "-" if np.isnan(v) else "%.4f" % v
    for name, iou, acc in zip(names, scores["iou"], scores["class_accuracy"]):
        lines.append("%-*s %8s %8s" % (width, name, fmt(iou), fmt(acc)))
    lines.append("pixel accuracy %.4f" % scores["pixel_accuracy"])
    lines.append("mean class accuracy %.4f" % scores["mean_class_accuracy"])
    return "\n".join(lines)


CONFUSION_FORMATS = (".csv", ".npy")


def check_confusion_path(path):
    """Raise ValueError early for a --save-confusion that is not .csv/.npy."""
    if path is not None and os.path.splitext(path)[1].lower() not in CONFUSION_FORMATS:
        raise ValueError("--save-confusion must end in .csv or .npy; got %r."
                         % path)


def save_confusion(confusion, path):
    """Write the confusion matrix (rows: ground truth) as .csv or .npy, atomically."""
    check_confusion_path(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".%s.tmp%d" % (os.path.basename(path), os.getpid()))
    try:
        with open(tmp, "wb") as f:
            if path.lower().endswith(".npy"):
                np.save(f, np.asarray(confusion, np.int64))
            else:
                np.savetxt(f, np.asarray(confusion, np.int64), fmt="%d",
                           delimiter=",")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
