"""DeepLab-v2 ResNet-101: logit sizes, size of the graph, layers as released.

The expected variable and parameter counts are derived here from the
architecture (conv1, bottlenecks of width 64/128/256/512 with 4x outputs,
3/4/23/3 blocks, four biased ASPP classifiers), not read off the model.
"""
import math

import numpy as np
import pytest

import tensorflow.compat.v1 as tf
from deeplab_resnet.model import ModelConfig
from deeplab_resnet import constants
from deeplab_resnet.caffe import convert as caffe_convert
from deeplab_resnet.model import build_model


def caffe_logit_size(size):
    """conv1 7x7/2 pad 3 (floor), pool1 3x3/2 pad 1 (ceil), res3a 1x1/2 (floor)."""
    size = (size + 2 * 3 - 7) // 2 + 1
    pooled = int(math.ceil((size + 2 - 3) / 2.0)) + 1
    if (pooled - 1) * 2 >= size + 1:
        pooled -= 1
    return (pooled - 1) // 2 + 1


def test_caffe_logit_size_formula_hand_computed():
    assert caffe_logit_size(321) == 41
    assert caffe_logit_size(500) == 63 and caffe_logit_size(375) == 48
    assert caffe_logit_size(320) == 41 and caffe_logit_size(480) == 61


def test_logit_sizes_odd_and_even(tiny_config):
    images = tf.placeholder(tf.float32, [1, None, None, 3])
    _, logits = build_model(images, 2, config=tiny_config)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        # (height, width): 321x321, a 500x375 (W x H) VOC photo, 320x480.
        for height, width in ((321, 321), (375, 500), (320, 480), (33, 34), (64, 65)):
            shape = sess.run(logits, {images: np.zeros((1, height, width, 3))}).shape
            assert shape == (1, caffe_logit_size(height), caffe_logit_size(width), 2)


def expected_size(config, num_classes):
    """(variables, trainable parameters) of DeepLab-v2 from its definition."""
    counts = {"variables": 0, "params": 0}

    def conv(c_in, c_out, kernel, biased=False):
        counts["variables"] += 2 if biased else 1
        counts["params"] += kernel * kernel * c_in * c_out + (c_out if biased else 0)

    def batch_norm(channels):
        counts["variables"] += 4  # scale, offset; mean, variance not trained
        counts["params"] += 2 * channels

    conv(3, 64, 7)
    batch_norm(64)
    c_in = 64
    for stage, count in enumerate(config.blocks):
        width = config.base_depth * 2 ** stage
        for block in range(count):
            if block == 0:
                conv(c_in, 4 * width, 1)
                batch_norm(4 * width)
            for c_a, c_b, kernel in ((c_in, width, 1), (width, width, 3),
                                     (width, 4 * width, 1)):
                conv(c_a, c_b, kernel)
                batch_norm(c_b)
            c_in = 4 * width
    for _ in config.aspp_rates:
        conv(c_in, num_classes, 3, biased=True)
    return counts["variables"], counts["params"]


@pytest.fixture(scope="module")
def resnet101():
    """The full graph, built once (about 4 s), never run."""
    return caffe_convert.build_network(constants.NUM_CLASSES, ModelConfig())


def test_resnet101_variable_and_parameter_counts(resnet101):
    graph, net = resnet101
    variables, params = expected_size(ModelConfig(), constants.NUM_CLASSES)
    trainable = graph.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES)
    assert len(net.variables) == len(graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES))
    assert len(net.variables) == variables == 528
    assert sum(v.get_shape().num_elements() for v in trainable) == params == 44048532


def test_resnet101_caffe_block_names(resnet101):
    _, net = resnet101
    blocks = {name.split("_")[0][3:] for name in net.variables
              if name.startswith("res") and "_branch" in name}
    want = (["2a", "2b", "2c", "3a"] + ["3b%d" % i for i in range(1, 4)]
            + ["4a"] + ["4b%d" % i for i in range(1, 23)] + ["5a", "5b", "5c"])
    assert sorted(blocks) == sorted(want)
    assert "bn_conv1/mean" in net.variables and "bn4b22_branch2c/scale" in net.variables


def test_resnet101_layers_as_in_deeplab_prototxt(resnet101):
    """Strides, pads and dilations of the released DeepLab-v2 prototxt
    (MSRA's ResNet: res3a's stride sits in the 1x1 branch2a, not the 3x3)."""
    _, net = resnet101
    specs = {s["name"]: s for s in net.layer_specs}

    def conv(name):
        s = specs[name]
        return s["kernel"][0], s["stride"][0], s["pad"], s["dilation"], s["bias"]

    assert conv("conv1") == (7, 2, 3, 1, False)
    assert (specs["pool1"]["kernel"], specs["pool1"]["stride"], specs["pool1"]["pad"]) == (
        (3, 3), (2, 2), 1)
    assert conv("res2a_branch1") == (1, 1, 0, 1, False)
    assert conv("res3a_branch1") == (1, 2, 0, 1, False)
    assert conv("res3a_branch2a") == (1, 2, 0, 1, False)
    assert conv("res3a_branch2b") == (3, 1, 1, 1, False)
    assert conv("res3b3_branch2b") == (3, 1, 1, 1, False)
    assert conv("res4a_branch1") == (1, 1, 0, 1, False)
    assert conv("res4a_branch2a") == (1, 1, 0, 1, False)
    assert conv("res4b22_branch2b") == (3, 1, 2, 2, False)
    assert conv("res5c_branch2b") == (3, 1, 4, 4, False)
    for i, rate in enumerate((6, 12, 18, 24)):
        assert conv("fc1_voc12_c%d" % i) == (3, 1, rate, rate, True)
        assert specs["fc1_voc12_c%d" % i]["inputs"] == ["res5c_relu"]
    assert specs["fc1_voc12"]["inputs"] == ["fc1_voc12_c%d" % i for i in range(4)]
    assert specs["res4b22"]["inputs"] == ["res4b21_relu", "bn4b22_branch2c"]
