"""Caffe model reading/writing and convert.py.

Small DeepLab-style .caffemodels with random weights are written in tmp_path
(new ``layer`` and legacy V1 ``layers`` format, BatchNorm scale factor != 1)
and converted back; the .npz must equal the source weights. Wire-format
details are checked against bytes encoded by hand here, independently of
``caffe.wire``'s writer.
"""
import json
import logging
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deeplab_resnet import checkpoints, constants
from deeplab_resnet.caffe import convert as caffe_convert
from deeplab_resnet.caffe import prototxt as caffe_prototxt
from deeplab_resnet.caffe import wire as caffe_wire
from deeplab_resnet.model import ModelConfig
from helpers.caffe_models import (SCALE_FACTOR, SMALL_CLASSES, SMALL_CONFIG,
                                  assert_same_weights, load_npz, make_caffe_model)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert(model, output, config=SMALL_CONFIG, **kwargs):
    return caffe_convert.convert_caffemodel(model, output, config=config, **kwargs)


def assert_nothing_written(directory, keep):
    assert sorted(os.listdir(str(directory))) == sorted(keep)


# ------------------------------------------------- hand-made wire format
def varint(value):
    out = b""
    while True:
        low, value = value & 0x7F, value >> 7
        out += bytes([low | (0x80 if value else 0)])
        if not value:
            return out


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def test_blob_packed_unpacked_legacy_and_double_data():
    values = np.arange(6, dtype=np.float32) - 2.5
    packed_shape = field(7, 2, field(1, 2, varint(2) + varint(3)))
    unpacked_shape = field(7, 2, field(1, 0, varint(2)) + field(1, 0, varint(3)))
    packed = field(5, 2, values.astype("<f4").tobytes())
    unpacked = b"".join(field(5, 5, struct.pack("<f", v)) for v in values)
    doubles = b"".join(field(8, 1, struct.pack("<d", v)) for v in values)
    legacy = b"".join(field(n, 0, varint(d)) for n, d in zip((1, 2, 3, 4), (1, 1, 2, 3)))
    diff = field(6, 2, np.ones(6, "<f4").tobytes())
    for blob, shape in ((packed_shape + packed, (2, 3)),
                        (unpacked_shape + unpacked + diff, (2, 3)),
                        (unpacked + packed_shape, (2, 3)),
                        (packed_shape + doubles, (2, 3)),
                        (legacy + unpacked, (1, 1, 2, 3)),
                        (packed, (6,))):
        array = caffe_wire._parse_blob(blob, 0, len(blob))
        assert array.shape == shape
        np.testing.assert_array_equal(array.ravel(), values)


def test_reader_skips_unknown_fields_and_reads_v1_types():
    blob = field(7, 2, field(1, 2, varint(2))) + field(5, 2, np.ones(2, "<f4").tobytes())
    unknown = (field(10, 0, varint(1))                        # phase
               + field(5, 5, struct.pack("<f", 1.0))           # loss_weight
               + field(94, 1, struct.pack("<d", 2.0))          # some 64-bit field
               + field(106, 2, field(1, 0, varint(64))))       # convolution_param
    layer = (field(1, 2, b"conv1") + field(2, 2, b"Convolution") + unknown
             + field(3, 2, b"data") + field(4, 2, b"conv1") + field(7, 2, blob))
    v1_layer = (field(4, 2, b"relu1") + field(5, 0, varint(18))
                + field(2, 2, b"conv1") + field(3, 2, b"conv1"))
    net = caffe_wire.parse_net(field(1, 2, b"net") + field(3, 2, b"data")
                               + field(100, 2, layer) + field(2, 2, v1_layer))
    assert net.name == "net" and net.legacy
    conv, relu = net.layers
    assert (conv.name, conv.type, conv.bottoms, conv.tops) == (
        "conv1", "Convolution", ["data"], ["conv1"])
    np.testing.assert_array_equal(conv.blobs[0], [1, 1])
    assert (relu.name, relu.type, relu.blobs) == ("relu1", "ReLU", [])


