"""export.py: frozen graph and SavedModel, loaded back with TensorFlow alone."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from conftest import load_script
from deeplab_resnet import checkpoints, constants, serving
from deeplab_resnet.evaluation import predict
from deeplab_resnet.images import preprocess
from deeplab_resnet.model import build_model

# Odd, even and tiny sizes (H, W).
SIZES = [(37, 29), (32, 48), (5, 7)]

# Runs in a fresh interpreter with plain TF2 (eager) and no project code:
# what a serving client has. argv: export dir, images .npz, results .npz.
LOAD_EXPORT = r"""
import sys
import numpy as np
import tensorflow as tf

export_dir, images_path, out_path = sys.argv[1:]
images = np.load(images_path)
results = {}
model = tf.saved_model.load(export_dir + "/saved_model")
serve = model.signatures["serving_default"]
for key in images.files:
    out = serve(image=tf.constant(images[key][None]))
    results["saved_label_" + key] = out["label"].numpy()
    results["saved_probs_" + key] = out["probabilities"].numpy()
graph_def = tf.compat.v1.GraphDef()
with open(export_dir + "/frozen_graph.pb", "rb") as f:
    graph_def.ParseFromString(f.read())
with tf.Graph().as_default() as graph:
    tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        for key in images.files:
            label, probs = sess.run(["label:0", "probabilities:0"],
                                    {"image:0": images[key][None]})
            results["frozen_label_" + key] = label
            results["frozen_probs_" + key] = probs
np.savez(out_path, **results)
"""


def random_images(seed=0):
    rng = np.random.RandomState(seed)
    return {"%dx%d" % size: rng.randint(0, 256, size + (3,)).astype(np.uint8)
            for size in SIZES}


def reference_prediction(weights, images, scales=(1.0,), flip=False, bf16=False):
    """{key: (pred, probs)} from predict's graph, fed as inference.py feeds it."""
    with tf.Graph().as_default():
        path, config = checkpoints.resolve_model(weights, constants.NUM_CLASSES)
        placeholder = tf.placeholder(tf.float32, [1, None, None, 3])
        net, prediction = predict.build_prediction(
            placeholder, constants.NUM_CLASSES, config, scales=scales, flip=flip,
            bf16=bf16)
        sess = checkpoints.open_session(net, path)
        try:
            return {key: [v[0] for v in sess.run(
                [prediction.pred, prediction.probs],
                {placeholder: preprocess(image)})]
                for key, image in images.items()}
        finally:
            sess.close()


def load_frozen(path):
    graph_def = tf.GraphDef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    return graph_def


def frozen_outputs(graph_def, images):
    """{key: (label, probs)} of an exported frozen graph, one image per run."""
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        image, outputs = serving.graph_tensors(graph)
        with tf.Session() as sess:
            return {key: [v[0] for v in sess.run(
                [outputs["label"], outputs["probabilities"]], {image: photo[None]})]
                for key, photo in images.items()}


def assert_same_prediction(outputs, reference):
    for key, (label, probs) in outputs.items():
        np.testing.assert_array_equal(label, reference[key][0])
        np.testing.assert_allclose(probs, reference[key][1], atol=1e-5, rtol=0)


def serve_in_a_fresh_process(export_dir, images, tmp_path, timeout):
    """``LOAD_EXPORT`` on {key: photo}: its results .npz, loaded."""
    np.savez(str(tmp_path / "images.npz"), **images)
    script = tmp_path / "load_export.py"
    script.write_text(LOAD_EXPORT)
    result = subprocess.run(
        [sys.executable, str(script), export_dir, str(tmp_path / "images.npz"),
         str(tmp_path / "results.npz")],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""))
    assert result.returncode == 0, result.stderr
    return np.load(str(tmp_path / "results.npz"))


