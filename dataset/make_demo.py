#!/usr/bin/env python
"""Write the synthetic demo dataset: coloured shapes on textured backgrounds.

The layout is PASCAL VOC's, so every script reads it as it reads VOC:
<output-dir>/JPEGImages/*.jpg, <output-dir>/SegmentationClassAug/*.png
(palette PNGs of class ids, 255 along object outlines), <output-dir>/train.txt,
<output-dir>/val.txt and <output-dir>/classes.txt (background, disc, box,
triangle, ring). Train with --data-dir <output-dir> --num-classes 5.

The same flags always give the same files. Re-running with the same flags
does nothing; other flags over an existing dataset need --force.
"""
import argparse
import logging
import os
import sys
import time

# Run as `python dataset/make_demo.py` without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_resnet import cli, progress  # noqa: E402
from deeplab_resnet.data import demo  # noqa: E402

log = logging.getLogger("make_demo")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=cli.output_directory,
                        default=os.path.join("demo", "data"),
                        help="Directory to write the dataset to (default: %(default)s).")
    parser.add_argument("--num-train", type=int, default=300,
                        help="Training images (default: %(default)s).")
    parser.add_argument("--num-val", type=int, default=100,
                        help="Validation images (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Random seed; the same seed gives the same files "
                             "(default: %(default)s).")
    parser.add_argument("--min-size", type=int, default=60,
                        help="Smallest image height or width in pixels, at least %d "
                             "(default: %%(default)s)." % demo.MIN_SIDE)
    parser.add_argument("--max-size", type=int, default=160,
                        help="Largest image height or width in pixels "
                             "(default: %(default)s).")
    parser.add_argument("--force", action="store_true",
                        help="Write over an existing dataset made with other flags "
                             "(default: refuse).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.setup_logging()
    config = demo.DemoConfig(args.num_train, args.num_val, args.seed,
                             args.min_size, args.max_size)
    start = time.time()
    written = demo.write_demo_dataset(args.output_dir, config, force=args.force)
    if written:
        log.info("wrote %d train + %d val images (%d classes) to %s in %s",
                 args.num_train, args.num_val, len(demo.DEMO_CLASSES),
                 args.output_dir, progress.format_duration(time.time() - start))


if __name__ == "__main__":
    cli.run_main(main)
