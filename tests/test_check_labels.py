"""dataset/check_labels.py, and the same check at the start of train.py."""
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image
from deeplab_resnet import cli
from deeplab_resnet import constants

from conftest import REPO_ROOT, TINY_CONFIG, load_script, run_script, write_voc_pair

SCRIPT = os.path.join(REPO_ROOT, "dataset", "check_labels.py")
TINY_FLAGS = ["--blocks", ",".join(map(str, TINY_CONFIG.blocks)),
              "--base-depth", str(TINY_CONFIG.base_depth),
              "--aspp-rates", ",".join(map(str, TINY_CONFIG.aspp_rates))]


def run_check(argv):
    """check_labels.py in this process: its exit status."""
    return run_script(SCRIPT, argv)


def write_list(root, names, name="train.txt"):
    path = os.path.join(root, name)
    with open(path, "w") as f:
        for n in names:
            f.write("/JPEGImages/%s.jpg /SegmentationClassAug/%s.png\n" % (n, n))
    return path


def label_path(root, name):
    return os.path.join(root, "SegmentationClassAug", name + ".png")


def histogram_rows(out):
    """{value: (name, pixels, labels)} from the printed table."""
    rows = {}
    for line in out.splitlines():
        match = re.match(r"^\s+(\d+)  (.{20}) +(\d+) +[\d.]+% +(\d+)$", line)
        if match:
            rows[int(match.group(1))] = (match.group(2).strip(), int(match.group(3)),
                                         int(match.group(4)))
    return rows


def test_clean_dataset_histogram_matches_the_files(voc_dataset, capsys, caplog):
    caplog.set_level(logging.INFO)
    data_dir, list_path, names = voc_dataset
    assert run_check(["--data-dir", data_dir, "--data-list", list_path]) == 0
    out = capsys.readouterr().out
    rows = histogram_rows(out)
    arrays = [np.array(Image.open(label_path(data_dir, n))) for n in names]
    for value in list(range(constants.NUM_CLASSES)) + [255]:
        pixels = sum(int((a == value).sum()) for a in arrays)
        in_labels = sum(int((a == value).any()) for a in arrays)
        name = constants.VOC_CLASSES[value] if value < 21 else "(ignore)"
        assert rows[value] == (name, pixels, in_labels)
    assert set(rows) == set(range(21)) | {255}
    assert out.strip().splitlines()[-1] == ("summary: 4 labels checked, 0 with "
                                            "problems, 0 warning(s)")
    assert re.search(r"labels 4/4 0 with problems .* ETA", caplog.text)


def break_dataset(root):
    """A dataset with one label of each kind of problem; returns the list."""
    names = ["good", "binary200", "rendered", "rotated", "missing", "garbage",
             "scaled"]
    for i, name in enumerate(names):
        write_voc_pair(root, name, (24, 30), seed=i)
    label = np.array(Image.open(label_path(root, "binary200")))
    Image.fromarray(np.where(label > 0, 200, 0).astype(np.uint8)).save(
        label_path(root, "binary200"))
    Image.open(label_path(root, "rendered")).convert("RGB").save(
        label_path(root, "rendered"))
    Image.new("L", (24, 30)).save(label_path(root, "rotated"))
    os.remove(label_path(root, "missing"))
    with open(label_path(root, "garbage"), "w") as f:
        f.write("not a PNG")
    label = np.array(Image.open(label_path(root, "scaled"))).astype(np.int64)
    Image.fromarray(np.where(label == 255, 255, label * 10).astype(np.uint8)).save(
        label_path(root, "scaled"))
    return write_list(root, names)


