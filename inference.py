"""Segment photos with a trained DeepLab model.

Inputs are image files, directories (the images directly inside) or glob
patterns, of any size, JPEG or PNG; grayscale and RGBA photos are converted
to RGB. For each photo <name>.<ext> it writes into --save-dir:

  <name>_mask.png      the prediction in VOC colours
  <name>_label.png     with --save-raw: palette PNG whose pixel values are class ids
  <name>_overlay.png   with --overlay [png|jpg]: the photo blended with the mask

Inputs are never overwritten. A missing or unreadable input is reported by
name and the others are still processed; the exit status is then 1 (2 for
errors that stop everything, such as missing weights).

Example:
  python inference.py photos/ street.jpg --model-weights snapshots/ --overlay
"""
import argparse
import logging

from deeplab_resnet import cli
from deeplab_resnet.evaluation.inference import segment_photos

log = logging.getLogger(__name__)


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+",
                        help="Image files, directories of images, or glob "
                             "patterns (quote them), e.g. 'photos/*.jpg'.")
    cli.add_model_flags(parser, weights_flags=("--model-weights", "--restore-from"))
    parser.add_argument("--save-dir", default="./output",
                        help="Where the outputs go; created if missing "
                             "(default: %(default)s).")
    parser.add_argument("--save-raw", action="store_true",
                        help="Also write <name>_label.png, a palette PNG whose "
                             "pixel values are class ids (default: off).")
    parser.add_argument("--overlay", nargs="?", const="png", choices=("png", "jpg"),
                        default=None,
                        help="Also write <name>_overlay.png (or .jpg with "
                             "'--overlay jpg'): the photo blended with the mask "
                             "(default: off).")
    parser.add_argument("--overlay-alpha", type=float, default=0.5,
                        help="Weight of the mask in the overlay, 0..1 "
                             "(default: %(default)s).")
    cli.add_prediction_flags(parser)
    cli.add_crf_flags(parser)
    cli.add_runtime_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = get_arguments(argv)
    cli.setup_logging()
    crf = cli.crf_params(args)
    segmented, failures = segment_photos(
        args.inputs, args.restore_from, num_classes=args.num_classes,
        save_dir=args.save_dir, save_raw=args.save_raw, overlay_format=args.overlay,
        overlay_alpha=args.overlay_alpha, scales=cli.parse_scales(args.scales),
        flip=args.flip, bf16=args.bf16, crf=crf,
        crf_workers=cli.crf_workers(args) if crf else 0,
        intra_op_threads=args.intra_op_threads, inter_op_threads=args.inter_op_threads)
    log.info("segmented %d of %d images into %s", segmented,
             segmented + len(failures), args.save_dir)
    if failures:
        log.error("%d input(s) failed; see the errors above.", len(failures))
        return 1
    return 0


if __name__ == "__main__":
    cli.run_main(main)