@pytest.mark.parametrize("data, message", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "invalid wire type"),
    (field(100, 2, field(1, 2, b"conv1"))[:-2], "past the end"),
    (field(100, 0, varint(5)), "wire type 0 instead of 2"),
    (b"\x0a\x80", "ends inside a number"),
])
def test_parse_errors(data, message):
    with pytest.raises(caffe_wire.CaffeFormatError, match=message):
        caffe_wire.parse_net(data)


def test_prototxt_parser_reads_new_and_v1_layers(tmp_path):
    text = """# comment
name: 'x'
input: "data"
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  convolution_param { num_output: 64 kernel_size: 7 }  # trailing comment
}
layer {
\tname: "fc8"  type: "InnerProduct"
\tinner_product_param: { num_output: 1000 }
\tparam < lr_mult: 1 > param { lr_mult: 2 }
\tinclude { phase: TEST } shape: [1, 3]
}
"""
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    layers = caffe_prototxt.read_prototxt_layers(str(path))
    assert [(l["name"], l["type"], l["num_output"]) for l in layers] == [
        ("conv1", "Convolution", 64), ("fc8", "InnerProduct", 1000)]
    assert layers[0]["bottoms"] == ["data"] and layers[0]["tops"] == ["conv1"]
    path.write_text("layer { name: 'a' ")
    with pytest.raises(caffe_wire.CaffeFormatError, match="line 1"):
        caffe_prototxt.read_prototxt_layers(str(path))


def test_deploy_prototxt_is_deeplab_style_and_parses(tmp_path, tiny_config):
    _, net = caffe_convert.build_network(2, tiny_config)
    path = tmp_path / "deploy.prototxt"
    path.write_text(caffe_prototxt.deploy_prototxt(net.layer_specs))
    layers = {l["name"]: l for l in caffe_prototxt.read_prototxt_layers(str(path))}
    assert layers["bn_conv1"]["type"] == "BatchNorm"
    assert layers["scale_conv1"]["type"] == "Scale"
    assert layers["scale2a_branch1"]["bottoms"] == ["res2a_branch1"]
    assert layers["conv1_relu"]["tops"] == ["conv1"]
    assert layers["res2a_branch2a_relu"]["tops"] == ["res2a_branch2a"]
    assert layers["res2a"]["bottoms"] == ["res2a_branch1", "res2a_branch2c"]
    assert layers["res2a_relu"]["tops"] == ["res2a"]
    assert layers["res3a_branch1"]["bottoms"] == ["res2a"]
    assert layers["fc1_voc12_c0"]["bottoms"] == ["res5a"]
    assert layers["fc1_voc12_c1"]["num_output"] == 2
    assert layers["fc1_voc12"]["bottoms"] == ["fc1_voc12_c0", "fc1_voc12_c1"]


def test_committed_deploy_prototxt_is_what_the_emitter_writes():
    with open(os.path.join(REPO_ROOT, "misc", "deploy.prototxt")) as f:
        committed = f.read()
    assert committed == caffe_convert.model_prototxt(constants.NUM_CLASSES, ModelConfig())


# ------------------------------------------------------------- conversion
def test_convert_new_format_equals_source_weights(tmp_path, caplog):
    model, prototxt, weights = make_caffe_model(tmp_path)
    raw = {l.name: l for l in caffe_wire.read_caffemodel(model).layers}
    # The file really holds Caffe's layouts: OIHW weights, scaled statistics.
    assert raw["res2a_branch2b"].blobs[0].shape == (4, 4, 3, 3)
    np.testing.assert_allclose(raw["bn_conv1"].blobs[0],
                               weights["bn_conv1/mean"] * np.float32(SCALE_FACTOR),
                               rtol=1e-6)
    assert raw["bn_conv1"].blobs[2].tolist() == [np.float32(SCALE_FACTOR)]
    output = str(tmp_path / "weights.npz")
    with caplog.at_level(logging.INFO):
        result = convert(model, output, prototxt=prototxt)
    assert result.num_classes == SMALL_CLASSES and result.has_classifier
    assert result.ignored_layers == []
    converted = load_npz(output)
    assert_same_weights(converted, weights)
    _, net = caffe_convert.build_network(SMALL_CLASSES, SMALL_CONFIG)
    assert sorted(converted) == sorted(net.variables)
    assert "parsed 100%" in caplog.text


