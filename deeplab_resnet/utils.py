"""Constants, label colours, metrics and the helpers every script shares.

Everything a script would otherwise re-type lives here once: the ImageNet mean
in Caffe's BGR order, the VOC class names and palette, the confusion matrix
and mIoU, the flags common to several scripts, and building/restoring a model.
"""
import json
import logging
import os
import sys
import time

import numpy as np
import tensorflow.compat.v1 as tf

from deeplab_resnet.model import DeepLabResNetModel, ModelConfig
from deeplab_resnet.network import fold_batchnorm_weights

log = logging.getLogger(__name__)

# Per-channel ImageNet mean in BGR order, as subtracted by the Caffe models.
IMG_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor")
NUM_CLASSES = len(VOC_CLASSES)
IGNORE_LABEL = 255
# The layer whose weights depend on the number of classes.
CLASSIFIER_PREFIX = "fc1_voc12"
# Written next to checkpoints so that a restore rebuilds the same network.
MODEL_CONFIG_FILE = "model_config.json"


def make_palette(num_colours=256):
    """PASCAL VOC's colour map: class i's colour spreads i's bits over RGB.

    The first 21 entries are VOC's class colours; the rule goes on to give
    distinct colours for all 256 label values, so any class count works.
    """
    palette = np.zeros((num_colours, 3), dtype=np.uint8)
    for i in range(num_colours):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


PALETTE = make_palette()
VOC_PALETTE = PALETTE[:NUM_CLASSES]


def decode_labels(labels, num_images=None):
    """Colour label maps with the VOC palette by indexing, not pixel loops.

    Args:
      labels: int array [N, H, W] or [N, H, W, 1] of class ids (255 = ignore).
      num_images: colour only the first ``num_images``.
    Returns:
      uint8 array [N, H, W, 3].
    """
    labels = np.asarray(labels)
    if labels.ndim == 4:
        labels = labels[..., 0]
    if num_images is not None:
        labels = labels[:num_images]
    return PALETTE[labels.astype(np.uint8)]


def inv_preprocess(images, num_images=None):
    """Undo mean subtraction and BGR order for display: uint8 RGB [N, H, W, 3]."""
    images = np.asarray(images, dtype=np.float32)
    if num_images is not None:
        images = images[:num_images]
    return np.clip(images + IMG_MEAN, 0, 255)[..., ::-1].astype(np.uint8)


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


