#!/usr/bin/env python
"""Build DeepLab's augmented PASCAL VOC 2012 set (train_aug) from VOC 2012 and SBD.

Converts SBD's class maps (cls/*.mat) and VOC's own labels into palette PNGs
of class ids in <output-dir>/SegmentationClassAug/ (VOC's label wins where
both exist), links SBD photos missing from JPEGImages/, and writes
<output-dir>/train_aug.txt (SBD train+val and VOC train minus VOC val: 10,582
images) and <output-dir>/val.txt (VOC val: 1,449 images). Then train with
--data-dir <output-dir> --data-list <output-dir>/train_aug.txt.

Existing labels are kept, so an interrupted run can simply be restarted.
"""
import argparse
import logging
import os
import sys

# Run as `python dataset/build_voc_lists.py` without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_resnet import cli  # noqa: E402
from deeplab_resnet.data import voc_aug  # noqa: E402

log = logging.getLogger("build_voc_lists")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc-dir", required=True,
                        help="PASCAL VOC 2012: the VOCdevkit/VOC2012 directory with "
                             "JPEGImages/, SegmentationClass/ and "
                             "ImageSets/Segmentation/ (required, no default).")
    parser.add_argument("--sbd-dir", required=True,
                        help="SBD: the benchmark_RELEASE/dataset directory with cls/, "
                             "img/, train.txt and val.txt (required, no default).")
    parser.add_argument("--output-dir", type=cli.output_directory, default=None,
                        help="Where SegmentationClassAug/, the list files and any "
                             "missing photos go (default: --voc-dir). Another "
                             "directory gets links to every listed photo so that it "
                             "is a complete --data-dir.")
    parser.add_argument("--force", action="store_true",
                        help="Rewrite labels that already exist in "
                             "SegmentationClassAug/ and list files that differ "
                             "(default: keep them).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.setup_logging()
    output_dir = args.output_dir or args.voc_dir
    counts = voc_aug.build_voc_aug(args.voc_dir, args.sbd_dir, output_dir,
                                   force=args.force)
    log.info("labels written: %d from VOC, %d from SBD; %d existing kept. "
             "Photos: %d linked, %d copied.", counts["labels_voc"],
             counts["labels_sbd"], counts["labels_kept"], counts["images_linked"],
             counts["images_copied"])
    log.info("%s %d images, %s %d images in %s", voc_aug.TRAIN_LIST, counts["train"],
             voc_aug.VAL_LIST, counts["val"], output_dir)


if __name__ == "__main__":
    cli.run_main(main)
