"""inference.py and the prediction graph it shares with evaluate.py."""
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image
from deeplab_resnet import checkpoints
from deeplab_resnet import cli
from deeplab_resnet import constants
from deeplab_resnet.evaluation import inference as inference_loop
from deeplab_resnet.evaluation import predict
from deeplab_resnet.images import overlay
from deeplab_resnet.images import preprocess

from conftest import REPO_ROOT, load_script


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_outputs(save_dir, name, size, overlay_ext=None):
    """Mask, raw label (and overlay) exist at ``size`` (H, W) and agree."""
    mask = Image.open(os.path.join(save_dir, name + "_mask.png"))
    raw = Image.open(os.path.join(save_dir, name + "_label.png"))
    assert mask.mode == "RGB" and raw.mode == "P"
    assert mask.size[::-1] == size and raw.size[::-1] == size
    assert raw.getpalette()[:768] == constants.PALETTE.ravel().tolist()
    label = np.array(raw)
    assert label.max() < constants.NUM_CLASSES
    np.testing.assert_array_equal(np.array(mask), constants.PALETTE[label])
    if overlay_ext:
        blend = Image.open(os.path.join(save_dir, name + "_overlay." + overlay_ext))
        assert blend.size[::-1] == size
    return label


# ------------------------------------------------------------------- CLI
def test_cli_segments_every_readable_input_and_reports_the_rest(tiny_model, tmp_path):
    """One subprocess: RGBA PNG, grayscale JPEG, a glob, a missing file and a
    text file; good ones are written, bad ones named, exit status 1."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (41, 29, 4)).astype(np.uint8), "RGBA").save(
        str(photos / "rgba.png"))
    Image.fromarray(rng.randint(0, 256, (30, 44)).astype(np.uint8), "L").save(
        str(photos / "gray.jpg"))
    (photos / "notes.txt").write_text("not an image")
    before = {p: digest(str(photos / p)) for p in os.listdir(str(photos))}
    save_dir = tmp_path / "out"
    missing = str(tmp_path / "missing.jpg")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "inference.py"),
         str(photos / "rgba.png"), missing, str(photos / "notes.txt"),
         str(photos / "*.jpg"), "--model-weights", tiny_model.directory,
         "--save-dir", str(save_dir), "--save-raw", "--overlay",
         "--overlay-format", "jpg"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "missing.jpg does not exist" in result.stderr
    assert "notes.txt" in result.stderr
    assert "Traceback" not in result.stderr
    assert "image 1/3 %s 29x41" % (photos / "rgba.png") in result.stderr
    check_outputs(str(save_dir), "rgba", (41, 29), overlay_ext="jpg")
    check_outputs(str(save_dir), "gray", (30, 44), overlay_ext="jpg")
    assert sorted(os.listdir(str(save_dir))) == sorted(
        "%s_%s" % (n, k) for n in ("rgba", "gray")
        for k in ("mask.png", "label.png", "overlay.jpg"))
    assert {p: digest(str(photos / p)) for p in os.listdir(str(photos))} == before


def test_shared_sample_outputs_have_the_photo_size(tiny_model, shared_sample, tmp_path):
    inference = load_script("inference")
    save_dir = str(tmp_path / "out")
    status = inference.main([shared_sample["image"], "--model-weights", tiny_model.npz,
                             "--save-dir", save_dir, "--save-raw", "--overlay",
                             "--overlay-alpha", "0.25", "--crf"])
    assert status == 0
    photo = np.asarray(Image.open(shared_sample["image"]).convert("RGB"), np.float64)
    assert photo.shape[:2] == (500, 334)  # a portrait photo: H x W
    label = check_outputs(save_dir, "2007_000129", photo.shape[:2], overlay_ext="png")
    # Background (class 0) is left as the photo; every other class is blended.
    expected = np.where((label == 0)[..., None], photo,
                        np.rint(0.75 * photo + 0.25 * constants.PALETTE[label]))
    blend = np.asarray(Image.open(os.path.join(save_dir, "2007_000129_overlay.png")))
    assert np.abs(blend - expected).max() <= 1


def test_never_overwrites_inputs_or_earlier_outputs(tiny_model, tmp_path, caplog):
    inference = load_script("inference")
    rng = np.random.RandomState(1)
    sizes = {"x.png": (9, 11), "x_mask.png": (9, 11), "a/y.png": (6, 7),
             "b/y.png": (12, 5)}
    for name, size in sizes.items():
        os.makedirs(str(tmp_path / os.path.dirname(name)), exist_ok=True)
        Image.fromarray(rng.randint(0, 256, size + (3,)).astype(np.uint8)).save(
            str(tmp_path / name))
    before = digest(str(tmp_path / "x_mask.png"))
    # x.png's mask would replace the input x_mask.png, and b/y.png's mask the
    # one just written for a/y.png: both are refused, the others written.
    status = inference.main([str(tmp_path / n) for n in sizes] + [
        "--model-weights", tiny_model.directory, "--save-dir", str(tmp_path)])
    assert status == 1
    assert digest(str(tmp_path / "x_mask.png")) == before
    assert Image.open(str(tmp_path / "x_mask_mask.png")).size == (11, 9)
    assert Image.open(str(tmp_path / "y_mask.png")).size == (7, 6)
    assert "would overwrite an input image" in caplog.text
    assert "already written for %s" % (tmp_path / "a" / "y.png") in caplog.text


def test_expand_inputs_lists_directories_and_globs(tmp_path):
    for name in ("b.jpg", "a.PNG", "a_mask.png", "a_overlay.jpg", "readme.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    paths, problems = inference_loop.expand_inputs(
        [str(tmp_path), str(tmp_path / "*.jpg"), str(tmp_path / "readme.txt"),
         str(tmp_path / "empty"), str(tmp_path / "nothing*.png"),
         str(tmp_path / "gone.jpg")])
    assert paths == [str(tmp_path / "a.PNG"), str(tmp_path / "b.jpg"),
                     str(tmp_path / "readme.txt")]
    assert len(problems) == 3
    assert "empty" in problems[0] and "nothing*.png" in problems[1]
    assert "gone.jpg does not exist" in problems[2]


def test_weights_for_another_class_count_are_a_clear_error(tiny_model, tmp_path):
    directory, prefix, npz = tiny_model
    # Without model_config.json beside it, the classifier's shape tells.
    lone_npz = str(tmp_path / "weights.npz")
    shutil.copy(npz, lone_npz)
    for weights in (directory, prefix, npz, lone_npz):
        with pytest.raises(ValueError, match="trained for 21 classes but "
                                             "--num-classes is 5"):
            checkpoints.resolve_model(weights, 5)
    with pytest.raises(IOError, match="does not exist"):
        checkpoints.resolve_model(str(tmp_path / "nope.npz"), 21)
    inference = load_script("inference")
    photo = str(tmp_path / "p.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    with pytest.raises(ValueError, match="--num-classes 21"):
        inference.main([photo, "--model-weights", prefix, "--num-classes", "5"])


# ------------------------------------------------------- prediction graph
def test_multi_scale_and_flip_fuse_as_documented(tiny_model):
    """Outputs at the input size for odd and even sizes; MSC is the max of
    the single scales; flip is the mean with the mirrored run mirrored back."""
    images = tf.placeholder(tf.float32, [1, None, None, 3])
    path, config = checkpoints.resolve_model(tiny_model.directory, constants.NUM_CLASSES)
    build = lambda scales, flip=False: predict.build_prediction(
        images, constants.NUM_CLASSES, config, scales=scales, flip=flip)
    net, full = build((1.0,))
    half = build((0.5,))[1]
    fused = build((0.5, 1.0))[1]
    flipped = build((1.0,), flip=True)[1]
    everything = build((0.5, 0.75, 1.0), flip=True)[1]
    sess = checkpoints.open_session(net, path)
    rng = np.random.RandomState(0)
    for height, width in [(37, 51), (32, 48), (5, 7)]:
        image = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
        feed = {images: preprocess(image)}
        values = sess.run([full.logits, half.logits, fused.logits, flipped.logits,
                           everything.logits, everything.pred, everything.probs],
                          feed)
        one, small, msc, flip, both, pred, probs = (v[0] for v in values)
        mirrored = sess.run(full.logits,
                            {images: preprocess(image[:, ::-1])})[0]
        assert one.shape == (height, width, constants.NUM_CLASSES)
        assert both.shape == one.shape and pred.shape == (height, width)
        np.testing.assert_allclose(msc, np.maximum(small, one), atol=1e-5)
        np.testing.assert_allclose(flip, (one + mirrored[:, ::-1]) / 2, atol=1e-5)
        np.testing.assert_array_equal(pred, both.argmax(-1))
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    sess.close()


def test_folded_prediction_matches_the_unfolded_network(tiny_model):
    """The graph folds BatchNorm for speed; it must not change the logits."""
    images = tf.placeholder(tf.float32, [1, None, None, 3])
    path, config = checkpoints.resolve_model(tiny_model.npz, constants.NUM_CLASSES)
    with tf.variable_scope("folded"):
        folded_net, folded = predict.build_prediction(images, constants.NUM_CLASSES,
                                                      config)
    with tf.variable_scope("plain"):
        plain_net, plain = predict.build_prediction(images, constants.NUM_CLASSES, config,
                                                    fold_batchnorm=False)
    image = np.random.RandomState(2).randint(0, 256, (23, 30, 3)).astype(np.uint8)
    with tf.Session() as sess:
        for net in (folded_net, plain_net):
            # Variables live under a scope here; restore by layer name.
            net.variables = {k.split("/", 1)[1]: v for k, v in net.variables.items()}
            checkpoints.restore(sess, path, net)
        a, b = sess.run([folded.logits, plain.logits],
                        {images: preprocess(image)})
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_parse_scales():
    assert cli.parse_scales("0.5,0.75,1.0") == (0.5, 0.75, 1.0)
    for bad in ("", "a,1", "0,1", "-1"):
        with pytest.raises(ValueError, match="--scales"):
            cli.parse_scales(bad)


@pytest.mark.slow
def test_resnet101_multi_scale_flip_output_has_the_input_size():
    images = tf.placeholder(tf.float32, [1, None, None, 3])
    _, prediction = predict.build_prediction(images, constants.NUM_CLASSES,
                                             scales=(0.5, 0.75, 1.0), flip=True)
    image = np.random.RandomState(0).randint(0, 256, (97, 130, 3)).astype(np.uint8)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        pred = sess.run(prediction.pred, {images: preprocess(image)})
    assert pred.shape == (1, 97, 130)


def test_overlay_blends_classes_and_leaves_background_as_the_photo():
    image = np.full((2, 3, 3), 200, np.uint8)
    label = np.array([[0, 1, 15], [0, 0, 255]])
    blended = overlay(image, label, alpha=0.25)
    np.testing.assert_array_equal(blended[label == 0], image[label == 0])
    for class_id in (1, 15, 255):
        expected = np.rint(0.75 * 200 + 0.25 * constants.PALETTE[class_id].astype(float))
        np.testing.assert_array_equal(blended[label == class_id][0], expected)


def test_save_raw_with_more_classes_than_a_palette_is_refused_before_any_photo(tmp_path):
    from deeplab_resnet.testing import save_tiny_model
    model_dir = str(tmp_path / "model")
    os.makedirs(model_dir)
    _, npz = save_tiny_model(model_dir, num_classes=300)
    photo = str(tmp_path / "p.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    save_dir = str(tmp_path / "out")
    with pytest.raises(ValueError, match="--save-raw.*300 classes") as error:
        load_script("inference").main([photo, "--model-weights", npz, "--num-classes",
                                       "300", "--save-raw", "--save-dir", save_dir])
    assert "\n" not in str(error.value)
    assert not os.path.exists(save_dir) or os.listdir(save_dir) == []
    # Without --save-raw the same model segments the photo.
    assert load_script("inference").main([photo, "--model-weights", npz, "--num-classes",
                                          "300", "--save-dir", save_dir]) == 0
    assert os.listdir(save_dir) == ["p_mask.png"]


def test_segmenter_takes_no_crf_option(tiny_model):
    """The CRF runs in segment_photos' pool; Segmenter only predicts."""
    import inspect
    parameters = inspect.signature(predict.Segmenter).parameters
    assert "crf_params" not in parameters and "crf" not in parameters
    assert "predict" in parameters
