"""Layer numerics against Caffe's definitions, computed here with numpy.

Caffe pads explicitly and rounds pooled sizes up (pooling_layer.cpp), which
TF's 'SAME' only matches for some sizes, so odd and even sizes are both run.
"""
import math

import numpy as np
import pytest

import tensorflow.compat.v1 as tf
from deeplab_resnet.layer_ops import BN_EPSILON, caffe_pool_output_size, frozen_batch_norm
from deeplab_resnet.network import Network
from deeplab_resnet import checkpoints
from deeplab_resnet import constants
from deeplab_resnet.model import build_model
from deeplab_resnet.testing import random_weights


class OneLayer(Network):
    """A network whose ``setup`` is the callable passed as ``config``."""

    def setup(self):
        self.config(self)


def caffe_pooled_size(size, kernel, stride, pad):
    """pooling_layer.cpp: ceil, then drop a last window starting in the pad."""
    pooled = int(math.ceil(float(size + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def numpy_max_pool(x, kernel, stride, pad):
    """Caffe's MAX pooling loop on [H, W, C]: windows clipped to the image."""
    height, width = x.shape[:2]
    out_h = caffe_pooled_size(height, kernel, stride, pad)
    out_w = caffe_pooled_size(width, kernel, stride, pad)
    out = np.empty((out_h, out_w, x.shape[2]), x.dtype)
    for i in range(out_h):
        h0 = max(i * stride - pad, 0)
        h1 = min(i * stride - pad + kernel, height)
        for j in range(out_w):
            w0 = max(j * stride - pad, 0)
            w1 = min(j * stride - pad + kernel, width)
            out[i, j] = x[h0:h1, w0:w1].max(axis=(0, 1))
    return out


def numpy_conv(x, w, stride, pad, dilation):
    """Caffe's convolution (cross-correlation, zero padding) on [H, W, C]."""
    k_h, k_w = w.shape[:2]
    padded = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    out_h = (x.shape[0] + 2 * pad - (dilation * (k_h - 1) + 1)) // stride + 1
    out_w = (x.shape[1] + 2 * pad - (dilation * (k_w - 1) + 1)) // stride + 1
    out = np.zeros((out_h, out_w, w.shape[3]), np.float64)
    for i in range(k_h):
        for j in range(k_w):
            patch = padded[i * dilation:i * dilation + stride * (out_h - 1) + 1:stride,
                           j * dilation:j * dilation + stride * (out_w - 1) + 1:stride]
            out += patch @ w[i, j]
    return out


def test_pooled_sizes_hand_computed():
    # DeepLab's pool1 (3x3/2, pad 1) after conv1 of a 321 / 320 / 500 input.
    assert caffe_pool_output_size(161, 3, 2, 1) == 81
    assert caffe_pool_output_size(160, 3, 2, 1) == 81
    assert caffe_pool_output_size(250, 3, 2, 1) == 126
    # Ceil, not floor: (6 - 3) / 2 = 1.5 -> 2 steps -> 3 outputs.
    assert caffe_pool_output_size(6, 3, 2, 0) == 3
    # The last window would start in the right pad: dropped.
    assert caffe_pool_output_size(5, 2, 3, 1) == 2


@pytest.mark.parametrize("kernel, stride, pad", [(3, 2, 1), (3, 2, 0), (2, 2, 1),
                                                 (2, 3, 1), (3, 3, 1)])
def test_max_pool_matches_caffe_for_odd_and_even_sizes(kernel, stride, pad):
    images = tf.placeholder(tf.float32, [1, None, None, 2])
    net = OneLayer({"data": images}, 1, config=lambda n: n.feed("data").max_pool(
        kernel, kernel, stride, stride, padding=pad, name="pool"))
    rng = np.random.RandomState(0)
    with tf.Session() as sess:
        for height, width in ((4, 5), (7, 6), (8, 8), (9, 11), (12, 13)):
            # All negative: zero padding instead of -inf would show.
            x = -rng.uniform(1, 2, (height, width, 2)).astype(np.float32)
            got = sess.run(net.layers["pool"], {images: x[None]})[0]
            assert got.shape[:2] == (caffe_pool_output_size(height, kernel, stride, pad),
                                     caffe_pool_output_size(width, kernel, stride, pad))
            np.testing.assert_array_equal(got, numpy_max_pool(x, kernel, stride, pad))


@pytest.mark.parametrize("kernel, stride, pad, dilation", [
    (7, 2, 3, 1), (1, 2, 0, 1), (3, 2, 1, 1), (3, 1, 2, 2), (3, 1, 5, 5)])
def test_conv_with_explicit_padding_matches_caffe(kernel, stride, pad, dilation):
    images = tf.placeholder(tf.float32, [1, None, None, 3])
    net = OneLayer({"data": images}, 1, config=lambda n: n.feed("data").conv(
        kernel, kernel, 4, stride, stride, padding=pad, dilation=dilation,
        relu=False, name="conv"))
    rng = np.random.RandomState(1)
    w = rng.randn(kernel, kernel, 3, 4).astype(np.float32)
    b = rng.randn(4).astype(np.float32)
    with tf.Session() as sess:
        net.assign_weights({"conv/weights": w, "conv/biases": b}, sess)
        for size in ((10, 12), (11, 13)):
            x = rng.randn(*size, 3).astype(np.float32)
            got = sess.run(net.layers["conv"], {images: x[None]})[0]
            want = numpy_conv(x.astype(np.float64), w, stride, pad, dilation) + b
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_batch_norm_inference_matches_numpy():
    images = tf.placeholder(tf.float32, [1, 5, 6, 3])
    net = OneLayer({"data": images}, 1, config=lambda n: n.feed("data")
                   .batch_normalization(relu=True, name="bn"))
    rng = np.random.RandomState(2)
    params = {"bn/mean": rng.randn(3), "bn/variance": rng.uniform(0.001, 2, 3),
              "bn/scale": rng.randn(3), "bn/offset": rng.randn(3)}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    x = rng.randn(1, 5, 6, 3).astype(np.float32)
    with tf.Session() as sess:
        net.assign_weights(params, sess)
        got = sess.run(net.layers["bn"], {images: x})
    want = np.maximum(0, (x - params["bn/mean"]) / np.sqrt(params["bn/variance"] + 1e-5)
                      * params["bn/scale"] + params["bn/offset"])
    assert BN_EPSILON == 1e-5  # Caffe's BatchNorm default, DeepLab keeps it.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_folded_batchnorm_gives_the_same_logits(tmp_path, tiny_config):
    rng = np.random.RandomState(3)
    x = (rng.uniform(0, 255, (1, 41, 38, 3)) - constants.IMG_MEAN).astype(np.float32)
    path = str(tmp_path / "weights.npz")
    logits = {}
    for fold in (False, True):
        graph = tf.Graph()
        with graph.as_default():
            images = tf.placeholder(tf.float32, [1, None, None, 3])
            net, output = build_model(images, 4, config=tiny_config,
                                      fold_batchnorm=fold)
            with tf.Session() as sess:
                if not fold:
                    np.savez(path, **random_weights(net, seed=3))
                checkpoints.restore(sess, path, net)
                logits[fold] = sess.run(output, {images: x})
    assert "bn_conv1/bias" in net.variables and "bn_conv1/mean" not in net.variables
    error = np.abs(logits[True] - logits[False]).max() / np.abs(logits[False]).max()
    assert error < 1e-5


def test_assign_weights_lists_missing_extra_and_mismatched(tiny_config):
    images = tf.placeholder(tf.float32, [1, None, None, 3])
    net, _ = build_model(images, 3, config=tiny_config)
    weights = random_weights(net)
    del weights["bn2a_branch2b/variance"]
    weights["res9z_branch2a/weights"] = np.zeros((1, 1, 2, 2), np.float32)
    weights["fc1_voc12_c1/biases"] = np.zeros(5, np.float32)
    with tf.Session() as sess:
        with pytest.raises(ValueError) as error:
            net.assign_weights(weights, sess)
        message = str(error.value)
        assert "weights with no matching variable: res9z_branch2a/weights" in message
        assert "variables with no weights: bn2a_branch2b/variance" in message
        assert "shape mismatches: fc1_voc12_c1/biases: file (5,), network (3,)" in message
        del weights["res9z_branch2a/weights"]
        # The classifier may be skipped and missing entries left initialised.
        sess.run(tf.global_variables_initializer())
        net.assign_weights(weights, sess, ignore_missing=True, skip=("fc1_voc12_c1",))
        np.testing.assert_array_equal(sess.run(net.variables["conv1/weights"]),
                                      weights["conv1/weights"])
        assert sess.run(net.variables["bn2a_branch2b/variance"]).tolist() == [1.0] * 4


def test_frozen_batch_norm_gradients_equal_tensorflows_own():
    """The one-multiply gradient against TensorFlow's FusedBatchNormGradV3."""
    rng = np.random.RandomState(0)
    c = 7
    x0 = rng.normal(size=(2, 5, 6, c)).astype(np.float32)
    dy0 = rng.normal(size=x0.shape).astype(np.float32)
    stats = [rng.uniform(0.5, 2, c), rng.normal(size=c), rng.normal(size=c),
             rng.uniform(0.1, 3, c)]
    scale, offset, mean, variance = [tf.constant(v.astype(np.float32)) for v in stats]
    results = {}
    with tf.Session() as sess:
        for dtype in (tf.float32, tf.bfloat16):
            x = tf.cast(tf.placeholder_with_default(x0, x0.shape), dtype)
            dy = tf.cast(tf.constant(dy0), dtype)
            ours = frozen_batch_norm(x, scale, offset, mean, variance)
            theirs, _, _ = tf.nn.fused_batch_norm(x, scale, offset, mean, variance,
                                                  epsilon=BN_EPSILON, is_training=False)
            results[dtype] = sess.run(
                [ours, theirs, tf.gradients(ours, [x, scale, offset], dy),
                 tf.gradients(theirs, [x, scale, offset], dy)])
    out, expected, grads, expected_grads = results[tf.float32]
    # The forward is the same op (Grappler may rewrite either into x * a + b).
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Independently: dx = dy * scale / sqrt(variance + eps).
    factor = stats[0] / np.sqrt(stats[3] + BN_EPSILON)
    np.testing.assert_allclose(grads[0], dy0 * factor, rtol=2e-5)  # float32 rsqrt
    out, expected, grads, expected_grads = results[tf.bfloat16]
    np.testing.assert_allclose(np.float32(out), np.float32(expected), rtol=2.0 ** -7)
    got, want = np.float32(grads[0]), np.float32(expected_grads[0])
    # Both round dy * factor to bfloat16; ours rounds the factor first.
    assert np.all(np.abs(got - want) <= 2.0 ** -7 * np.abs(want))
    assert np.mean(got != want) < 0.5


def test_training_with_frozen_batch_norm_takes_no_batch_norm_gradient():
    from deeplab_resnet.testing import TINY_CONFIG
    from deeplab_resnet.training import Trainer
    from deeplab_resnet.training.config import NetworkConfig
    images = tf.zeros([1, 33, 33, 3])
    labels = tf.zeros([1, 33, 33, 1], tf.uint8)
    Trainer(images, labels, NetworkConfig(num_classes=5, model=TINY_CONFIG))
    kinds = {op.type for op in tf.get_default_graph().get_operations()}
    assert "FusedBatchNormV3" in kinds
    assert not any(kind.startswith("FusedBatchNormGrad") for kind in kinds)
