"""The dataset tools: the VOC+SBD train_aug builder and the synthetic demo set."""
import colorsys
import os

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image
from deeplab_resnet import constants
from deeplab_resnet import files
from deeplab_resnet import metrics
from deeplab_resnet.data import demo as demo_data
from deeplab_resnet.data import voc_aug


from conftest import REPO_ROOT, run_script
from helpers.voc_download import (EXPECTED_TRAIN, SBD_ONLY_PHOTO, SBD_TRAIN, SBD_VAL, VOC_TRAIN,
                                  VOC_VAL, expected_lines, read_png, write_sbd_mat)

BUILD_SCRIPT = os.path.join(REPO_ROOT, "dataset", "build_voc_lists.py")
DEMO_SCRIPT = os.path.join(REPO_ROOT, "dataset", "make_demo.py")

# ------------------------------------------------------------------ VOC + SBD
def test_read_sbd_label_reads_gtcls_segmentation(tmp_path):
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_sbd_mat(str(tmp_path / "x.mat"), label)
    read = voc_aug.read_sbd_label(str(tmp_path / "x.mat"))
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, label)


def test_read_sbd_label_rejects_instance_files(tmp_path):
    scipy.io.savemat(str(tmp_path / "x.mat"),
                     {"GTinst": {"Segmentation": np.zeros((3, 4), np.uint8)}})
    with pytest.raises(ValueError, match="GTcls"):
        voc_aug.read_sbd_label(str(tmp_path / "x.mat"))


def test_plan_splits_merges_and_holds_out_val():
    train, val = voc_aug.plan_splits(VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL)
    assert train == EXPECTED_TRAIN
    assert val == VOC_VAL


def test_build_writes_lists_labels_and_photos(fake_download):
    voc_dir, sbd_dir, voc_labels, sbd_labels = fake_download
    counts = voc_aug.build_voc_aug(voc_dir, sbd_dir)

    with open(os.path.join(voc_dir, "train_aug.txt")) as f:
        assert f.read().splitlines() == expected_lines(EXPECTED_TRAIN)
    with open(os.path.join(voc_dir, "val.txt")) as f:
        assert f.read().splitlines() == expected_lines(VOC_VAL)
    for name in EXPECTED_TRAIN + VOC_VAL:
        mode, palette, label = read_png(
            os.path.join(voc_dir, "SegmentationClassAug", name + ".png"))
        assert mode == "P"
        assert palette == constants.PALETTE.ravel().tolist()
        # VOC's label (with its 255 border) wins over SBD's.
        expected = voc_labels[name] if name in voc_labels else sbd_labels[name]
        np.testing.assert_array_equal(label, expected)
    assert (constants.IGNORE_LABEL == np.array(Image.open(os.path.join(
        voc_dir, "SegmentationClassAug", "2007_000003.png")))).any()
    linked = os.path.join(voc_dir, "JPEGImages", SBD_ONLY_PHOTO + ".jpg")
    original = os.path.join(sbd_dir, "img", SBD_ONLY_PHOTO + ".jpg")
    with open(linked, "rb") as a, open(original, "rb") as b:
        assert a.read() == b.read()
    assert dict(counts) == {"train": 5, "val": 2, "labels_voc": 4, "labels_sbd": 3,
                            "images_linked": 1, "lists_written": 2}


def test_build_keeps_existing_labels_unless_forced(fake_download):
    voc_dir, sbd_dir, voc_labels, _ = fake_download
    voc_aug.build_voc_aug(voc_dir, sbd_dir)
    path = os.path.join(voc_dir, "SegmentationClassAug", "2007_000001.png")
    mine = np.full(voc_labels["2007_000001"].shape, 3, np.uint8)
    files.save_label(mine, path)

    counts = voc_aug.build_voc_aug(voc_dir, sbd_dir)
    assert counts["labels_kept"] == 7 and counts["lists_written"] == 0
    np.testing.assert_array_equal(read_png(path)[2], mine)

    counts = voc_aug.build_voc_aug(voc_dir, sbd_dir, force=True)
    assert counts["labels_voc"] == 4 and counts["labels_sbd"] == 3
    np.testing.assert_array_equal(read_png(path)[2], voc_labels["2007_000001"])


