"""What the scripts share: flags and their types, logging, exit codes.

Scripts parse flags here and turn them into the keyword arguments and small
config objects the library takes; no library function reads an argparse
Namespace. Standard library only (no numpy, no TensorFlow), so the dataset
tools start fast.
"""
import argparse
import logging
import math
import os

from deeplab_resnet import process
from deeplab_resnet.constants import IGNORE_LABEL, NUM_CLASSES
from deeplab_resnet.machine import available_cores


# ------------------------------------------------------------------ types
def _whole_number(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number, got %r" % text)


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % value)
    return value


def non_negative_int(text):
    """argparse type: a count of 0 or more (--keep-checkpoints -1 once deleted
    every snapshot)."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more, got %d" % value)
    return value


def label_value(text):
    """argparse type: a value an 8-bit label pixel can hold, 0..255."""
    value = _whole_number(text)
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError("must be 0..255 (label files hold 8-bit "
                                         "values), got %d" % value)
    return value


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, got %r" % text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a finite number, got %r" % text)
    return value


def non_negative_float(text):
    """argparse type: a finite number >= 0 (a weight: 0 switches its term off)."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more, got %r" % text)
    return value


def probability(text):
    """argparse type: a finite number in [0, 1]."""
    value = _finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1, got %r" % text)
    return value


def positive_float(text):
    """argparse type: a finite number > 0 (a width, a standard deviation)."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0, got %r" % text)
    return value


def output_directory(text):
    """argparse type: a directory to write into, or one that can be made.

    A file at the path, or above it, would end the run later with a bare
    '[Errno 17] File exists' (inference.py only after loading the model).
    """
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError("%s is a file, not a directory; give a "
                                         "directory path" % text)
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError("%s cannot be created: %s is a file; give "
                                         "another directory path" % (text, parent))
    return text


def int_list(text):
    """argparse type: '3,4,23,3' -> (3, 4, 23, 3)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers such "
                                         "as 3,4,23,3; got %r" % text)


def parse_size(text):
    """'321,321' -> (321, 321): height, width.

    Raises:
      ValueError: not two positive integers.
    """
    try:
        height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError("Expected HEIGHT,WIDTH such as 321,321; got %r." % text)
    if height < 1 or width < 1:
        raise ValueError("Sizes must be positive; got %r." % text)
    return height, width


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


def argument_type(parse):
    """An argparse type from a parser that raises ValueError with its message."""
    def parse_argument(text):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err))
    parse_argument.__name__ = parse.__name__
    return parse_argument


size = argument_type(parse_size)
scales = argument_type(parse_scales)


# ------------------------------------------------------------------ flags
def add_num_classes_flag(parser):
    """--num-classes, for scripts that take it without the model flags."""
    parser.add_argument("--num-classes", type=positive_int, default=NUM_CLASSES,
                        help="Output classes, background included "
                             "(default: %(default)s, PASCAL VOC).")


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


def add_data_flags(parser, data_dir=".", data_list="dataset/val.txt"):
    """Flags that locate a list-file dataset in VOC layout and say how to read
    its labels (``--label-map``: see ``data.label_maps.read_label_map``)."""
    parser.add_argument("--data-dir", default=data_dir,
                        help="Root the paths in --data-list are relative to, e.g. "
                             "VOCdevkit/VOC2012 (default: %(default)s).")
    parser.add_argument("--data-list", default=data_list,
                        help="List file: one '/JPEGImages/x.jpg "
                             "/SegmentationClassAug/x.png' pair per line "
                             "(default: %(default)s).")
    parser.add_argument("--ignore-label", type=label_value, default=IGNORE_LABEL,
                        help="Label value (0..255) left out of the loss and the "
                             "metric (default: %(default)s).")
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


def add_class_names_flag(parser):
    """--class-names: the one flag every script that shows classes takes."""
    parser.add_argument("--class-names", default=None, metavar="FILE",
                        help="Text file with one class name per line, background "
                             "first, for tables and reports (default: the VOC "
                             "names for 21 classes, else class_0, class_1, ...).")


