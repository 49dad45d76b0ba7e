"""inference.py --max-size: large photos segmented scaled down, outputs at the photo's
size; without it, a warning naming the memory a very large photo needs."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from deeplab_resnet.evaluation import inference as inference_loop
from deeplab_resnet.evaluation.predict import Segmenter


def test_fit_within_keeps_the_aspect_and_leaves_small_photos_alone():
    image = np.zeros((40, 100, 3), np.uint8)
    assert inference_loop.fit_within(image, 50).shape == (20, 50, 3)
    assert inference_loop.fit_within(image, 100) is image
    assert inference_loop.fit_within(image, None) is image
    assert inference_loop.fit_within(np.zeros((3, 1000, 3), np.uint8), 10).shape == (1, 10, 3)


def test_labels_at_is_nearest_neighbour_and_keeps_ids():
    label = np.array([[1, 2], [3, 4]], np.uint8)
    np.testing.assert_array_equal(inference_loop.labels_at(label, (4, 4)), np.array(
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], np.uint8))
    assert inference_loop.labels_at(label, (3, 5)).dtype == np.uint8
    assert set(np.unique(inference_loop.labels_at(label, (7, 9)))) == {1, 2, 3, 4}


def test_a_very_large_photo_is_named_with_the_memory_resnet101_needs():
    huge = np.empty((4000, 6000, 3), np.uint8)  # never touched: only its shape counts
    warning = inference_loop.memory_warning("big.jpg", huge)
    gib = 4000 * 6000 * inference_loop.RESNET101_BYTES_PER_PIXEL / 2.0 ** 30
    assert warning.startswith("big.jpg is 6000x4000 (24.0 megapixels): on ResNet-101 "
                              "segmenting it needs about %.1f GiB" % gib)
    assert "--max-size 2000" in warning
    assert inference_loop.memory_warning("voc.jpg", np.empty((375, 500, 3), np.uint8)) is None


def test_max_size_segments_scaled_down_and_writes_outputs_at_the_photo_size(
        tiny_model, tmp_path, caplog, monkeypatch):
    rng = np.random.RandomState(0)
    photo = rng.randint(0, 256, (45, 66, 3)).astype(np.uint8)
    path = str(tmp_path / "photo.png")
    Image.fromarray(photo).save(path)
    # As if the photo were very large.
    monkeypatch.setattr(inference_loop, "LARGE_IMAGE_BYTES", 1000)
    inference = load_script("inference")
    caplog.set_level(logging.WARNING)
    assert inference.main([path, "--model-weights", tiny_model.npz, "--save-dir",
                           str(tmp_path / "full"), "--save-raw"]) == 0
    assert "photo.png is 66x45" in caplog.text and "--max-size 2000" in caplog.text
    caplog.clear()
    assert inference.main([path, "--model-weights", tiny_model.npz, "--save-dir",
                           str(tmp_path / "small"), "--save-raw", "--max-size", "33"]) == 0
    assert "megapixels" not in caplog.text
    label = np.asarray(Image.open(os.path.join(str(tmp_path / "small"), "photo_label.png")))
    assert label.shape == (45, 66)
    segmenter = Segmenter(tiny_model.npz, 21)
    try:
        expected = segmenter.segment(inference_loop.fit_within(photo, 33))
    finally:
        segmenter.close()
    assert expected.shape == (22, 33)
    np.testing.assert_array_equal(label, inference_loop.labels_at(expected, (45, 66)))


def test_max_size_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        load_script("inference").get_arguments(["p.jpg", "--model-weights", "w.npz",
                                                "--max-size", "0"])
    assert "argument --max-size: must be at least 1, got 0" in capsys.readouterr().err