# ------------------------------------------------------------------ metrics
def confusion_matrix(label, pred, num_classes, ignore_label=IGNORE_LABEL):
    """Accumulable confusion matrix: rows are ground truth, columns predictions.

    Pixels whose label is ``ignore_label`` are left out.

    Raises:
      ValueError: a label that is neither a class id nor the ignore label.
    """
    label = np.asarray(label).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = label != ignore_label
    label, pred = label[keep], pred[keep]
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        bad = np.unique(label[(label < 0) | (label >= num_classes)])
        raise ValueError("Label values %s are outside 0..%d and not the ignore "
                         "label %d. Check --num-classes and --ignore-label, or "
                         "the label files." % (bad.tolist(), num_classes - 1,
                                               ignore_label))
    return np.bincount(num_classes * label + pred,
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(confusion):
    """Scores from a confusion matrix.

    Returns a dict with ``iou`` (per class, NaN for a class absent from both
    ground truth and prediction), ``miou`` (mean over the classes that occur),
    ``pixel_accuracy``, ``class_accuracy`` (per class, NaN where absent from
    the ground truth) and ``mean_class_accuracy``.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_pos = np.diag(confusion)
    gt = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = gt + predicted - true_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_pos / union, np.nan)
        class_acc = np.where(gt > 0, true_pos / gt, np.nan)
    total = confusion.sum()
    nan_mean = lambda a: float(np.nanmean(a)) if np.any(~np.isnan(a)) else float("nan")
    return {
        "iou": iou,
        "miou": nan_mean(iou),
        "pixel_accuracy": float(true_pos.sum() / total) if total else float("nan"),
        "class_accuracy": class_acc,
        "mean_class_accuracy": nan_mean(class_acc),
    }


# -------------------------------------------------------------------- flags
def add_model_flags(parser, restore_required=True,
                    weights_flags=("--restore-from",)):
    """Flags that choose and restore the network.

    ``weights_flags``: the weight flag's spellings (inference.py says
    ``--model-weights``); the value is ``args.restore_from`` either way.
    """
    add_num_classes_flag(parser)
    parser.add_argument(*weights_flags, dest="restore_from", metavar="WEIGHTS",
                        required=restore_required, default=None,
                        help="Weights to load: a .npz written by convert.py, "
                             "a checkpoint prefix, or a directory (its latest "
                             "checkpoint is used) (%s)." % (
                                 "required" if restore_required else
                                 "default: none, random initial weights"))


def add_num_classes_flag(parser):
    """--num-classes, for scripts that take it without the model flags."""
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES,
                        help="Output classes, background included "
                             "(default: %(default)s, PASCAL VOC).")


def add_data_flags(parser, data_dir=".", data_list="dataset/val.txt"):
    """Flags that locate a list-file dataset in VOC layout and say how to read
    its labels (``--label-map``: see ``labels.read_label_map``)."""
    parser.add_argument("--data-dir", default=data_dir,
                        help="Root the paths in --data-list are relative to, e.g. "
                             "VOCdevkit/VOC2012 (default: %(default)s).")
    parser.add_argument("--data-list", default=data_list,
                        help="List file: one '/JPEGImages/x.jpg "
                             "/SegmentationClassAug/x.png' pair per line "
                             "(default: %(default)s).")
    parser.add_argument("--ignore-label", type=int, default=IGNORE_LABEL,
                        help="Label value left out of the loss and the metric "
                             "(default: %(default)s).")
    parser.add_argument("--label-map", default=None, metavar="FILE",
                        help="Table from the values stored in the label files to "
                             "training ids, applied as labels are read, so the "
                             "loss and the metric see the same ids (e.g. "
                             "Cityscapes label ids -> train ids). Text: one "
                             "'SOURCE TARGET' per line, '#' comments, ranges such "
                             "as '0-6 255' or '24-26 11-13', and '* TARGET' for "
                             "every value not listed; or JSON: {\"7\": 0, "
                             "\"*\": 255}. Targets are class ids below "
                             "--num-classes or --ignore-label; several sources "
                             "may share one. The ignore label passes through "
                             "unless listed; any other value the table does not "
                             "list is an error naming the file (default: none, "
                             "the files hold training ids).")


def parse_size(text):
    """'321,321' -> (321, 321): height, width."""
    try:
        height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError("Expected HEIGHT,WIDTH such as 321,321; got %r." % text)
    if height < 1 or width < 1:
        raise ValueError("Sizes must be positive; got %r." % text)
    return height, width


# ------------------------------------------------------------------ runtime
def available_cores():
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def add_runtime_flags(parser):
    """Thread flags: the defaults suit one process using the whole machine."""
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="Threads inside one op such as a convolution "
                             "(default: 0 = one per available core).")
    parser.add_argument("--inter-op-threads", type=int, default=0,
                        help="Ops run side by side (default: 0 = 2, enough to "
                             "overlap input decoding with the network).")


def session_config(intra_op_threads=0, inter_op_threads=0):
    """A ConfigProto with explicit thread pools.

    One intra-op thread per core keeps the big convolutions at the GEMM peak;
    more inter-op threads than that only make ops fight for the same cores.
    """
    config = tf.ConfigProto(
        intra_op_parallelism_threads=intra_op_threads or available_cores(),
        inter_op_parallelism_threads=inter_op_threads or 2,
        allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    return config


# ---------------------------------------------------------- build & restore
def build_model(images, num_classes, is_training=False, config=None, **kwargs):
    """The DeepLab network on ``images`` (BGR, mean subtracted), and its logits.

    Returns:
      (net, logits): the ``DeepLabResNetModel`` and its ``fc1_voc12`` output.
    """
    net = DeepLabResNetModel({"data": images}, num_classes, is_training=is_training,
                             config=config, **kwargs)
    return net, net.layers[CLASSIFIER_PREFIX]


def resolve_checkpoint(path):
    """A weight file or checkpoint prefix from a flag value.

    Accepts a ``.npz``, a checkpoint prefix (``model.ckpt-1000``) or a
    directory holding checkpoints (the latest is used).

    Raises:
      IOError: nothing usable at ``path``.
    """
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise IOError("%r is a directory with no checkpoint in it. Point "
                          "--restore-from at a checkpoint prefix, a directory "
                          "written by train.py, or the .npz written by "
                          "convert.py." % path)
        return latest
    if os.path.isfile(path) and path.endswith(".npz"):
        return path
    if os.path.isfile(path + ".index"):
        return path
    if path.endswith(".index") and os.path.isfile(path):
        return path[:-len(".index")]
    raise IOError("%r does not exist. Point it at a checkpoint prefix (e.g. "
                  "snapshots/model.ckpt-20000), a directory of checkpoints, or "
                  "the .npz written by convert.py." % path)


def read_weights(path):
    """``{'layer/param': array}`` from a .npz or a checkpoint (optimizer
    slots and counters left out)."""
    path = resolve_checkpoint(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (ValueError, OSError) as err:
            raise IOError("%r is not a weight file written by convert.py (%s)."
                          % (path, err))
    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    return {name: reader.get_tensor(name) for name in shapes
            if "/Momentum" not in name and name != "global_step"}


def classifier_mismatch(weights, net):
    """Classifier variables whose shape differs from the network's."""
    return sorted(k for k, var in net.variables.items()
                  if k.startswith(CLASSIFIER_PREFIX) and k in weights
                  and tuple(weights[k].shape) != tuple(var.get_shape().as_list()))