def add_prediction_flags(parser):
    """--scales and --flip: DeepLab's test-time multi-scale and mirroring;
    --bf16: the network in bfloat16 (see ``evaluation.predict``)."""
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


def add_crf_flags(parser, runtime=True):
    """``--crf`` and one flag per CRF parameter, shared by evaluate/inference.

    Args:
      runtime: also ``--crf-backend`` and ``--crf-workers`` (where the CRF
        runs); export.py bakes the TensorFlow CRF into its graph instead.
    """
    from deeplab_resnet import crf
    defaults = crf.DEFAULTS
    if runtime:
        about = ("Fully connected CRF post-processing, as TensorFlow ops or "
                 "through pydensecrf (`%s`)." % crf.INSTALL_HINT)
        what = "Refine the prediction with the dense CRF (default: off)."
    else:
        about = ("The fully connected CRF as TensorFlow ops inside the "
                 "exported graph, its parameters baked in.")
        what = ("Put the dense CRF into the exported graph: 'label' and "
                "'probabilities' are then the CRF's (default: off).")
    group = parser.add_argument_group(
        "dense CRF", about + "\nDefaults: DeepLab-v2 ResNet-101 on PASCAL VOC.")
    group.add_argument("--crf", action="store_true", help=what)
    group.add_argument("--crf-iters", type=positive_int, default=defaults.iterations,
                       help="Mean-field iterations (default: %(default)s).")
    group.add_argument("--crf-pos-w", type=non_negative_float, default=defaults.pos_w,
                       help="Weight of the position-only smoothness kernel "
                            "(default: %(default)s).")
    group.add_argument("--crf-pos-xy-std", type=positive_float, default=defaults.pos_xy_std,
                       help="Width in pixels of the smoothness kernel "
                            "(default: %(default)s).")
    group.add_argument("--crf-bi-w", type=non_negative_float, default=defaults.bi_w,
                       help="Weight of the position+colour (bilateral) kernel "
                            "(default: %(default)s).")
    group.add_argument("--crf-bi-xy-std", type=positive_float, default=defaults.bi_xy_std,
                       help="Width in pixels of the bilateral kernel "
                            "(default: %(default)s).")
    group.add_argument("--crf-bi-rgb-std", type=positive_float, default=defaults.bi_rgb_std,
                       help="Width in intensity levels (0..255) of the bilateral "
                            "kernel (default: %(default)s).")
    group.add_argument("--crf-prune-threshold", type=probability,
                       default=defaults.prune_threshold,
                       help="Run the CRF on the classes whose largest probability "
                            "in the image reaches this, at least two; the others "
                            "keep their share of each pixel but no pairwise terms, "
                            "and end at 0. 0 runs DeepLab's CRF on every class "
                            "exactly (default: %(default)s).")
    if not runtime:
        return
    group.add_argument("--crf-backend", choices=crf.BACKENDS, default=crf.DEFAULT_BACKEND,
                       help="Where the CRF runs: 'tensorflow' (as TensorFlow ops, "
                            "in this process beside the network, on every core "
                            "for one image; GPUs run it too) or 'pydensecrf' "
                            "(Kraehenbuehl & Koltun's C++ on --crf-workers "
                            "processes). The same model: labels agree "
                            "(default: %(default)s).")
    group.add_argument("--crf-workers", type=int, default=None,
                       help="Threads of this process (tensorflow) or processes "
                            "(pydensecrf) running the CRF while the network goes "
                            "on with the next images, one image each on one core; "
                            "results keep the input order and are the same for "
                            "any count. 0 runs it in the main process between "
                            "images, on every core (default: one per available "
                            "core).")


