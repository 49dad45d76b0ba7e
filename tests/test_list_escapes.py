"""A name in a split or list file never leads outside the directory it is joined onto."""
import os

import numpy as np
import pytest
from PIL import Image

from deeplab_resnet import files
from deeplab_resnet.data import lists, voc_aug


def test_a_split_name_with_dot_dot_is_refused_before_anything_is_written(fake_download,
                                                                         tmp_path):
    voc_dir, sbd_dir, _, _ = fake_download
    # The photo and label the escaping name points at exist, as in a hand-edited tree.
    escaped = os.path.join(os.path.dirname(voc_dir), "x_escaped")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(escaped + ".jpg")
    files.save_label(np.zeros((9, 9), np.uint8), escaped + ".png")
    split = os.path.join(voc_dir, "ImageSets", "Segmentation", "train.txt")
    with open(split, "a") as f:
        f.write("../../x_escaped\n")
    number = len(open(split).read().splitlines())
    out = str(tmp_path / "out" / "voc_aug")
    with pytest.raises(ValueError, match=r"train.txt line %d: '../../x_escaped' is not a "
                                         r"bare image name" % number):
        voc_aug.build_voc_aug(voc_dir, sbd_dir, out)
    assert not os.path.exists(str(tmp_path / "out" / "x_escaped.png"))
    assert not os.path.exists(out)


@pytest.mark.parametrize("name", ["..", "a/b", "a\\b", "."])
def test_split_names_must_be_bare(tmp_path, name):
    path = tmp_path / "split.txt"
    path.write_text("2007_000032\n\n%s\n" % name)
    with pytest.raises(ValueError, match="split.txt line 3: "):
        voc_aug.read_split(str(path))


@pytest.mark.parametrize("entry", ["/../outside.jpg", "/JPEGImages/../../outside.jpg",
                                   "../outside.jpg"])
def test_a_list_entry_leading_outside_data_dir_is_refused_naming_the_line(tmp_path, entry):
    data_dir = tmp_path / "data"
    (data_dir / "JPEGImages").mkdir(parents=True)
    (data_dir / "SegmentationClassAug").mkdir()
    for path in (data_dir / "JPEGImages" / "a.jpg", data_dir / "SegmentationClassAug" / "a.png",
                 tmp_path / "outside.jpg"):
        path.write_bytes(b"")
    good = "/JPEGImages/a.jpg /SegmentationClassAug/a.png\n"
    list_path = tmp_path / "list.txt"
    list_path.write_text(good + "%s /SegmentationClassAug/a.png\n" % entry)
    with pytest.raises(ValueError, match=r"list.txt line 2: .*outside.jpg would lead outside "
                                         r"--data-dir"):
        lists.read_labeled_image_list(str(data_dir), str(list_path))
    # Inside the root, '..' is fine.
    list_path.write_text(good + "/JPEGImages/../JPEGImages/a.jpg /SegmentationClassAug/a.png\n")
    assert len(lists.read_labeled_image_list(str(data_dir), str(list_path))[0]) == 2