def test_each_problem_is_reported_with_its_fix(tmp_path, capsys):
    root = str(tmp_path / "data")
    list_path = break_dataset(root)
    assert run_check(["--data-dir", root, "--data-list", list_path]) == 1
    out = capsys.readouterr().out
    expected = [
        r"problem \(missing\), 1 label\(s\):\n  .*missing.png does not exist\.\n"
        r"  fix: Check --data-dir",
        r"problem \(unreadable\), 1 label\(s\):\n  Cannot read label .*garbage.png",
        r"problem \(colour\), 1 label\(s\):\n  Label .*rendered.png is a colour image"
        r".*\n  fix: .*VOC palette colours.*convert_colour_label",
        r"problem \(size\), 1 label\(s\):\n  Label .*rotated.png is 30x24 but its "
        r"image .*rotated.jpg is 24x30.*\n  fix: Height and width are swapped",
        r"problem \(values\), 1 label\(s\):\n  Label .*binary200.png has values "
        r"\[200\].*\n  fix: Only 0 and 200 occur: .*binary",
        r"problem \(values\), 1 label\(s\):\n  Label .*scaled.png has values "
        r"\[.*\].*\n  fix: Every value is a multiple of 10",
    ]
    for pattern in expected:
        assert re.search(pattern, out), pattern
    assert "good.png" not in out
    assert out.strip().splitlines()[-1] == (
        "summary: 7 labels checked, 6 with problems (missing 1, unreadable 1, "
        "colour 1, size 1, values 2), 0 warning(s)")
    # Values that are no class are in the histogram, named as such.
    assert histogram_rows(out)[200][:1] == ("(not a class)",)


def test_label_map_class_names_sample_and_workers(tmp_path, capsys):
    root = str(tmp_path / "data")
    names = ["im%d" % i for i in range(5)]
    expected = np.zeros(256, np.int64)
    for i, name in enumerate(names):
        _, label = write_voc_pair(root, name, (20 + i, 26), num_classes=4, seed=i,
                                  label_mode="L")
        expected += np.bincount(label.ravel(), minlength=256)
        # Stored as source ids 10..13; 255 stays the ignore label.
        Image.fromarray(np.where(label == 255, 255, label + 10).astype(np.uint8)).save(
            label_path(root, name))
    list_path = write_list(root, names)
    map_path = str(tmp_path / "map.json")
    with open(map_path, "w") as f:
        f.write('{"10-13": "0-3"}')
    names_path = str(tmp_path / "names.txt")
    with open(names_path, "w") as f:
        f.write("ground\nsky\ntree\ncar\n")
    base = ["--data-dir", root, "--data-list", list_path, "--num-classes", "4",
            "--label-map", map_path, "--class-names", names_path]
    assert run_check(base) == 0
    out = capsys.readouterr().out
    assert out.startswith("label map %s: 5 values -> 5 ids" % map_path)
    rows = histogram_rows(out)
    for value, name in enumerate(["ground", "sky", "tree", "car"]):
        assert rows[value][:2] == (name, expected[value])
    assert rows[255][:2] == ("(ignore)", expected[255])

    assert run_check(base + ["--sample", "2", "--workers", "2"]) == 0
    sampled = capsys.readouterr().out
    assert sampled.strip().splitlines()[-1].startswith("summary: 2 labels checked")
    assert run_check(base + ["--sample", "2"]) == 0
    assert capsys.readouterr().out == sampled

    # Without the map the stored ids are no classes.
    assert run_check(base[:6] + ["--class-names", names_path]) == 1
    out = capsys.readouterr().out
    assert re.search(r"im0.png has values \[10(, 1[123])+\]", out)
    assert re.search(r"fix: If they are class ids, --num-classes must be at least "
                     r"1[234];", out)
    assert out.strip().splitlines()[-1] == ("summary: 5 labels checked, 5 with "
                                            "problems (values 5), 0 warning(s)")


def test_binary_masks_of_0_and_255_fail_as_a_whole(tmp_path, capsys):
    root = str(tmp_path / "data")
    for i in range(3):
        _, label = write_voc_pair(root, "m%d" % i, (20, 20), seed=i)
        Image.fromarray(np.where(label > 0, 255, 0).astype(np.uint8)).save(
            label_path(root, "m%d" % i))
    list_path = write_list(root, ["m0", "m1", "m2"])
    assert run_check(["--data-dir", root, "--data-list", list_path]) == 1
    out = capsys.readouterr().out
    assert re.search(r"problem \(dataset\):\n  No pixel in the 3 checked labels has "
                     r"a class other than 0, and [\d.]+% are the ignore label 255\."
                     r"\n  fix: These look like binary masks saved as 0/255.*'255 1'",
                     out)
    assert "0 with problems (dataset 1)" in out


