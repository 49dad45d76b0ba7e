"""export.py --onnx: model.onnx in onnxruntime against the frozen graph in TensorFlow.

The tiny model has DeepLab's ASPP dilations 6/12/18/24. Without
``onnx_export._floor_div``, tf2onnx's integer FloorDiv made pool1 one row or
column short at most sizes, and 2-10% of the labels differed (the
docstring of ``onnx_export`` has the figures).
"""
import json
import os
import sys

import numpy as np
import pytest

from conftest import load_script, run_script
from deeplab_resnet import constants, onnx_export, serving
from deeplab_resnet.runtime import tf
from deeplab_resnet.testing import TINY_CONFIG, save_tiny_model

EXPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "export.py")
# (H, W): 8k + 1 as DeepLab's crops, then sizes whose pool1 input is even,
# which tf2onnx alone rounded down (320, 500, 375, 51), odd and even.
SIZES = [(321, 321), (320, 320), (500, 375), (77, 51)]
# Measured at most 6e-7 plain and 1.5e-6 with scales and flip (500x375):
# float32 rounding of the same ops in another order.
PROBS_ATOL = 1e-5
VARIANTS = {"plain": [], "scales_flip": ["--scales", "0.5,0.75,1", "--flip"]}


def needs_onnx_packages():
    for module in ("tf2onnx", "onnxruntime"):
        pytest.importorskip(module, reason="pip install -r requirements-onnx.txt")


@pytest.fixture(scope="module")
def aspp_model(tmp_path_factory):
    """The tiny model with ResNet-101's ASPP rates; its directory."""
    directory = str(tmp_path_factory.mktemp("aspp_model"))
    save_tiny_model(directory, config=TINY_CONFIG._replace(aspp_rates=(6, 12, 18, 24)))
    return directory


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def onnx_export_dir(request, aspp_model, tmp_path_factory):
    """export.py --onnx of ``aspp_model`` for each of ``VARIANTS``."""
    needs_onnx_packages()
    out = str(tmp_path_factory.mktemp("onnx") / request.param)
    assert run_script(EXPORT, ["--restore-from", aspp_model, "--output-dir", out,
                               "--onnx"] + VARIANTS[request.param]) == 0
    return out


def random_photos(seed=0):
    rng = np.random.RandomState(seed)
    return {size: rng.randint(0, 256, size + (3,)).astype(np.uint8) for size in SIZES}


def tensorflow_outputs(export_dir, photos):
    """{size: (label, probs)} of the export's frozen graph in TensorFlow."""
    graph_def = tf.GraphDef()
    with open(os.path.join(export_dir, serving.FROZEN_GRAPH_FILE), "rb") as f:
        graph_def.ParseFromString(f.read())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        image, outputs = serving.graph_tensors(graph)
        with tf.Session() as sess:
            return {size: [v[0] for v in sess.run(
                [outputs[serving.LABEL_NAME], outputs[serving.PROBS_NAME]],
                {image: photo[None]})] for size, photo in photos.items()}


def test_onnx_equals_tensorflow_at_every_size(onnx_export_dir):
    photos = random_photos()
    expected = tensorflow_outputs(onnx_export_dir, photos)
    session = onnx_export.open_session(
        os.path.join(onnx_export_dir, onnx_export.ONNX_FILE))
    agreement, worst = {}, {}
    for size, photo in photos.items():
        label, probs = onnx_export.run_onnx(session, photo)
        assert label.shape == size and label.dtype == np.uint8
        assert probs.shape == size + (constants.NUM_CLASSES,)
        agreement[size] = float(np.mean(label == expected[size][0]))
        worst[size] = float(np.abs(probs - expected[size][1]).max())
    assert all(v == 1.0 for v in agreement.values()), agreement
    assert all(v <= PROBS_ATOL for v in worst.values()), worst
    # Mixed labels, so that a disagreement would show.
    assert len(np.unique(expected[(500, 375)][0])) > 1


def test_export_info_names_the_onnx_tensors(onnx_export_dir):
    with open(os.path.join(onnx_export_dir, serving.INFO_FILE)) as f:
        info = json.load(f)["onnx"]
    dims = [1, onnx_export.HEIGHT, onnx_export.WIDTH]
    assert info == {
        "file": "model.onnx", "opset": onnx_export.OPSET,
        "inputs": {"image": {"dtype": "uint8", "shape": dims + [3]}},
        "outputs": {"label": {"dtype": "uint8", "shape": dims},
                    "probabilities": {"dtype": "float32",
                                      "shape": dims + [constants.NUM_CLASSES]}}}
    session = onnx_export.open_session(os.path.join(onnx_export_dir, info["file"]))
    for declared, tensors in ((info["inputs"], session.get_inputs()),
                              (info["outputs"], session.get_outputs())):
        assert {t.name: t.shape for t in tensors} == {
            name: spec["shape"] for name, spec in declared.items()}


def test_floor_div_handler_rounds_integers_down():
    needs_onnx_packages()
    import onnxruntime
    import tf2onnx
    numerators = np.arange(-9, 10, dtype=np.int32)
    with tf.Graph().as_default() as graph:
        x = tf.placeholder(tf.int32, [None], name="x")
        tf.identity(tf.floordiv(x, 2), name="by_2")
        tf.identity(tf.floordiv(x, -3), name="by_minus_3")
        tf.identity(tf.floordiv(tf.cast(x, tf.float32), 4.0), name="float_by_4")
    model, _ = tf2onnx.convert.from_graph_def(
        graph.as_graph_def(), input_names=["x:0"],
        output_names=["by_2:0", "by_minus_3:0", "float_by_4:0"], opset=onnx_export.OPSET,
        custom_op_handlers={"FloorDiv": (onnx_export._floor_div, [])})
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    by_2, by_minus_3, float_by_4 = session.run(None, {"x:0": numerators})
    np.testing.assert_array_equal(by_2, numerators // 2)
    np.testing.assert_array_equal(by_minus_3, numerators // -3)
    np.testing.assert_array_equal(float_by_4, numerators // 4)


@pytest.mark.parametrize("flags, reason", [
    (["--bf16"], onnx_export.REFUSED["bf16"]),
    (["--crf"], onnx_export.REFUSED["crf"]),
])
def test_onnx_refuses_bf16_and_crf_in_one_line(aspp_model, tmp_path, caplog, flags,
                                               reason):
    out = str(tmp_path / "exported")
    assert run_script(EXPORT, ["--restore-from", aspp_model, "--output-dir", out,
                               "--onnx"] + flags) == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "error: " + reason]
    assert "\n" not in reason
    assert not os.path.exists(out)


def test_onnx_without_its_packages_says_what_to_install(aspp_model, tmp_path, caplog,
                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import fails
    out = str(tmp_path / "exported")
    assert run_script(EXPORT, ["--restore-from", aspp_model, "--output-dir", out,
                               "--onnx"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "tf2onnx" in errors[0] and "pip install -r requirements-onnx.txt" in errors[0]
    assert not os.path.exists(out)
    # The TensorFlow exports themselves need neither package.
    assert load_script("export").main(["--restore-from", aspp_model,
                                       "--output-dir", out]) == 0
    with open(os.path.join(out, serving.INFO_FILE)) as f:
        assert "onnx" not in json.load(f)
