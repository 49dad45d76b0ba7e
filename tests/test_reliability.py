"""Never trap or lose a run: sound snapshots only, unreadable checkpoints and images,
failed saves, interrupted saves, EXIF photos, and the messages for each."""
import logging
import os
import re

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from conftest import load_script, save_tiny_model
from deeplab_resnet import checkpoints, constants, files
from deeplab_resnet.data import label_checks, label_files
from deeplab_resnet.data.reader import load_pair
from deeplab_resnet.training import snapshots as training_snapshots
from deeplab_resnet.training import soundness
from helpers.training import run_train, train_argv, write_dataset

EXIF_ORIENTATION = 0x0112


def errors_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def snapshots_of(snapshot_dir):
    return checkpoints.snapshot_prefixes(snapshot_dir)


def write_scaled_snapshot(source, target, factor):
    """A copy of checkpoint ``source`` at ``target`` with every float tensor
    times ``factor``, recorded as the directory's newest snapshot."""
    tensors = checkpoints.read_checkpoint(source)
    with tf.Graph().as_default():
        variables = {name: tf.Variable(value * factor if value.dtype.kind == "f"
                                       else value, name="v%d" % i)
                     for i, (name, value) in enumerate(sorted(tensors.items()))}
        saver = tf.train.Saver(variables)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            saver.save(sess, target, write_meta_graph=False)
    directory = os.path.dirname(target)
    tf.train.update_checkpoint_state(
        directory, target, all_model_checkpoint_paths=snapshots_of(directory))


# ------------------------------------------------------------- snapshots
def test_divergence_keeps_only_sound_snapshots_and_resume_steps_back(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    # A learning rate of 1e6 diverges within steps; every step is a snapshot.
    status = run_train(train_argv(data_dir, list_path, snapshot_dir, "--learning-rate",
                                  "1e6", "--num-steps", "6", "--save-pred-every", "1",
                                  "--keep-checkpoints", "0"))
    assert status == 2
    kept = snapshots_of(snapshot_dir)
    error = errors_of(caplog)[-1]
    assert "weights became non-finite or too large" in error
    # Each kept snapshot is sound next to the one before (or the start).
    norms = [soundness.weight_statistics(checkpoints.read_weights(p)) for p in kept]
    for i, (norm, largest, finite) in enumerate(norms):
        reference = norms[i - 1][0] if i else None
        assert soundness.soundness_problem(norm, largest, finite, reference) is None, \
            kept[i]
    if kept:
        assert error.endswith("%s. That is the last sound snapshot: rerunning resumes "
                              "from it." % kept[-1])
    else:
        assert error.endswith("after its start.")

    # A diverged snapshot written by an older version, or copied in: resuming
    # steps back over it to the newest sound one.
    if not kept:
        assert run_train(train_argv(data_dir, list_path, snapshot_dir,
                                    "--num-steps", "1", "--save-pred-every", "1")) == 0
        kept = snapshots_of(snapshot_dir)
    sound = kept[-1]
    step = int(sound.rsplit("-", 1)[1])
    diverged = os.path.join(snapshot_dir, "model.ckpt-%d" % (step + 1))
    write_scaled_snapshot(sound, diverged, 1e12)
    caplog.clear()
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--learning-rate",
                                "1e-4", "--num-steps", str(step + 2))) == 0
    assert "%s is not a sound snapshot" % diverged in caplog.text
    assert re.search(r"resuming from %s, the newest sound snapshot, instead of %s\. "
                     r".*lower --learning-rate" % (re.escape(sound), re.escape(diverged)),
                     caplog.text)
    assert "resuming from %s at step %d" % (sound, step) in caplog.text


def test_the_growth_limit_is_100x_the_last_sound_norm():
    """docs/training.md: 'their norm at most 100x that of the last sound weights'."""
    assert soundness.GROWTH_LIMIT == 100.0
    assert soundness.soundness_problem(99.9, 1.0, True, reference_norm=1.0) is None
    problem = soundness.soundness_problem(100.1, 1.0, True, reference_norm=1.0)
    assert problem is not None and "at most 100x" in problem
    assert soundness.soundness_problem(1e3, 1.0, True) is None  # no reference yet


def test_a_negative_keep_checkpoints_cannot_delete_every_snapshot(capsys):
    train_script = load_script("train")
    with pytest.raises(SystemExit) as exit_info:
        train_script.get_arguments(["--keep-checkpoints", "-1"])
    assert exit_info.value.code == 2
    assert "--keep-checkpoints: must be 0 or more, got -1" in capsys.readouterr().err
    assert train_script.get_arguments(["--keep-checkpoints", "0"]).keep_checkpoints == 0
    with tf.Graph().as_default():
        tf.Variable(1.0)
        with pytest.raises(ValueError, match="would delete every snapshot"):
            training_snapshots.make_saver(-1)