def test_cli_exit_status_and_one_line_errors(tmp_path):
    root = str(tmp_path / "data")
    list_path = break_dataset(root)
    result = subprocess.run([sys.executable, SCRIPT, "--data-dir", root,
                             "--data-list", list_path, "--max-listed", "1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "summary: 7 labels checked, 6 with problems" in result.stdout
    assert "Traceback" not in result.stderr
    status = run_check(["--data-dir", root, "--data-list", str(tmp_path / "no.txt")])
    assert status == 2
    with open(str(tmp_path / "bad_map.txt"), "w") as f:
        f.write("7 30\n")
    assert run_check(["--data-dir", root, "--data-list", list_path,
                      "--label-map", str(tmp_path / "bad_map.txt")]) == 2


# ------------------------------------------------------------ in train.py
def run_train(root, list_path, snapshot_dir, *extra):
    argv = (["--data-dir", root, "--data-list", list_path, "--snapshot-dir",
             snapshot_dir, "--input-size", "25,25", "--batch-size", "2",
             "--num-steps", "1", "--save-num-images", "0"] + TINY_FLAGS + list(extra))
    train = load_script("train")
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda: train.main(argv))
    return exit_info.value.code


@pytest.mark.parametrize("foreground", [200, 255])
def test_train_stops_on_binary_masks_before_the_first_step(tmp_path, caplog,
                                                           foreground):
    caplog.set_level(logging.INFO)
    root = str(tmp_path / "data")
    names = ["m%d" % i for i in range(4)]
    for i, name in enumerate(names):
        _, label = write_voc_pair(root, name, (25, 25), seed=i)
        Image.fromarray(np.where(label > 0, foreground, 0).astype(np.uint8)).save(
            label_path(root, name))
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(root, write_list(root, names), snapshot_dir) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert re.search(r"binary .*mask.* saved as 0/%d" % foreground, errors[0])
    assert "--label-map" in errors[0]
    assert not any(r.getMessage().startswith("step ") for r in caplog.records)
    assert tf.train.latest_checkpoint(snapshot_dir) is None


def test_train_reads_labels_through_the_label_map(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root = str(tmp_path / "data")
    names = ["s%d" % i for i in range(2)]
    for i, name in enumerate(names):
        _, label = write_voc_pair(root, name, (25, 25), num_classes=3, seed=i)
        Image.fromarray(np.where(label == 255, 255, 100 + label).astype(np.uint8)).save(
            label_path(root, name))
    map_path = str(tmp_path / "map.txt")
    with open(map_path, "w") as f:
        f.write("100-102 0-2\n")
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(root, write_list(root, names), snapshot_dir, "--num-classes", "3",
                     "--label-map", map_path) == 0
    assert re.search(r"checked 2 of 2 labels .*label map .*map.txt: 4 values -> 4 ids",
                     caplog.text)
    assert re.search(r"step 1/1 loss=\d", caplog.text)
    assert tf.train.latest_checkpoint(snapshot_dir).endswith("model.ckpt-1")


def test_parallel_scans_never_fork_the_caller(tmp_path, monkeypatch):
    """The scan runs inside train.py, beside TensorFlow's threads: its
    workers come from a fresh interpreter (forkserver or spawn), not a fork,
    and find what one process finds."""
    from deeplab_resnet import machine
    from deeplab_resnet.data import label_checks
    root = str(tmp_path / "voc")
    pairs = []
    for i in range(4):
        write_voc_pair(root, "p%d" % i, (21, 19), seed=i)
        pairs.append((os.path.join(root, "JPEGImages", "p%d.jpg" % i), label_path(root, "p%d" % i)))
    methods = []

    def context(preload=()):
        made = machine.fresh_process_context(preload)
        methods.append(made.get_start_method())
        return made
    monkeypatch.setattr(label_checks, "fresh_process_context", context)
    parallel = label_checks.scan_labels(pairs, constants.NUM_CLASSES, workers=2,
                                        log_interval=None)
    alone = label_checks.scan_labels(pairs, constants.NUM_CLASSES, log_interval=None)
    assert methods and "fork" not in methods, methods
    assert parallel.checked == alone.checked == 4
    np.testing.assert_array_equal(parallel.histogram, alone.histogram)