def test_build_refuses_to_replace_a_different_list(fake_download):
    voc_dir, sbd_dir, _, _ = fake_download
    path = os.path.join(voc_dir, "val.txt")
    with open(path, "w") as f:
        f.write("my own list\n")
    with pytest.raises(FileExistsError, match="--force"):
        voc_aug.build_voc_aug(voc_dir, sbd_dir)
    with open(path) as f:
        assert f.read() == "my own list\n"
    # Found before converting thousands of labels, not after.
    assert not os.path.exists(os.path.join(voc_dir, "SegmentationClassAug"))
    voc_aug.build_voc_aug(voc_dir, sbd_dir, force=True)
    with open(path) as f:
        assert f.read().splitlines() == expected_lines(VOC_VAL)


def test_build_into_another_directory_leaves_voc_alone(fake_download, tmp_path):
    voc_dir, sbd_dir, _, _ = fake_download
    voc_photos = os.path.join(voc_dir, "JPEGImages")
    before = sorted(os.listdir(voc_dir)), sorted(os.listdir(voc_photos))
    out = str(tmp_path / "aug")
    voc_aug.build_voc_aug(voc_dir, sbd_dir, out)
    assert (sorted(os.listdir(voc_dir)), sorted(os.listdir(voc_photos))) == before
    assert sorted(os.listdir(os.path.join(out, "JPEGImages"))) == sorted(
        n + ".jpg" for n in EXPECTED_TRAIN + VOC_VAL)
    assert sorted(os.listdir(out)) == ["JPEGImages", "SegmentationClassAug",
                                       "train_aug.txt", "val.txt"]


def test_wrong_directories_say_what_was_expected(fake_download, tmp_path):
    voc_dir, sbd_dir, _, _ = fake_download
    devkit = os.path.dirname(voc_dir)
    with pytest.raises(IOError, match="VOC2012") as err:
        voc_aug.build_voc_aug(devkit, sbd_dir)
    assert "JPEGImages" in str(err.value) and "Did you mean" in str(err.value)
    with pytest.raises(IOError, match=r"benchmark_RELEASE/dataset.*cls") as err:
        voc_aug.build_voc_aug(voc_dir, os.path.dirname(sbd_dir))
    assert "Did you mean --sbd-dir %s" % sbd_dir in str(err.value)
    with pytest.raises(IOError, match="not a directory"):
        voc_aug.build_voc_aug(str(tmp_path / "nowhere"), sbd_dir)


def test_missing_label_fails_before_writing(fake_download):
    voc_dir, sbd_dir, _, _ = fake_download
    os.remove(os.path.join(sbd_dir, "cls", "2008_000006.mat"))
    with pytest.raises(IOError, match="1 labels are missing .*2008_000006"):
        voc_aug.build_voc_aug(voc_dir, sbd_dir)
    assert not os.path.exists(os.path.join(voc_dir, "SegmentationClassAug"))


def test_label_of_another_size_is_an_error(fake_download):
    voc_dir, sbd_dir, _, _ = fake_download
    write_sbd_mat(os.path.join(sbd_dir, "cls", "2008_000006.mat"),
                  np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="2008_000006.mat is 5x5"):
        voc_aug.build_voc_aug(voc_dir, sbd_dir)