def run_inference(weights, images, tmp_path, *flags):
    """inference.py --save-raw on the photos saved as PNGs: its save dir,
    holding <key>_label.png per photo."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for key, image in images.items():
        Image.fromarray(image).save(str(photos / (key + ".png")))
    save_dir = str(tmp_path / "inference")
    assert load_script("inference").main(
        [str(photos), "--model-weights", weights, "--save-dir", save_dir,
         "--save-raw"] + list(flags)) == 0
    return save_dir


def test_export_loads_in_a_fresh_process_and_matches_inference(tiny_model, tmp_path):
    directory = tiny_model.directory
    out = str(tmp_path / "exported")
    info = serving.export(directory, out)
    assert sorted(os.listdir(out)) == ["export_info.json", "frozen_graph.pb",
                                       "saved_model"]
    assert sorted(os.listdir(str(tmp_path))) == ["exported"]  # no leftovers
    images = random_images()
    served = serve_in_a_fresh_process(out, images, tmp_path, timeout=180)
    # inference.py's label PNGs for the same photos.
    save_dir = run_inference(directory, images, tmp_path)
    reference = reference_prediction(directory, images)
    classes = set()
    for key, image in images.items():
        expected_label = np.array(Image.open(os.path.join(save_dir,
                                                          key + "_label.png")))
        np.testing.assert_array_equal(expected_label, reference[key][0])
        classes.update(np.unique(expected_label).tolist())
        for form in ("saved", "frozen"):
            label = served["%s_label_%s" % (form, key)]
            probs = served["%s_probs_%s" % (form, key)]
            assert label.dtype == np.uint8 and label.shape == (1,) + image.shape[:2]
            assert probs.dtype == np.float32
            assert probs.shape == (1,) + image.shape[:2] + (constants.NUM_CLASSES,)
            np.testing.assert_array_equal(label[0], expected_label)
            np.testing.assert_allclose(probs[0], reference[key][1], atol=1e-5, rtol=0)
    assert len(classes) > 1  # mixed labels, so that a mismatch would show
    assert info["num_classes"] == constants.NUM_CLASSES
    with open(os.path.join(out, "export_info.json")) as f:
        assert json.load(f)["outputs"]["label"]["dtype"] == "uint8"


def test_exported_graphs_hold_constants_and_folded_batchnorm(tiny_model, tmp_path):
    npz = tiny_model.npz
    out = str(tmp_path / "exported")
    serving.export(npz, out)
    frozen = load_frozen(os.path.join(out, "frozen_graph.pb"))
    with tf.Session(graph=tf.Graph()) as sess:
        meta = tf.saved_model.loader.load(sess, [serving.SERVING_TAG],
                                          os.path.join(out, "saved_model"))
        assert not tf.global_variables()
    signature = meta.signature_def[serving.SIGNATURE_KEY]
    assert sorted(signature.inputs) == ["image"]
    assert sorted(signature.outputs) == ["label", "probabilities"]
    assert signature.inputs["image"].dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in signature.inputs["image"].tensor_shape.dim] == [1, -1, -1, 3]
    assert signature.outputs["probabilities"].tensor_shape.dim[3].size == 21
    with np.load(npz) as weights:
        convolutions = sum(k.endswith("/weights") for k in weights.files)
        batchnorms = sum(k.endswith("/variance") for k in weights.files)
        biased = sum(k.endswith("/biases") for k in weights.files)
    assert batchnorms > 0 and biased > 0
    for graph_def in (frozen, meta.graph_def):
        ops = [node.op for node in graph_def.node]
        assert not set(ops) & set(serving.STATE_OPS)
        assert not [op for op in ops if "BatchNorm" in op]
        assert ops.count("Conv2D") == convolutions
        # One bias per folded BatchNorm, one per biased (ASPP) convolution.
        assert ops.count("BiasAdd") == batchnorms + biased


def test_cli_bakes_in_scales_and_flip(tiny_model, tmp_path, capsys):
    directory, prefix = tiny_model.directory, tiny_model.prefix
    out = str(tmp_path / "msc")
    assert load_script("export").main(
        ["--restore-from", prefix, "--output-dir", out, "--scales", "0.5,1.0",
         "--flip"]) == 0
    assert capsys.readouterr().out.strip() == "exported %s" % out
    with open(os.path.join(out, "export_info.json")) as f:
        info = json.load(f)
    assert (info["scales"], info["flip"]) == ([0.5, 1.0], True)
    assert info["model_config"]["blocks"] == [1, 1, 1, 1]
    images = random_images(seed=1)
    reference = reference_prediction(directory, images, (0.5, 1.0), flip=True)
    single = reference_prediction(directory, images)
    outputs = frozen_outputs(load_frozen(os.path.join(out, "frozen_graph.pb")), images)
    assert_same_prediction(outputs, reference)
    for key, (_, probs) in outputs.items():
        # MSC + flip is baked in: it differs from the plain network.
        assert np.abs(probs - single[key][1]).max() > 1e-3


def test_bf16_export_matches_bf16_prediction(tiny_model, tmp_path):
    npz = tiny_model.npz
    out = str(tmp_path / "bf16")
    assert serving.export(npz, out, predict=predict.PredictConfig(bf16=True))["bf16"] is True
    graph_def = load_frozen(os.path.join(out, "frozen_graph.pb"))
    weights = [n for n in graph_def.node if n.op == "Const"
               and n.name.endswith("/weights")]
    assert weights and all(n.attr["dtype"].type == tf.bfloat16.as_datatype_enum
                           for n in weights)
    images = random_images(seed=2)
    reference = reference_prediction(npz, images, bf16=True)
    outputs = frozen_outputs(graph_def, images)
    assert all(probs.dtype == np.float32 for _, probs in outputs.values())
    assert_same_prediction(outputs, reference)


def test_never_overwrites_without_overwrite_and_replaces_atomically(
        tiny_model, tmp_path, monkeypatch):
    npz = tiny_model.npz
    out = tmp_path / "exported"
    out.mkdir()
    serving.export(npz, str(out))  # an existing empty directory is taken
    stale = out / "stale.txt"
    stale.write_text("from an older export")
    before = sorted(os.listdir(str(out)))
    script = load_script("export")
    with pytest.raises(IOError, match="already exists.*--overwrite"):
        script.main(["--restore-from", npz, "--output-dir", str(out)])
    assert sorted(os.listdir(str(out))) == before
    # --overwrite replaces an earlier export only (tests/test_export_overwrite.py).
    with pytest.raises(IOError, match="not an earlier export: it holds stale.txt"):
        serving.export(npz, str(out), overwrite=True)
    stale.unlink()
    before = sorted(os.listdir(str(out)))

    # A failure half-way leaves the old export as it was, and no debris.
    def broken(graph_def, path):
        os.makedirs(path)
        raise IOError("disk full")
    monkeypatch.setattr(serving, "write_saved_model", broken)
    with pytest.raises(IOError, match="disk full"):
        serving.export(npz, str(out), overwrite=True)
    assert sorted(os.listdir(str(out))) == before
    assert sorted(os.listdir(str(tmp_path))) == ["exported"]
    monkeypatch.undo()

    assert script.main(["--restore-from", npz, "--output-dir", str(out),
                        "--overwrite"]) == 0
    assert sorted(os.listdir(str(out))) == ["export_info.json", "frozen_graph.pb",
                                            "saved_model"]
    assert sorted(os.listdir(str(tmp_path))) == ["exported"]

    with pytest.raises(IOError, match="is a file"):
        serving.export(npz, str(stale.parent / "export_info.json"), overwrite=True)
    with pytest.raises(ValueError, match="trained for 21 classes"):
        serving.export(npz, str(tmp_path / "five"), num_classes=5)
    with pytest.raises(IOError, match="does not exist"):
        serving.export(str(tmp_path / "missing.npz"), str(tmp_path / "none"))
    assert sorted(os.listdir(str(tmp_path))) == ["exported"]


@pytest.mark.slow
def test_resnet101_export_matches_prediction(tmp_path):
    """The published architecture (random weights) exports and serves at any size."""
    npz = str(tmp_path / "resnet101.npz")
    with tf.Graph().as_default():
        net, _ = build_model(tf.placeholder(tf.float32, [1, None, None, 3]),
                             constants.NUM_CLASSES)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            np.savez(npz, **sess.run(net.variables))
    out = str(tmp_path / "exported")
    serving.export(npz, out)
    rng = np.random.RandomState(0)
    images = {"97x130": rng.randint(0, 256, (97, 130, 3)).astype(np.uint8)}
    reference = reference_prediction(npz, images)
    outputs = frozen_outputs(load_frozen(os.path.join(out, "frozen_graph.pb")), images)
    assert outputs["97x130"][0].shape == (97, 130)
    assert_same_prediction(outputs, reference)


def blocky_images(seed=3):
    """Photos of a few flat colour regions plus noise, where the CRF's
    bilateral kernel has edges to follow (white noise gives it none)."""
    rng = np.random.RandomState(seed)
    images = {}
    for height, width in SIZES[:2]:
        colours = rng.randint(0, 256, (3, 3, 3))
        rows = np.minimum(np.arange(height) * 3 // height, 2)
        cols = np.minimum(np.arange(width) * 3 // width, 2)
        image = colours[rows[:, None], cols[None, :]] + rng.randint(-8, 9, (height, width, 3))
        images["%dx%d" % (height, width)] = np.clip(image, 0, 255).astype(np.uint8)
    return images


def test_crf_export_matches_inference_with_the_tensorflow_crf_in_a_fresh_process(
        tiny_model, tmp_path):
    from deeplab_resnet import crf
    from deeplab_resnet.crf import backend_tf
    directory = tiny_model.directory
    out = str(tmp_path / "exported")
    # A strong bilateral kernel, so that the CRF visibly changes the labels.
    flags = ["--crf", "--crf-iters", "5", "--crf-bi-w", "10", "--crf-bi-xy-std", "20",
             "--crf-bi-rgb-std", "10"]
    params = crf.CrfConfig(5, 3.0, 3.0, 10.0, 20.0, 10.0)
    assert load_script("export").main(
        ["--restore-from", directory, "--output-dir", out] + flags) == 0
    with open(os.path.join(out, "export_info.json")) as f:
        info = json.load(f)
    assert info["crf"] == params.as_dict()
    images = blocky_images()
    served = serve_in_a_fresh_process(out, images, tmp_path, timeout=300)
    save_dir = run_inference(directory, images, tmp_path, "--crf-backend", "tensorflow",
                             *flags)
    network = reference_prediction(directory, images)
    changed = []
    with backend_tf.TensorFlowCrf(params) as tf_crf:
        for key, image in images.items():
            marginals = tf_crf.marginals(image, network[key][1])
            expected_label = np.array(Image.open(os.path.join(save_dir,
                                                              key + "_label.png")))
            np.testing.assert_array_equal(expected_label, marginals.argmax(-1))
            changed.append(np.mean(expected_label != network[key][0]))
            for form in ("saved", "frozen"):
                label = served["%s_label_%s" % (form, key)]
                probs = served["%s_probs_%s" % (form, key)]
                assert label.dtype == np.uint8 and label.shape == (1,) + image.shape[:2]
                np.testing.assert_array_equal(label[0], expected_label)
                np.testing.assert_allclose(probs[0], marginals, atol=1e-5, rtol=0)
    # The CRF is really in the graph: it moved labels of the plain network.
    assert max(changed) > 0.02, changed
