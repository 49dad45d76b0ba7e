"""Segment photos with a trained DeepLab model.

    python inference.py IMAGE [IMAGE ...] WEIGHTS
    python inference.py IMAGE [IMAGE ...] --model-weights WEIGHTS

The first form is the original project's `python inference.py
/path/to/your/image /path/to/ckpt/file`. The LAST positional argument is
taken as the weights when it is one of:

  - a name ending in .npz (the file written by convert.py; never an image),
  - a checkpoint prefix whose .index exists (snapshots/model.ckpt-20000),
  - a directory in which tf.train.latest_checkpoint finds a checkpoint
    (a --snapshot-dir of train.py).

Anything else is an input: an image file is never taken as weights, and a
directory with images but no checkpoint is a directory of inputs. To segment
the images of a directory that also holds a checkpoint, give them as a
pattern ('snapshots/*.jpg'). Weights given both ways are an error.

Inputs are image files, directories (the images directly inside) or glob
patterns, of any size, JPEG or PNG; grayscale and RGBA photos are converted
to RGB. For each photo <name>.<ext> it writes into --save-dir:

  <name>_mask.png      the prediction in VOC colours
  <name>_label.png     with --save-raw: palette PNG whose pixel values are class ids
  <name>_overlay.png   with --overlay: the photo blended with the mask
                       (<name>_overlay.jpg with --overlay-format jpg)

Inputs are never overwritten. A missing or unreadable input is reported by
name and the others are still processed; the exit status is then 1 (2 for
errors that stop everything, such as missing weights).

Examples:
  python inference.py street.jpg snapshots/model.ckpt-20000
  python inference.py photos/ street.jpg --model-weights snapshots/ --overlay
"""
import argparse
import logging
import os

# TensorFlow is imported where it is used, not here: CRF worker processes
# re-import this script (Python's rule for forkserver children) and need
# numpy only.
from deeplab_resnet import cli, kernels
from deeplab_resnet.images import IMAGE_EXTENSIONS

# The kernel family TensorFlow will run, fixed at its import in main().
kernels.choose("inference")

log = logging.getLogger(__name__)

WEIGHTS_FORMS = ("a checkpoint prefix whose .index exists such as "
                 "snapshots/model.ckpt-20000, a directory holding a "
                 "checkpoint, or the .npz written by convert.py")


def is_weights(path):
    """Whether the last positional argument names weights rather than an input.

    Decided by what is on disk, never by guessing: a .npz is always weights
    (so a missing one is reported as missing weights, not as a missing
    photo) and an image file never is. A directory is weights when
    tf.train.latest_checkpoint finds a checkpoint in it (cheap: nothing is
    read), so a directory of photos stays an input; any other path is
    weights when checkpoints.resolve_checkpoint accepts it (a prefix whose
    .index exists, or the .index itself).
    """
    from deeplab_resnet import checkpoints
    from deeplab_resnet.runtime import tf
    if path.endswith(".npz"):
        return True
    if os.path.isdir(path):
        return tf.train.latest_checkpoint(path) is not None
    if os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS):
        return False
    try:
        checkpoints.resolve_checkpoint(path)
    except IOError:
        return False
    return True


def split_weights(parser, args):
    """(inputs, weights) from the positionals and --model-weights.

    Exits through ``parser.error`` (status 2) when the weights are given
    twice, not at all, or when no input is left besides them.
    """
    inputs = list(args.inputs)
    positional = inputs.pop() if is_weights(inputs[-1]) else None
    if positional is not None and args.restore_from is not None:
        parser.error("the weights are given twice: %r (the last argument) and "
                     "--model-weights %r. Drop one of them (to segment the "
                     "images of a directory holding a checkpoint, give them as "
                     "a pattern such as 'dir/*.jpg')."
                     % (positional, args.restore_from))
    weights = positional if positional is not None else args.restore_from
    if weights is None:
        misplaced = [p for p in inputs[:-1] if is_weights(p)]
        parser.error("give the weights: as the last argument, which must be %s; "
                     "or --model-weights WEIGHTS. The last argument %r is none "
                     "of these, so it was taken as an input.%s" % (
                         WEIGHTS_FORMS, args.inputs[-1],
                         " %r looks like weights: put it last." % misplaced[0]
                         if misplaced else ""))
    if not inputs:
        parser.error("no images to segment: %r is the weights. Give image files, "
                     "directories or patterns before it." % weights)
    return inputs, weights


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="Image files, directories of images, or glob "
                             "patterns (quote them), e.g. 'photos/*.jpg'. The "
                             "last one may be the weights instead of "
                             "--model-weights: a .npz, a checkpoint prefix or a "
                             "directory holding a checkpoint, never an image.")
    cli.add_num_classes_flag(parser)
    parser.add_argument("--model-weights", "--restore-from", dest="restore_from",
                        metavar="WEIGHTS", default=None,
                        help="Weights to load: %s (required unless the last "
                             "INPUT is the weights)." % WEIGHTS_FORMS)
    parser.add_argument("--save-dir", type=cli.output_directory, default="./output",
                        help="Where the outputs go; created if missing "
                             "(default: %(default)s).")
    parser.add_argument("--save-raw", action="store_true",
                        help="Also write <name>_label.png, a palette PNG whose "
                             "pixel values are class ids (default: off).")
    parser.add_argument("--overlay", action="store_true",
                        help="Also write <name>_overlay.png: the photo blended "
                             "with the mask (default: off).")
    parser.add_argument("--overlay-format", choices=("png", "jpg"), default=None,
                        help="File format of the --overlay images (default: png).")
    parser.add_argument("--overlay-alpha", type=float, default=0.5,
                        help="Weight of the mask in the overlay, 0..1 "
                             "(default: %(default)s).")
    parser.add_argument("--max-size", type=cli.positive_int, default=None, metavar="PIXELS",
                        help="Segment a photo whose longer side exceeds PIXELS scaled "
                             "down to it, the outputs scaled back to the photo's size "
                             "(e.g. 2000: memory and time grow with the pixels) "
                             "(default: full size, with a warning naming the memory "
                             "a very large photo needs).")
    cli.add_prediction_flags(parser)
    cli.add_crf_flags(parser)
    cli.add_runtime_flags(parser)
    args = parser.parse_args(argv)
    if args.overlay_format is not None and not args.overlay:
        parser.error("--overlay-format %s has no effect without --overlay; add "
                     "--overlay." % args.overlay_format)
    args.inputs, args.restore_from = split_weights(parser, args)
    return args


def main(argv=None):
    args = get_arguments(argv)
    cli.setup_logging()
    crf = cli.crf_stage(args)
    from deeplab_resnet.evaluation.inference import segment_photos
    segmented, failures = segment_photos(
        args.inputs, args.restore_from, num_classes=args.num_classes,
        save_dir=args.save_dir, save_raw=args.save_raw,
        overlay_format=(args.overlay_format or "png") if args.overlay else None,
        overlay_alpha=args.overlay_alpha, predict=cli.predict_config(args), crf=crf,
        intra_op_threads=args.intra_op_threads, inter_op_threads=args.inter_op_threads,
        max_size=args.max_size)
    log.info("segmented %d of %d images into %s", segmented,
             segmented + len(failures), args.save_dir)
    if failures:
        log.error("%d input(s) failed; see the errors above.", len(failures))
        return 1
    return 0


if __name__ == "__main__":
    cli.run_main(main)