def test_build_script_reports_and_fails_cleanly(fake_download, caplog):
    voc_dir, sbd_dir, _, _ = fake_download
    caplog.set_level("INFO")
    assert run_script(BUILD_SCRIPT, ["--voc-dir", voc_dir, "--sbd-dir", sbd_dir]) == 0
    assert "train_aug.txt 5 images, val.txt 2 images" in caplog.text
    assert "labels 7/7" in caplog.text and "ETA" in caplog.text
    caplog.clear()
    assert run_script(BUILD_SCRIPT, ["--voc-dir", sbd_dir, "--sbd-dir", sbd_dir]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--voc-dir" in errors[0].getMessage()


# ----------------------------------------------------------------- demo data
NUM_DEMO_CLASSES = len(demo_data.DEMO_CLASSES)
SMALL_DEMO = demo_data.DemoConfig(num_train=6, num_val=3, seed=0, min_size=60,
                                  max_size=160)


@pytest.fixture
def demo_dir(tmp_path):
    root = str(tmp_path / "demo")
    assert demo_data.write_demo_dataset(root, SMALL_DEMO) == 9
    return root


def read_pairs(root, list_name):
    with open(os.path.join(root, list_name)) as f:
        lines = f.read().splitlines()
    pairs = []
    for line in lines:
        image_rel, label_rel = line.split(" ")
        with Image.open(root + image_rel) as image:
            image = np.array(image.convert("RGB"))
        pairs.append((image,) + read_png(root + label_rel))
    return lines, pairs


def all_files(root):
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                found[os.path.relpath(os.path.join(directory, name), root)] = f.read()
    return found


def test_demo_dataset_layout_and_labels(demo_dir):
    assert len(os.listdir(os.path.join(demo_dir, "JPEGImages"))) == 9
    assert len(os.listdir(os.path.join(demo_dir, "SegmentationClassAug"))) == 9
    with open(os.path.join(demo_dir, "classes.txt")) as f:
        assert f.read().splitlines() == ["background", "disc", "box", "triangle", "ring"]
    for list_name, split, count in (("train.txt", "train", 6), ("val.txt", "val", 3)):
        lines, pairs = read_pairs(demo_dir, list_name)
        assert lines == ["/JPEGImages/%s_%05d.jpg /SegmentationClassAug/%s_%05d.png"
                         % (split, i, split, i) for i in range(count)]
        for image, mode, palette, label in pairs:
            assert mode == "P"
            assert palette == constants.PALETTE.ravel().tolist()
            assert image.shape[:2] == label.shape
            assert 60 <= min(label.shape) and max(label.shape) <= 160
            assert set(np.unique(label)) <= set(range(NUM_DEMO_CLASSES)) | {255}
            assert (label > 0).any() and (label == 0).any()


def test_demo_labels_have_void_outlines_between_classes():
    rng = np.random.default_rng(5)
    for _ in range(20):
        _, label = demo_data.draw_sample(rng, 60, 160)
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            # Two neighbours never hold two different classes: a 255 band
            # separates them, as in VOC.
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any()
        assert (label == 255).any()
        assert (label == 255).mean() < 0.2


def test_demo_image_sizes_vary_odd_and_even():
    rng = np.random.default_rng(0)
    sides = np.array([demo_data.draw_sample(rng, 61, 70)[1].shape for _ in range(30)])
    assert sides.min() >= 61 and sides.max() <= 70
    assert set(sides.ravel() % 2) == {0, 1}
    assert len(set(map(tuple, sides))) > 20


def test_demo_classes_are_told_apart_by_colour(demo_dir):
    """Local evidence suffices: hue and saturation alone label nearly every
    pixel right, so a small network can learn the task quickly."""
    centres = {cls: np.radians(np.mean(band)) for cls, band in
               demo_data.CLASS_HUES.items()}
    confusion = np.zeros((NUM_DEMO_CLASSES, NUM_DEMO_CLASSES), np.int64)
    for image, _, _, label in read_pairs(demo_dir, "train.txt")[1]:
        hsv = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in
                        image.reshape(-1, 3).astype(np.float64)])
        hue = hsv[:, 0] * 2 * np.pi
        distance = np.stack([np.abs(np.angle(np.exp(1j * (hue - centres[c]))))
                             for c in sorted(centres)], 1)
        pred = np.where(hsv[:, 1] < 0.3, 0, 1 + distance.argmin(1))
        confusion += metrics.confusion_matrix(label.ravel(), pred, NUM_DEMO_CLASSES)
    scores = metrics.segmentation_scores(confusion)
    assert scores["pixel_accuracy"] > 0.98
    assert np.nanmin(scores["iou"]) > 0.9