def test_v1_format_gives_identical_npz(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "v1").mkdir()
    model, _, weights = make_caffe_model(tmp_path / "new")
    v1_model, _, _ = make_caffe_model(tmp_path / "v1", legacy=True, packed=False)
    net = caffe_wire.read_caffemodel(v1_model)
    assert net.legacy
    # V1 has no BatchNorm/Scale types: those layers are recognised by blobs.
    kinds = {l.name: (l.type, caffe_wire.layer_kind(l)) for l in net.layers}
    assert kinds["bn_conv1"] == ("", "BatchNorm")
    assert kinds["scale_conv1"] == ("", "Scale")
    assert kinds["conv1"] == ("Convolution", "Convolution")
    convert(model, str(tmp_path / "new.npz"))
    convert(v1_model, str(tmp_path / "v1.npz"))
    new, v1 = load_npz(str(tmp_path / "new.npz")), load_npz(str(tmp_path / "v1.npz"))
    assert sorted(new) == sorted(v1)
    for key in new:
        np.testing.assert_array_equal(new[key], v1[key])
    assert_same_weights(v1, weights)


def test_init_model_without_classifier_converts_the_body(tmp_path, caplog):
    model, _, weights = make_caffe_model(tmp_path, with_classifier=False)
    output = str(tmp_path / "init.npz")
    with caplog.at_level(logging.INFO):
        result = convert(model, output, num_classes=5)
    assert not result.has_classifier and result.num_classes == 5
    assert_same_weights(load_npz(output), weights)
    assert "--not-restore-last" in caplog.text


def test_training_model_extras_are_ignored(tmp_path, caplog):
    model, _, weights = make_caffe_model(tmp_path)
    blob = (field(7, 2, field(1, 2, varint(2) + varint(3) + varint(1) + varint(1)))
            + field(5, 2, np.ones(6, "<f4").tobytes()))
    extras = [field(1, 2, b"conv1_res075") + field(2, 2, b"Convolution")
              + field(7, 2, blob),
              field(1, 2, b"label_shrink") + field(2, 2, b"Interp") + field(4, 2, b"label"),
              field(1, 2, b"fc1_voc12_interp") + field(2, 2, b"Interp"),
              field(1, 2, b"loss") + field(2, 2, b"SoftmaxWithLoss")]
    with open(model, "ab") as f:  # appending repeated fields is valid protobuf
        f.write(b"".join(field(100, 2, layer) for layer in extras))
    output = str(tmp_path / "out.npz")
    with caplog.at_level(logging.INFO):
        result = convert(model, output)
    assert result.ignored_layers == ["conv1_res075", "label_shrink", "fc1_voc12_interp",
                                     "loss"]
    assert "ignored 4 Caffe layers" in caplog.text
    assert_same_weights(load_npz(output), weights)


def test_drop_classifier(tmp_path):
    model, _, weights = make_caffe_model(tmp_path)
    result = convert(model, str(tmp_path / "body.npz"),
                     num_classes=7, drop_classifier=True)
    assert not result.has_classifier and result.num_classes == 7
    body = {k: v for k, v in weights.items() if not k.startswith("fc1_voc12")}
    assert_same_weights(load_npz(str(tmp_path / "body.npz")), body)


# ----------------------------------------------------------------- errors
def test_truncated_model_is_an_error_and_writes_nothing(tmp_path):
    model, _, _ = make_caffe_model(tmp_path)
    with open(model, "rb") as f:
        data = f.read()
    with open(model, "wb") as f:
        f.write(data[:int(len(data) * 0.6)])
    with pytest.raises(caffe_wire.CaffeFormatError, match="truncated"):
        convert(model, str(tmp_path / "out.npz"))
    assert_nothing_written(tmp_path, ["model.caffemodel", "model.prototxt"])


