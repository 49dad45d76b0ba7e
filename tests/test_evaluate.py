"""evaluate.py end to end on tiny generated VOC-layout data."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from deeplab_resnet import constants
from deeplab_resnet.data.config import EvalDataConfig
from deeplab_resnet.data.lists import read_labeled_image_list

from conftest import REPO_ROOT, load_script, save_tiny_model, write_voc_pair


def read_list(data_dir, list_path):
    with open(list_path) as f:
        pairs = [line.split() for line in f if line.strip()]
    return [(os.path.join(data_dir, i.lstrip("/")), os.path.join(data_dir, l.lstrip("/")))
            for i, l in pairs]


def scores_from_pngs(pairs, save_dir, num_classes):
    """mIoU and confusion from saved predictions, counted without utils."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for image_path, label_path in pairs:
        name = os.path.splitext(os.path.basename(image_path))[0]
        saved = Image.open(os.path.join(save_dir, name + ".png"))
        assert saved.mode == "P"
        assert saved.getpalette()[:768] == constants.PALETTE.ravel().tolist()
        pred = np.array(saved)
        label = np.array(Image.open(label_path))
        assert pred.shape == label.shape
        valid = label != constants.IGNORE_LABEL
        for c in range(num_classes):
            inter[c] += np.sum((label == c) & (pred == c) & valid)
            union[c] += np.sum(((label == c) | (pred == c)) & valid)
            for p in range(num_classes):
                confusion[c, p] += np.sum((label == c) & (pred == p))
    present = union > 0
    return float(np.mean(inter[present] / union[present])), confusion


def printed_miou(text):
    last = text.strip().splitlines()[-1]
    assert last.startswith("mIoU ")
    return float(last.split()[1])


def test_cli_miou_equals_recomputing_from_saved_pngs(voc_dataset, tiny_model, tmp_path):
    data_dir, list_path, names = voc_dataset
    save_dir = str(tmp_path / "pred")
    confusion_path = str(tmp_path / "confusion.csv")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "evaluate.py"),
         "--data-dir", data_dir, "--data-list", list_path,
         "--restore-from", tiny_model.directory, "--save-dir", save_dir,
         "--save-confusion", confusion_path, "--scales", "0.75,1.0", "--flip"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "step 4/4" in result.stderr and "ETA" in result.stderr
    miou = printed_miou(result.stdout)
    assert sorted(os.listdir(save_dir)) == sorted(n + ".png" for n in names)
    expected, confusion = scores_from_pngs(read_list(data_dir, list_path), save_dir,
                                           constants.NUM_CLASSES)
    assert miou == pytest.approx(expected, abs=5e-5)
    assert 0 < miou < 1
    np.testing.assert_array_equal(np.loadtxt(confusion_path, delimiter=",",
                                             dtype=np.int64), confusion)
    for name in constants.VOC_CLASSES:
        assert "\n%s " % name in result.stdout
    assert "pixel accuracy" in result.stdout
    assert "mean class accuracy" in result.stdout


def five_class_dataset(root, count=3):
    names = ["im%d" % i for i in range(count)]
    for i, name in enumerate(names):
        write_voc_pair(root, name, (21 + 2 * i, 30 - i), num_classes=5, seed=10 + i,
                       label_mode="L")
    list_path = os.path.join(root, "val.txt")
    with open(list_path, "w") as f:
        for name in names:
            f.write("/JPEGImages/%s.jpg /SegmentationClassAug/%s.png\n" % (name, name))
    return list_path