def test_demo_is_deterministic_by_seed(tmp_path, demo_dir):
    again = str(tmp_path / "again")
    demo_data.write_demo_dataset(again, SMALL_DEMO)
    first = all_files(demo_dir)
    assert all_files(again) == first

    other = str(tmp_path / "other")
    demo_data.write_demo_dataset(other, SMALL_DEMO._replace(seed=1))
    assert all_files(other)["JPEGImages/train_00000.jpg"] != first["JPEGImages/train_00000.jpg"]

    # Val does not depend on how many training images there are.
    more = str(tmp_path / "more")
    demo_data.write_demo_dataset(more, SMALL_DEMO._replace(num_train=8))
    more_files = all_files(more)
    for name in ("val_00000", "val_00002"):
        assert more_files["JPEGImages/%s.jpg" % name] == first["JPEGImages/%s.jpg" % name]
        assert (more_files["SegmentationClassAug/%s.png" % name]
                == first["SegmentationClassAug/%s.png" % name])


def test_demo_rerun_keeps_or_refuses(demo_dir):
    before = all_files(demo_dir)
    assert demo_data.write_demo_dataset(demo_dir, SMALL_DEMO) == 0
    with pytest.raises(FileExistsError, match="--force"):
        demo_data.write_demo_dataset(demo_dir, SMALL_DEMO._replace(seed=3))
    assert all_files(demo_dir) == before

    # A deleted file is restored without --force: the manifest says it is ours.
    os.remove(os.path.join(demo_dir, "JPEGImages", "val_00001.jpg"))
    assert demo_data.write_demo_dataset(demo_dir, SMALL_DEMO) == 9
    assert all_files(demo_dir) == before

    assert demo_data.write_demo_dataset(demo_dir, SMALL_DEMO._replace(seed=3),
                                        force=True) == 9
    assert all_files(demo_dir) != before


def test_demo_interrupted_rewrite_is_not_taken_for_finished(demo_dir, monkeypatch):
    before = all_files(demo_dir)
    draw = demo_data.draw_sample
    calls = []

    def draw_then_stop(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return draw(*args)
    monkeypatch.setattr(demo_data, "draw_sample", draw_then_stop)
    with pytest.raises(KeyboardInterrupt):
        demo_data.write_demo_dataset(demo_dir, SMALL_DEMO._replace(seed=3), force=True)
    monkeypatch.setattr(demo_data, "draw_sample", draw)
    # Half the files are seed 3's now; the old settings must rewrite them.
    with pytest.raises(FileExistsError):
        demo_data.write_demo_dataset(demo_dir, SMALL_DEMO)
    assert demo_data.write_demo_dataset(demo_dir, SMALL_DEMO, force=True) == 9
    assert all_files(demo_dir) == before


def test_demo_refuses_a_foreign_directory(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "train.txt").write_text("precious\n")
    with pytest.raises(FileExistsError, match="already holds other data"):
        demo_data.write_demo_dataset(str(root), SMALL_DEMO)
    assert (root / "train.txt").read_text() == "precious\n"


@pytest.mark.parametrize("change", [dict(min_size=30), dict(min_size=90, max_size=80),
                                    dict(num_val=0)])
def test_demo_rejects_impossible_settings(tmp_path, change):
    with pytest.raises(ValueError):
        demo_data.write_demo_dataset(str(tmp_path), SMALL_DEMO._replace(**change))


def test_make_demo_script(tmp_path, caplog):
    caplog.set_level("INFO")
    out = str(tmp_path / "demo")
    argv = ["--output-dir", out, "--num-train", "4", "--num-val", "2", "--seed", "7",
            "--min-size", "50", "--max-size", "64"]
    assert run_script(DEMO_SCRIPT, argv) == 0
    assert "wrote 4 train + 2 val images (5 classes)" in caplog.text
    assert len(os.listdir(os.path.join(out, "JPEGImages"))) == 6
    with Image.open(os.path.join(out, "SegmentationClassAug", "val_00001.png")) as label:
        assert max(label.size) <= 64
    caplog.clear()
    assert run_script(DEMO_SCRIPT, argv[:-2] + ["--max-size", "40"]) == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--min-size" in errors[0].getMessage()