@pytest.mark.parametrize("kind", ["jpeg", "random", "empty"])
def test_non_protobuf_file_is_an_error(tmp_path, kind):
    path = str(tmp_path / "model.caffemodel")
    if kind == "jpeg":
        rng = np.random.RandomState(0)
        Image.fromarray(rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)).save(
            path, format="JPEG")
    else:
        with open(path, "wb") as f:
            f.write(np.random.RandomState(1).bytes(4096) if kind == "random" else b"")
    with pytest.raises(caffe_wire.CaffeFormatError, match="not .*a .caffemodel"):
        convert(path, str(tmp_path / "out.npz"))
    assert_nothing_written(tmp_path, ["model.caffemodel"])


def test_wrong_num_classes_is_an_error(tmp_path):
    model, _, _ = make_caffe_model(tmp_path)
    with pytest.raises(ValueError, match="has 3 classes but --num-classes is 21"):
        convert(model, str(tmp_path / "out.npz"), num_classes=21)
    assert_nothing_written(tmp_path, ["model.caffemodel", "model.prototxt"])


def test_prototxt_mismatch_is_an_error(tmp_path):
    model, _, _ = make_caffe_model(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_classes, _ = make_caffe_model(tmp_path / "other", num_classes=5)
    _, other_net, _ = make_caffe_model(
        tmp_path / "other", config=ModelConfig((1, 1, 3, 1), 4, (1, 2)), name="net")
    for prototxt, message in ((other_classes, "num_output 5 in the prototxt but 3"),
                              (other_net, "res4c_branch2a is not in the model")):
        with pytest.raises(ValueError, match=message):
            convert(model, str(tmp_path / "out.npz"),
                    prototxt=prototxt)
    assert_nothing_written(tmp_path, ["model.caffemodel", "model.prototxt", "other"])


def test_model_of_another_network_is_an_error(tmp_path):
    model, _, _ = make_caffe_model(tmp_path, config=ModelConfig((1, 1, 1, 1), 4, (1, 2)))
    with pytest.raises(ValueError, match="no weights for bn4b_branch2a/mean"):
        convert(model, str(tmp_path / "out.npz"), config=SMALL_CONFIG)
    assert_nothing_written(tmp_path, ["model.caffemodel", "model.prototxt"])


def test_existing_output_is_not_overwritten(tmp_path):
    model, _, weights = make_caffe_model(tmp_path)
    output = tmp_path / "out.npz"
    output.write_bytes(b"precious")
    with pytest.raises(IOError, match="already exists"):
        convert(model, str(output))
    assert output.read_bytes() == b"precious"
    convert(model, str(output), overwrite=True)
    assert_same_weights(load_npz(str(output)), weights)


def test_convert_script(tmp_path):
    model, prototxt, weights = make_caffe_model(tmp_path)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / constants.MODEL_CONFIG_FILE).write_text(json.dumps(SMALL_CONFIG.to_dict()))
    output = str(tmp_path / "out.npz")
    checkpoint = str(tmp_path / "ckpt" / "model.ckpt")
    command = [sys.executable, os.path.join(REPO_ROOT, "convert.py"), model,
               "--prototxt", prototxt, "--output", output, "--checkpoint", checkpoint,
               "--model-config", str(config_dir / constants.MODEL_CONFIG_FILE)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "converted %d variables (3 classes)" % len(weights) in done.stderr
    assert_same_weights(load_npz(output), weights)
    assert_same_weights(checkpoints.read_weights(checkpoint), weights)
    assert checkpoints.load_model_config(checkpoint) == (SMALL_CLASSES, SMALL_CONFIG)


@pytest.mark.slow
def test_full_resnet101_conversion_covers_every_variable(tmp_path):
    model, prototxt, weights = make_caffe_model(tmp_path, config=ModelConfig(),
                                                num_classes=constants.NUM_CLASSES)
    output = str(tmp_path / "weights.npz")
    convert(model, output, prototxt=prototxt, config=ModelConfig())
    converted = load_npz(output)
    _, net = caffe_convert.build_network(constants.NUM_CLASSES, ModelConfig())
    assert sorted(converted) == sorted(net.variables)
    assert len(converted) == 528
    assert_same_weights(converted, weights)