def crf_config(args):
    """``crf.CrfConfig`` from ``add_crf_flags`` flags, or None without --crf.

    Raises:
      ValueError: a parameter out of range, or --crf with the pydensecrf
        backend but without pydensecrf installed (raised now, before any
        image is processed).
    """
    if not args.crf:
        return None
    from deeplab_resnet import crf
    params = crf.CrfConfig(args.crf_iters, args.crf_pos_w, args.crf_pos_xy_std,
                           args.crf_bi_w, args.crf_bi_xy_std, args.crf_bi_rgb_std,
                           args.crf_prune_threshold)
    if getattr(args, "crf_backend", None) == "pydensecrf":
        try:
            crf.require_pydensecrf()
        except ImportError as err:
            raise ValueError(str(err))
    return params


def crf_stage(args):
    """``crf.CrfStage`` from ``add_crf_flags`` flags (the CRF, its backend and
    workers), or None without --crf. Raises as ``crf_config`` and
    ``crf_workers``."""
    params = crf_config(args)
    if params is None:
        return None
    from deeplab_resnet import crf
    return crf.CrfStage(params, args.crf_backend, crf_workers(args))


def predict_config(args):
    """``predict.PredictConfig`` from ``add_prediction_flags`` flags.

    Imports TensorFlow (the prediction module builds graphs): call it in
    ``main``, not at a script's top.
    """
    from deeplab_resnet.evaluation.predict import PredictConfig
    return PredictConfig(scales=parse_scales(args.scales), flip=args.flip, bf16=args.bf16)


def check_writable_file(path, flag):
    """Refuse now an output file that could not be written at the end of a run.

    The file may not exist yet, nor its directory; the nearest existing
    ancestor must be a writable directory, and ``path`` itself not a
    directory or a read-only file.

    Raises:
      IOError: naming ``flag`` and what is in the way.
    """
    if os.path.isdir(path):
        raise IOError("%s %s is a directory; give a file name." % (flag, path))
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise IOError("%s %s exists and is not writable." % (flag, path))
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise IOError("%s %s cannot be written: %s is not a writable directory. "
                      "Choose another path." % (flag, path, parent))


def crf_workers(args):
    """--crf-workers: by default one per core, processes for pydensecrf,
    threads for the TensorFlow CRF (each running one image on one core).

    Raises:
      ValueError: a negative count.
    """
    workers = args.crf_workers
    if workers is None:
        workers = available_cores()
    if workers < 0:
        raise ValueError("--crf-workers must be 0 (CRF in the main process) or "
                         "more, got %d." % workers)
    return workers


def add_runtime_flags(parser):
    """Thread flags: the defaults suit one process using the whole machine."""
    parser.add_argument("--intra-op-threads", type=non_negative_int, default=0,
                        help="Threads inside one op such as a convolution "
                             "(default: 0 = one per available core).")
    parser.add_argument("--inter-op-threads", type=non_negative_int, default=0,
                        help="Ops run side by side (default: 0 = 2, enough to "
                             "overlap input decoding with the network).")


def threads(args):
    """(intra_op_threads, inter_op_threads) from ``add_runtime_flags``."""
    return args.intra_op_threads, args.inter_op_threads


# ---------------------------------------------------------- script plumbing
def setup_logging(verbose=False):
    """One plain format for every script: progress lines read like a log."""
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        level=logging.DEBUG if verbose else logging.INFO)
    # TensorFlow's Python logger repeats deprecation notices for tf.compat.v1.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def run_main(main):
    """Run a script's ``main()``; a user error ends it with one line, exit 2.

    IOError/OSError and ValueError are what the library raises for bad
    input (a missing file, a wrong label, a checkpoint for another network);
    their messages already say what to do, so no traceback is shown.
    """
    reason = None
    try:
        status = main() or 0
    except (IOError, OSError, ValueError) as err:
        reason = str(err)
        logging.getLogger("__main__").error("error: %s", reason)
        status = 2
    except KeyboardInterrupt:
        logging.getLogger("__main__").error("interrupted")
        status = 130
    # One of several workers tells the others why it stops, and leaves
    # without interpreter teardown (``distributed.exit_process`` says why).
    process.exit(status, reason)