def test_a_truncated_snapshot_is_passed_over_with_a_warning(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "2",
                                "--save-pred-every", "1")) == 0
    first, second = snapshots_of(snapshot_dir)
    data = second + ".data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    # Evaluation, inference and export resolve a directory the same way.
    assert checkpoints.resolve_checkpoint(snapshot_dir) == first
    assert "using %s, the newest checkpoint in %s that reads in full" % (
        first, snapshot_dir) in caplog.text
    # Named explicitly, the truncated one is a one-line error.
    with pytest.raises(IOError, match=r"Cannot read the checkpoint %s \(.*\): it is "
                       r"truncated or corrupt" % re.escape(second)):
        checkpoints.read_weights(second)
    caplog.clear()
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "3")) == 0
    assert "resuming from %s at step 1" % first in caplog.text


def test_a_failed_save_ends_with_one_line_and_keeps_the_last_snapshot(
        tmp_path, caplog, monkeypatch):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "1",
                                "--save-pred-every", "1")) == 0
    good = tf.train.latest_checkpoint(snapshot_dir)
    before = {n: os.path.getsize(os.path.join(snapshot_dir, n))
              for n in os.listdir(snapshot_dir) if n.startswith(("model.ckpt", "checkpoint"))}

    def full_disk(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, "%s/model.ckpt-2.data-00000-of-00001.tempstate1; No space left "
            "on device\n\t [[{{node save/SaveV2}}]]" % snapshot_dir)
    monkeypatch.setattr(tf.train.Saver, "save", full_disk)
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "2",
                                "--save-pred-every", "1")) == 2
    errors = errors_of(caplog)
    assert len(errors) == 1 and "\n" not in errors[0]
    assert re.search(r"Could not write the snapshot of step 2 to %s \(.*No space left on "
                     r"device\)\. %s is intact\. Free some space" % (
                         re.escape(snapshot_dir), re.escape(good)), errors[0]), errors
    assert tf.train.latest_checkpoint(snapshot_dir) == good
    assert {n: os.path.getsize(os.path.join(snapshot_dir, n)) for n in before} == before


def test_files_left_by_an_interrupted_save_are_removed_at_the_next_start(tmp_path, caplog):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    os.makedirs(snapshot_dir)
    orphans = ["model.ckpt-9.data-00000-of-00001.tempstate8171962543316437265",
               ".model_config.json.tmp4242"]
    for name in orphans:
        with open(os.path.join(snapshot_dir, name), "wb") as f:
            f.write(b"\0" * 1000)
    unrelated = os.path.join(snapshot_dir, "notes.txt")
    with open(unrelated, "w") as f:
        f.write("mine")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "1")) == 0
    names = os.listdir(snapshot_dir)
    assert not set(orphans) & set(names) and "notes.txt" in names
    assert "removed 2 file(s) an interrupted save left in %s" % snapshot_dir in caplog.text


# ---------------------------------------------------------------- images
def truncate(path, keep=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def test_a_truncated_jpeg_is_caught_before_step_1(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    bad = os.path.join(data_dir, "JPEGImages", "img2.jpg")
    truncate(bad)
    # Its header still reads: only a full decode finds it.
    assert label_files.image_size(bad) == (33, 33)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir)) == 2
    errors = errors_of(caplog)
    assert len(errors) == 1 and re.search(r"Cannot read image %s \(.*truncated" %
                                          re.escape(bad), errors[0]), errors
    assert not any(r.getMessage().startswith("step ") for r in caplog.records)
    assert not os.path.exists(snapshot_dir)

    caplog.clear()
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "3",
                                "--skip-bad-images")) == 0
    assert re.search(r"Cannot read image %s" % re.escape(bad), caplog.text)
    assert tf.train.latest_checkpoint(snapshot_dir).endswith("model.ckpt-3")


def test_a_file_that_fails_mid_run_is_skipped_with_skip_bad_images(
        tmp_path, caplog, monkeypatch):
    """Files beyond the checked sample: the reader logs the line and goes on."""
    caplog.set_level(logging.INFO)
    from deeplab_resnet.training import loop
    monkeypatch.setattr(loop, "CHECKED_LABELS", 0)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    truncate(os.path.join(data_dir, "JPEGImages", "img1.jpg"))
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "4",
                                "--skip-bad-images")) == 0
    skipped = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("skipping line")]
    assert len(skipped) == 1 and re.search(
        r"skipping line 2 of %s \(--skip-bad-images\): Cannot read image .*img1\.jpg"
        % re.escape(list_path), skipped[0]), skipped