def test_crf_class_names_and_npy_confusion(tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    save_tiny_model(model_dir, num_classes=5, seed=4)
    data_dir = str(tmp_path / "data")
    list_path = five_class_dataset(data_dir)
    names_path = str(tmp_path / "names.txt")
    with open(names_path, "w") as f:
        f.write("sky\nroad\ncar\n\ntree\nperson\n")
    save_dir = str(tmp_path / "pred")
    confusion_path = str(tmp_path / "c.npy")
    status = load_script("evaluate").main([
        "--data-dir", data_dir, "--data-list", list_path, "--restore-from", model_dir,
        "--num-classes", "5", "--num-steps", "2", "--crf", "--crf-iters", "3",
        "--class-names", names_path, "--save-dir", save_dir,
        "--save-confusion", confusion_path])
    assert status == 0
    out = capsys.readouterr().out
    pairs = read_list(data_dir, list_path)[:2]
    expected, confusion = scores_from_pngs(pairs, save_dir, 5)
    assert printed_miou(out) == pytest.approx(expected, abs=5e-5)
    np.testing.assert_array_equal(np.load(confusion_path), confusion)
    assert len(os.listdir(save_dir)) == 2
    for name in ("sky", "road", "car", "tree", "person"):
        assert "\n%s " % name in out


def test_generic_class_names_without_a_names_file(tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    save_tiny_model(model_dir, num_classes=5)
    data_dir = str(tmp_path / "data")
    list_path = five_class_dataset(data_dir, count=1)
    status = load_script("evaluate").main(["--data-dir", data_dir, "--data-list", list_path,
                                           "--restore-from", model_dir, "--num-classes", "5"])
    assert status == 0
    out = capsys.readouterr().out
    assert "\nclass_4 " in out and "background" not in out


def test_user_errors_are_clear_and_touch_nothing(voc_dataset, tiny_model, tmp_path):
    data_dir, list_path, _ = voc_dataset
    evaluate = load_script("evaluate")
    base = ["--data-dir", data_dir, "--data-list", list_path,
            "--restore-from", tiny_model.directory]
    with pytest.raises(ValueError, match="trained for 21 classes but --num-classes"):
        evaluate.main(base + ["--num-classes", "5"])
    with pytest.raises(ValueError, match=".csv or .npy"):
        evaluate.main(base + ["--save-confusion", str(tmp_path / "c.txt")])
    names_path = str(tmp_path / "names.txt")
    with open(names_path, "w") as f:
        f.write("only\ntwo\n")
    with pytest.raises(ValueError, match="has 2 names but --num-classes is 21"):
        evaluate.main(base + ["--class-names", names_path])
    label_dir = os.path.join(data_dir, "SegmentationClassAug")
    before = {n: open(os.path.join(label_dir, n), "rb").read()
              for n in os.listdir(label_dir)}
    with pytest.raises(IOError, match="would overwrite the dataset file"):
        evaluate.main(base + ["--save-dir", label_dir])
    after = {n: open(os.path.join(label_dir, n), "rb").read()
             for n in os.listdir(label_dir)}
    assert after == before
    with open(os.path.join(data_dir, "JPEGImages", "img2.jpg"), "w") as f:
        f.write("not a JPEG")
    with pytest.raises(IOError, match="img2.jpg"):
        evaluate.main(base)


def test_an_unwritable_save_confusion_is_refused_before_evaluating(
        voc_dataset, tiny_model, tmp_path, monkeypatch):
    from deeplab_resnet.evaluation import evaluate as evaluation

    def must_not_run(*args, **kwargs):
        raise AssertionError("the evaluation ran before --save-confusion was checked")
    monkeypatch.setattr(evaluation, "evaluate", must_not_run)
    data_dir, list_path, _ = voc_dataset
    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("in the way")
    base = ["--data-dir", data_dir, "--data-list", list_path,
            "--restore-from", tiny_model.directory]
    a_dir = tmp_path / "directory.csv"
    a_dir.mkdir()
    for target in (not_a_dir / "sub" / "confusion.csv", a_dir):
        with pytest.raises(IOError, match="--save-confusion"):
            load_script("evaluate").main(base + ["--save-confusion", str(target)])


def test_num_images_errors_name_what_the_caller_passed(voc_dataset, tiny_model, capsys):
    from deeplab_resnet.evaluation.evaluate import evaluate
    data_dir, list_path, _ = voc_dataset
    with pytest.raises(ValueError, match="num_images must be at least 1") as error:
        evaluate(EvalDataConfig(data_dir, list_path, num_images=0), tiny_model.directory)
    assert "--num-steps" not in str(error.value)
    with pytest.raises(SystemExit):
        load_script("evaluate").get_arguments(["--restore-from", tiny_model.npz,
                                               "--num-steps", "0"])
    assert "argument --num-steps" in capsys.readouterr().err


def test_quiet_evaluation_logs_no_progress_and_scores_the_same(voc_dataset, tiny_model,
                                                               caplog):
    """Validation during training evaluates quietly: the same confusion
    matrix, without the progress lines."""
    import logging
    import tensorflow.compat.v1 as tf
    from deeplab_resnet.evaluation.evaluate import evaluate
    data_dir, list_path, _ = voc_dataset
    data = EvalDataConfig(data_dir, list_path, num_images=3)
    caplog.set_level(logging.INFO, logger="deeplab_resnet.evaluation.evaluate")
    confusions, progress_lines = [], []
    for quiet in (False, True):
        caplog.clear()
        with tf.Graph().as_default():
            confusions.append(evaluate(data, tiny_model.directory, quiet=quiet))
        progress_lines.append([r.getMessage() for r in caplog.records
                               if r.getMessage().startswith("step ")])
    np.testing.assert_array_equal(confusions[0], confusions[1])
    assert confusions[0].sum() == 3 * 33 * 33 - np.sum(
        [np.sum(np.array(Image.open(p)) == 255) for p in
         read_labeled_image_list(data_dir, list_path)[1][:3]])
    assert [line.split(" mIoU")[0] for line in progress_lines[0]] == ["step 3/3"]
    assert progress_lines[1] == []