def restore(sess, path, net, ignore_missing=False, skip_mismatched_classifier=False,
            skip_classifier=False):
    """Load weights from ``path`` (see ``resolve_checkpoint``) into ``net``.

    BatchNorm is folded on the fly when ``net`` was built with
    ``fold_batchnorm``, so one trained file serves both forms.

    Args:
      skip_mismatched_classifier: when the file's classifier was trained for
        another number of classes (or it has none, as the ImageNet init
        model), leave ours initialised (fine-tuning on a new dataset) and log
        the variables left out, instead of failing.
      skip_classifier: never restore the classifier (--not-restore-last).
      ignore_missing: leave any variable the file lacks initialised. Without
        it, every variable outside a skipped classifier must be in the file
        with its shape.
    Raises:
      IOError: no such file; ValueError: the weights do not fit the network
        (the message lists every missing, unexpected and mismatched variable).
    """
    weights = read_weights(path)
    ours = sorted(k for k in net.variables if k.startswith(CLASSIFIER_PREFIX))
    # The file's classifier layers too: --not-restore-last also leaves out a
    # classifier with more ASPP branches than ours.
    classifier_layers = {k.split("/")[0] for k in list(net.variables) + list(weights)
                         if k.startswith(CLASSIFIER_PREFIX)}
    skip = set()
    if skip_classifier:
        log.info("not restoring the classifier (--not-restore-last): %s start "
                 "from their initial values", ", ".join(ours))
        skip = classifier_layers
    elif skip_mismatched_classifier:
        mismatched = classifier_mismatch(weights, net)
        absent = [k for k in ours if k not in weights]
        if mismatched or absent:
            shape = lambda a: "x".join(str(d) for d in a)
            left_out = ["%s (file %s, network %s)" % (
                k, shape(weights[k].shape), shape(net.variables[k].get_shape().as_list()))
                for k in mismatched]
            left_out += ["%s (not in the file)" % k for k in absent]
            log.warning("%s %s; not restoring the classifier, so these variables "
                        "start from their initial values: %s", path,
                        "has a classifier for another number of classes"
                        if mismatched else "has no classifier",
                        ", ".join(left_out))
            skip = classifier_layers
    if net.fold_batchnorm:
        weights = fold_batchnorm_weights(weights, net.batchnorm_producers())
    net.assign_weights(weights, sess, ignore_missing=ignore_missing, skip=skip)
    return path


def save_model_config(directory, num_classes, config):
    """Record the architecture next to checkpoints (atomically)."""
    data = dict(config.to_dict(), num_classes=num_classes)
    tmp = os.path.join(directory, MODEL_CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, os.path.join(directory, MODEL_CONFIG_FILE))


def load_model_config(path):
    """(num_classes or None, ModelConfig) recorded beside a checkpoint.

    A file without a record (e.g. converted Caffe weights) is the published
    ResNet-101 network.
    """
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_file = os.path.join(directory, MODEL_CONFIG_FILE)
    if not os.path.isfile(config_file):
        return None, ModelConfig()
    with open(config_file) as f:
        data = json.load(f)
    num_classes = data.pop("num_classes", None)
    return num_classes, ModelConfig(**data)


# ------------------------------------------------------------ script plumbing
def setup_logging(verbose=False):
    """One plain format for every script: progress lines read like a log."""
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        level=logging.DEBUG if verbose else logging.INFO)
    # TensorFlow's Python logger repeats deprecation notices for tf.compat.v1.
    tf.logging.set_verbosity(tf.logging.ERROR)


def run_main(main):
    """Run a script's ``main()``; a user error ends it with one line, exit 2.

    IOError/OSError and ValueError are what the library raises for bad
    input (a missing file, a wrong label, a checkpoint for another network);
    their messages already say what to do, so no traceback is shown.
    """
    try:
        status = main()
    except (IOError, OSError, ValueError) as err:
        logging.getLogger("__main__").error("error: %s", err)
        sys.exit(2)
    except KeyboardInterrupt:
        logging.getLogger("__main__").error("interrupted")
        sys.exit(130)
    sys.exit(status or 0)


def format_duration(seconds):
    """12s, 4m05s, 2h13m: short enough for a progress line."""
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)


class Progress(object):
    """Rate and ETA for a loop of known length.

    ``line(done)`` after ``done`` items gives e.g. ``0.41 s/step ETA 2h13m``,
    measured from the first ``update`` so that start-up does not skew it.
    """

    def __init__(self, total, unit="step"):
        self.total = total
        self.unit = unit
        self.start_time = None
        self.start_count = 0

    def update(self, done):
        if self.start_time is None:
            self.start_time = time.time()
            self.start_count = done

    def line(self, done):
        self.update(done)
        elapsed = time.time() - self.start_time
        count = done - self.start_count
        if count <= 0 or elapsed <= 0:
            return "ETA --"
        per_item = elapsed / count
        return "%.3g s/%s ETA %s" % (per_item, self.unit,
                                     format_duration(per_item * (self.total - done)))