def exif_photo(path, upright, orientation):
    """Save ``upright`` (RGB [H, W, 3]) as raw pixels that viewers turn back
    upright through EXIF ``orientation`` (3: 180 degrees, 6: stored turned
    90 degrees counter-clockwise, 8: clockwise). PNG, so pixels stay exact."""
    raw = {3: np.rot90(upright, 2), 6: np.rot90(upright, 1),
           8: np.rot90(upright, -1)}[orientation]
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(raw)).save(path, exif=exif)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_inference_applies_exif_orientation(tiny_model, tmp_path, orientation):
    inference = load_script("inference")
    rng = np.random.RandomState(orientation)
    upright = rng.randint(0, 256, (40, 29, 3)).astype(np.uint8)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(upright).save(str(photos / "upright.png"))
    exif_photo(str(photos / "phone.png"), upright, orientation)
    save_dir = str(tmp_path / "out")
    assert inference.main([str(photos), "--model-weights", tiny_model.npz, "--save-dir",
                           save_dir, "--save-raw", "--overlay"]) == 0
    masks = {name: np.array(Image.open(os.path.join(save_dir, name + "_label.png")))
             for name in ("upright", "phone")}
    assert masks["phone"].shape == (40, 29)
    np.testing.assert_array_equal(masks["phone"], masks["upright"])
    overlay = np.array(Image.open(os.path.join(save_dir, "phone_overlay.png")))
    background = masks["phone"] == 0
    np.testing.assert_array_equal(overlay[background], upright[background])


def test_training_pairs_follow_the_label_grid_of_an_exif_photo(tmp_path):
    """VOC's convention: labels are drawn on the raw pixels. A label drawn on
    the upright photo (a tool that applied EXIF) is read with it upright."""
    rng = np.random.RandomState(0)
    upright = rng.randint(0, 256, (30, 20, 3)).astype(np.uint8)
    photo = str(tmp_path / "phone.png")
    exif_photo(photo, upright, 6)
    raw = np.array(Image.open(photo))
    for label_shape, expected in (((20, 30), raw), ((30, 20), upright)):
        label_path = str(tmp_path / ("label_%dx%d.png" % label_shape))
        files.save_label(np.zeros(label_shape, np.uint8), label_path)
        image, label = load_pair(photo, label_path, num_classes=21)
        np.testing.assert_array_equal(image, expected)
        _, problems = label_checks.inspect_pair((photo, label_path), 21)
        assert problems == []
    # A swapped label with no EXIF tag is still reported, with the likely cause.
    plain = str(tmp_path / "plain.png")
    Image.fromarray(raw).save(plain)
    _, problems = label_checks.inspect_pair((plain, str(tmp_path / "label_30x20.png")), 21)
    assert [p.kind for p in problems] == ["size"] and "EXIF" in problems[0].fix


