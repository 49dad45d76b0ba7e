"""The original project's documented command forms, as its users type them.

``python inference.py IMAGE CKPT``, ``convert.py MODEL`` writing the .npz
beside the model, and ``tensorboard --logdir SNAPSHOT_DIR`` finding the
training summaries.
"""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from deeplab_resnet import constants
from helpers.caffe_models import SMALL_CONFIG, assert_same_weights, load_npz, make_caffe_model
from helpers.training import run_train, train_argv, write_dataset

inference = load_script("inference")
convert = load_script("convert")


def write_photo(path, size=(13, 17)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.RandomState(0).randint(0, 256, size + (3,)).astype(
        np.uint8)).save(path)
    return path


def parse_error(argv, capsys):
    """inference.py's parser error message for ``argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        inference.get_arguments(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------- inference.py IMAGE CKPT
def test_last_argument_names_the_weights_in_each_form(tiny_model, tmp_path):
    photo = write_photo(str(tmp_path / "a.jpg"))
    missing_npz = str(tmp_path / "gone.npz")
    for weights in (tiny_model.prefix, tiny_model.prefix + ".index",
                    tiny_model.directory, tiny_model.npz, missing_npz):
        args = inference.get_arguments([photo, photo, weights])
        assert args.inputs == [photo, photo]
        assert args.restore_from == weights
    args = inference.get_arguments([photo, "--restore-from", tiny_model.npz])
    assert (args.inputs, args.restore_from) == ([photo], tiny_model.npz)


def test_images_and_image_directories_are_never_weights(tiny_model, tmp_path, capsys):
    photos = tmp_path / "photos"
    photo = write_photo(str(photos / "model.png"))
    # Even with a checkpoint index beside it, an image file is an input.
    (photos / "model.png.index").write_bytes(b"")
    for last in (photo, str(photos), str(photos / "*.png")):
        args = inference.get_arguments([last, "--model-weights", tiny_model.npz])
        assert (args.inputs, args.restore_from) == ([last], tiny_model.npz)
        message = parse_error([last], capsys)
        assert "give the weights" in message and "--model-weights" in message
        assert "%r is none of these" % last in message


def test_weights_given_twice_missing_or_alone_are_errors(tiny_model, tmp_path, capsys):
    photo = write_photo(str(tmp_path / "a.jpg"))
    message = parse_error([photo, tiny_model.prefix, "--model-weights", tiny_model.npz],
                          capsys)
    assert "given twice" in message and tiny_model.prefix in message
    message = parse_error([tiny_model.directory], capsys)
    assert "no images to segment" in message
    message = parse_error([tiny_model.npz, photo], capsys)
    assert "%r looks like weights: put it last" % tiny_model.npz in message


def test_image_then_checkpoint_writes_to_output(tiny_model, tmp_path, monkeypatch):
    """The original form, run from a working directory: outputs in ./output,
    and ``--overlay`` before the photo no longer takes the photo as its value."""
    photo = write_photo(str(tmp_path / "photos" / "street.jpg"))
    monkeypatch.chdir(str(tmp_path))
    assert inference.main(["--overlay", photo, tiny_model.prefix]) == 0
    assert sorted(os.listdir("output")) == ["street_mask.png", "street_overlay.png"]
    assert Image.open(os.path.join("output", "street_mask.png")).size == (17, 13)


def test_overlay_is_a_switch_with_a_format_flag(tiny_model, tmp_path, capsys):
    photo = write_photo(str(tmp_path / "a.jpg"))
    args = inference.get_arguments(["--overlay", photo, tiny_model.npz])
    assert args.overlay and args.overlay_format is None and args.inputs == [photo]
    args = inference.get_arguments([photo, tiny_model.npz, "--overlay",
                                    "--overlay-format", "jpg"])
    assert args.overlay and args.overlay_format == "jpg"
    message = parse_error([photo, tiny_model.npz, "--overlay-format", "jpg"], capsys)
    assert "add --overlay" in message
    message = parse_error([photo, tiny_model.npz, "--overlay", "--overlay-format",
                           "gif"], capsys)
    assert "invalid choice" in message


# ------------------------------------------------------ convert.py's default output
def write_small_config(directory):
    path = os.path.join(str(directory), constants.MODEL_CONFIG_FILE)
    with open(path, "w") as f:
        json.dump(SMALL_CONFIG.to_dict(), f)
    return path


def test_default_output_replaces_only_the_file_extension():
    assert convert.default_output("tmp/v1.2/deeplab") == "tmp/v1.2/deeplab.npz"
    assert convert.default_output("./deeplab") == "./deeplab.npz"
    assert convert.default_output("a.b/x.caffemodel") == "a.b/x.npz"


def test_convert_writes_the_npz_beside_the_model(tmp_path, monkeypatch):
    config = write_small_config(tmp_path)
    dotted = tmp_path / "v1.2"
    dotted.mkdir()
    model, _, weights = make_caffe_model(dotted, name="x")
    shutil.copy(model, str(dotted / "deeplab"))
    # Relative paths, as typed: './deeplab' from inside the dotted directory.
    monkeypatch.chdir(str(dotted))
    assert convert.main(["./deeplab", "--model-config", config]) == 0
    monkeypatch.chdir(str(tmp_path))
    assert convert.main([os.path.join("v1.2", "x.caffemodel"),
                         "--model-config", config]) == 0
    assert sorted(os.listdir(str(dotted))) == sorted(
        ["deeplab", "deeplab.npz", "x.caffemodel", "x.npz", "x.prototxt"])
    assert sorted(os.listdir(str(tmp_path))) == sorted(
        [constants.MODEL_CONFIG_FILE, "v1.2"])
    for npz in ("deeplab.npz", "x.npz"):
        assert_same_weights(load_npz(str(dotted / npz)), weights)


def test_convert_refuses_to_replace_its_own_input(tmp_path):
    model, _, _ = make_caffe_model(tmp_path, name="m")
    named_npz = str(tmp_path / "m.npz")
    os.rename(model, named_npz)
    with pytest.raises(ValueError, match="would replace the model"):
        convert.main([named_npz, "--model-config", write_small_config(tmp_path),
                      "--overwrite"])


# ----------------------------------------------------------- TensorBoard
def test_tensorboard_reads_the_training_summaries(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (pip install -r requirements.txt)")
    root = str(tmp_path / "voc")
    list_path = write_dataset(root)
    snapshots = str(tmp_path / "snapshots")
    assert run_train(train_argv(root, list_path, snapshots)) == 0
    events = event_accumulator.EventAccumulator(snapshots)
    events.Reload()
    tags = events.Tags()
    for tag in ("loss", "l2_loss", "total_loss", "accuracy", "learning_rate"):
        assert tag in tags["scalars"], tags
        values = events.Scalars(tag)
        assert [v.step for v in values] == [1, 2]
        assert all(np.isfinite(v.value) for v in values)
    totals = [v.value for v in events.Scalars("total_loss")]
    np.testing.assert_allclose(totals, [a.value + b.value for a, b in zip(
        events.Scalars("loss"), events.Scalars("l2_loss"))], rtol=1e-5)
    images = [t for t in tags["images"] if t.startswith("images")]
    assert len(images) == 2, tags["images"]  # --save-num-images 2, batch 2
    for tag in images:
        (picture,) = events.Images(tag)  # the first step's triplets
        assert picture.step == 1
        # Image, label and prediction side by side at the crop size.
        assert (picture.height, picture.width) == (33, 3 * 33)
