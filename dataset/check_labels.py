#!/usr/bin/env python
"""Check the label PNGs of a list file before training on them.

Reads the labels listed in --data-list (all of them, or a random --sample)
and prints:

  - the histogram of label values: pixels and labels per class (by name),
    the ignore label, and any value that is not a class;
  - every problem, grouped, with the fix to apply: values that are neither
    class ids 0..C-1 nor --ignore-label (with the likely cause: a binary mask
    saved as 0/200 or 0/255, ids scaled for viewing, a palette label
    converted to gray, JPEG or interpolation artefacts), colour (RGB) labels,
    labels of another size than their image, missing and unreadable files,
    and masks holding nothing but background and ignore;
  - a last line starting with 'summary:'.

With --label-map the values are checked after mapping, as train.py and
evaluate.py read them. train.py runs the same check on a sample of 100
labels before its first step.

Exit status: 0 when every checked label is fine, 1 when problems were found,
2 when the check cannot run (e.g. no list file).

Example:
  python dataset/check_labels.py --data-dir VOCdevkit/VOC2012 \\
      --data-list VOCdevkit/VOC2012/train_aug.txt --workers 2
"""
import argparse
import os
import sys

# Run as `python dataset/check_labels.py` without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_resnet import cli  # noqa: E402
from deeplab_resnet.data import label_checks, label_maps  # noqa: E402
from deeplab_resnet.data.lists import read_labeled_image_list  # noqa: E402

# Seconds between progress lines.
LOG_INTERVAL = 5.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_data_flags(parser, data_list="dataset/train.txt")
    cli.add_num_classes_flag(parser)
    cli.add_class_names_flag(parser)
    parser.add_argument("--sample", type=cli.positive_int, default=None, metavar="N",
                        help="Check N labels drawn at random (default: all).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Random seed of --sample (default: %(default)s).")
    parser.add_argument("--workers", type=cli.positive_int, default=1,
                        help="Processes reading labels in parallel "
                             "(default: %(default)s).")
    parser.add_argument("--max-listed", type=int, default=10,
                        help="Files listed per kind of problem "
                             "(default: %(default)s).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.setup_logging()
    label_map = label_maps.read_label_map(args.label_map, args.num_classes,
                                          args.ignore_label)
    names = label_maps.class_names(args.num_classes, args.class_names)
    images, label_paths = read_labeled_image_list(args.data_dir, args.data_list,
                                                  check_exists=False)
    indices = label_checks.sample_indices(len(images), args.sample, args.seed)
    result = label_checks.scan_labels([(images[i], label_paths[i]) for i in indices],
                                      args.num_classes, args.ignore_label, label_map,
                                      workers=args.workers, log_interval=LOG_INTERVAL)
    if label_map is not None:
        print("label map %s" % label_map.describe())
    print(label_checks.format_report(result, names, args.ignore_label, args.max_listed))
    return 1 if result.problems else 0


if __name__ == "__main__":
    cli.run_main(main)
