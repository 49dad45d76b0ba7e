"""The PASCAL VOC 2012 lists shipped in dataset/: DeepLab's train_aug, val and test.

train.py and evaluate.py default to them, so they must be the canonical
splits, in the exact format list files have here (``lists.list_line``).
"""
import os
import re

import pytest

from conftest import REPO_ROOT, load_script
from deeplab_resnet.data import lists

DATASET = os.path.join(REPO_ROOT, "dataset")
SHARED_LISTS = os.path.join(REPO_ROOT, os.pardir, "shared", "data", "voc_lists")
# Entries per list: train_aug (SBD train+val plus VOC train, minus VOC val),
# VOC 2012 val, VOC 2012 test (images only, its labels are not public).
COUNTS = {"train.txt": 10582, "val.txt": 1449, "test.txt": 1456}
VOC_ID = re.compile(r"^(2007|2008|2009|2010|2011)_\d{6}$")
IMAGE_ONLY = re.compile(r"^/JPEGImages/([^/ ]+)\.jpg$")


def entries(name, directory=DATASET):
    """The non-empty lines of a list, without line ends (the last may lack one)."""
    with open(os.path.join(directory, name)) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def names(name):
    """Image ids of a list, in order."""
    return [line.split()[0][len("/JPEGImages/"):-len(".jpg")] for line in entries(name)]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_lists_have_the_canonical_counts_without_duplicates(name):
    ids = names(name)
    assert len(ids) == COUNTS[name]
    assert len(set(ids)) == len(ids)
    bad = [i for i in ids if not VOC_ID.match(i)]
    assert not bad, bad[:5]


@pytest.mark.parametrize("name", ["train.txt", "val.txt"])
def test_labelled_lines_are_what_build_voc_lists_writes(name):
    for line, image_id in zip(entries(name), names(name)):
        assert line + "\n" == lists.list_line(image_id), line


def test_test_list_names_images_only():
    for line in entries("test.txt"):
        match = IMAGE_ONLY.match(line)
        assert match and VOC_ID.match(match.group(1)), line


def test_splits_do_not_overlap():
    train, val, test = (set(names(n)) for n in ("train.txt", "val.txt", "test.txt"))
    assert not train & val
    assert not (train | val) & test


@pytest.mark.skipif(not os.path.isdir(SHARED_LISTS),
                    reason="../shared/data/voc_lists is not present in this checkout")
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_lists_are_the_shared_canonical_ones(name):
    assert entries(name) == entries(name, SHARED_LISTS)


def test_reader_reads_the_val_list():
    images, labels = lists.read_labeled_image_list("VOC2012",
                                                   os.path.join(DATASET, "val.txt"),
                                                   check_exists=False)
    assert len(images) == len(labels) == COUNTS["val.txt"]
    assert images[0] == os.path.join("VOC2012", "JPEGImages", "2007_000033.jpg")
    assert labels[0] == os.path.join("VOC2012", "SegmentationClassAug", "2007_000033.png")
    assert images[-1] == os.path.join("VOC2012", "JPEGImages", "2011_003271.jpg")


def test_script_defaults_are_the_shipped_lists():
    """Defaults are relative to the working directory: the repository root."""
    train_args = load_script("train").get_arguments([])
    eval_args = load_script("evaluate").get_arguments(["--restore-from", "w.npz"])
    assert os.path.normpath(train_args.data_list) == os.path.join("dataset", "train.txt")
    assert os.path.normpath(eval_args.data_list) == os.path.join("dataset", "val.txt")
    for path in (train_args.data_list, eval_args.data_list):
        assert os.path.isfile(os.path.join(REPO_ROOT, path))
