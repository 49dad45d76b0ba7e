#!/usr/bin/env python
"""Download PASCAL VOC 2012 and SBD, check them, unpack them and build train_aug.

One command instead of fetching VOCtrainval_11-May-2012.tar (~2 GB) and SBD's
benchmark.tgz (~1.4 GB) by hand and running build_voc_lists.py: each archive's
MD5 is checked before it is unpacked, an interrupted download resumes where it
stopped, and a rerun skips what is already done. Needs the optional download
packages: pip install -r requirements-download.txt.

Without internet access, point --mirror at a server holding both files, or
--archives at a directory holding them.
"""
import argparse
import logging
import os
import shlex
import sys

# Run as `python dataset/download_voc.py` without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_resnet import cli  # noqa: E402
from deeplab_resnet.data import download  # noqa: E402

log = logging.getLogger("download_voc")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=cli.output_directory, default=".",
                        help="Where VOCdevkit/, benchmark_RELEASE/ and downloads/ go "
                             "(default: %(default)s); the archives alone take 3.4 GB.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mirror", metavar="URL", default=None,
                        help="Base URL holding both archives under their own names, "
                             "used instead of the canonical hosts (default: none).")
    source.add_argument("--archives", metavar="DIR", default=None,
                        help="Local directory holding both archives: nothing is "
                             "downloaded, and the files are checked but never "
                             "deleted (default: none).")
    parser.add_argument("--delete-archives", action="store_true",
                        help="Delete each downloaded archive once it is unpacked "
                             "(default: keep them in ROOT/downloads/).")
    parser.add_argument("--retries", type=int, default=3,
                        help="Times a lost connection is resumed before giving up "
                             "(default: %(default)s).")
    return parser.parse_args(argv)


def command(script, prepared, list_path):
    """The command line that runs ``script`` on the prepared tree."""
    return "python %s --data-dir %s --data-list %s" % (
        script, shlex.quote(os.path.abspath(prepared.voc_dir)),
        shlex.quote(os.path.abspath(list_path)))


def main(argv=None):
    args = parse_args(argv)
    cli.setup_logging()
    try:
        download.require_dependencies()
    except ImportError as err:
        log.error("error: %s", err)
        return 2
    prepared = download.prepare_voc(
        args.root, mirror=args.mirror, archives_dir=args.archives,
        delete_archives=args.delete_archives, retries=args.retries)
    for name, reason in prepared.skipped:
        print("skipped %s: %s" % (name, reason))
    counts = prepared.counts
    print("train_aug %d images, val %d images in %s" % (counts["train"], counts["val"],
                                                         prepared.voc_dir))
    print("Train with (from the repository root, after converting init.caffemodel):")
    print("  %s --restore-from deeplab_resnet_init.npz --not-restore-last "
          "--random-scale --random-mirror" % command("train.py", prepared,
                                                    prepared.train_list))
    print("Evaluate with:")
    print("  %s --restore-from snapshots/" % command("evaluate.py", prepared,
                                                     prepared.val_list))


if __name__ == "__main__":
    cli.run_main(main)