# -------------------------------------------------------------- messages
def test_weight_flags_pointing_at_the_wrong_file_say_what_it_is(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(IOError, match="notes.txt' is a file but not weights: give the "
                       ".npz written by convert.py, a checkpoint prefix"):
        checkpoints.resolve_checkpoint(str(text))
    index = tmp_path / "x.index"
    index.write_text("an index in name only")
    with pytest.raises(IOError, match=r"Cannot read the checkpoint .*x \(.*\): it is "
                       r"truncated or corrupt .*or not a TensorFlow checkpoint"):
        checkpoints.read_weights(str(index))
    bad_npz = tmp_path / "half.npz"
    bad_npz.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(IOError, match="is not a weight file written by convert.py"):
        checkpoints.read_weights(str(bad_npz))


def test_weights_of_another_architecture_fail_on_the_body_first(tmp_path, caplog):
    """Not a warning about 'another number of classes' first."""
    from deeplab_resnet.model import ModelConfig
    _, npz = save_tiny_model(str(tmp_path / "other"), num_classes=5,
                             config=ModelConfig(blocks=(1, 1, 2, 1), base_depth=4,
                                                aspp_rates=(1, 2)))
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    assert run_train(train_argv(data_dir, list_path, str(tmp_path / "snap"),
                                "--restore-from", npz)) == 2
    assert not [r for r in caplog.records if r.levelno == logging.WARNING
                and "another number of classes" in r.getMessage()]
    assert re.search(r"The weights do not match the network \(weights with no matching "
                     r"variable: bn4b_branch2a", errors_of(caplog)[0])


def test_an_unreadable_photo_says_to_leave_it_out_of_the_inputs(tiny_model, tmp_path,
                                                                caplog):
    inference = load_script("inference")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    assert inference.main([str(broken), "--model-weights", tiny_model.npz,
                           "--save-dir", str(tmp_path / "out")]) == 1
    errors = errors_of(caplog)
    assert any("Cannot read image %s" % broken in e and
               "leave it out of the inputs" in e and "list" not in e for e in errors)


def test_one_mask_among_good_labels_is_a_warning(tmp_path):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    label = os.path.join(data_dir, "SegmentationClassAug", "img3.png")
    mask = np.zeros((33, 33), np.uint8)
    mask[5:20, 8:25] = constants.IGNORE_LABEL
    Image.fromarray(mask).save(label)
    pairs = list(zip(*[[os.path.join(data_dir, d, "img%d.%s" % (i, e)) for i in range(4)]
                       for d, e in (("JPEGImages", "jpg"), ("SegmentationClassAug",
                                                           "png"))]))
    result = label_checks.scan_labels(pairs, constants.NUM_CLASSES, log_interval=None)
    assert result.problems == []
    assert [(w.kind, w.path) for w in result.warnings] == [("mask", label)]
    assert "holds only 0 and 255 (the ignore label" in result.warnings[0].message
    report = label_checks.format_report(result, list(constants.VOC_CLASSES))
    assert re.search(r"warning \(mask\), 1 label\(s\):\n  Label .*img3\.png holds only "
                     r"0 and 255.*\n  fix: If it is a binary object mask", report)
    assert list_path


def test_a_snapshot_dir_without_model_config_resumes_by_the_checkpoints_shapes(
        tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "1")) == 0
    config_file = os.path.join(snapshot_dir, constants.MODEL_CONFIG_FILE)
    os.remove(config_file)
    # Flags of another network: the shapes say which, not 'ResNet-101'.
    caplog.clear()
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "2",
                                "--num-classes", "30")) == 2
    error = errors_of(caplog)[-1]
    assert "has no %s" % constants.MODEL_CONFIG_FILE in error
    assert "%d classes, against" % constants.NUM_CLASSES in error
    assert "30 classes" in error and "aspp_rates" not in error
    # The flags it was trained with: it resumes, and the file is back.
    caplog.clear()
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "2")) == 0
    assert re.search(r"resuming from .*model.ckpt-1 at step 1", caplog.text)
    assert os.path.isfile(config_file)


@pytest.mark.parametrize("breakage", ["missing list", "empty list", "missing image",
                                      "label size"])
def test_a_bad_val_list_fails_before_step_1(tmp_path, caplog, breakage):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    val_dir = str(tmp_path / "val")
    val_list = write_dataset(val_dir, count=2)
    if breakage == "missing list":
        os.remove(val_list)
    elif breakage == "empty list":
        open(val_list, "w").close()
    elif breakage == "missing image":
        os.remove(os.path.join(val_dir, "JPEGImages", "img1.jpg"))
    else:
        label = os.path.join(val_dir, "SegmentationClassAug", "img0.png")
        Image.open(label).resize((20, 20)).save(label)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--val-list", val_list,
                                "--val-data-dir", val_dir, "--val-every", "1000")) == 2
    error = errors_of(caplog)[-1]
    assert "--val-list" in error and "--data-list" not in error, error
    if breakage == "missing image":
        assert "--val-data-dir" in error and "img1.jpg" in error
    assert "step 1/" not in caplog.text
    assert tf.train.latest_checkpoint(snapshot_dir) is None


@pytest.mark.parametrize("flag, value, message", [
    ("--learning-rate", "nan", "must be a finite number, got 'nan'"),
    ("--learning-rate", "inf", "must be a finite number, got 'inf'"),
    ("--learning-rate", "-1", "must be 0 or more"),
    ("--momentum", "nan", "must be a finite number, got 'nan'"),
    ("--power", "-1", "must be 0 or more"),
    ("--weight-decay", "-0.0005", "must be 0 or more"),
    ("--save-num-images", "-2", "must be 0 or more, got -2"),
    ("--step-timeout", "0", "must be more than 0"),
])
def test_solver_flags_that_make_no_sense_are_refused_at_parse_time(capsys, flag, value,
                                                                    message):
    train_script = load_script("train")
    with pytest.raises(SystemExit) as exit_info:
        train_script.get_arguments([flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument %s: %s" % (flag, message) in err, err
