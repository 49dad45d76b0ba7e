"""Mixed-precision (bfloat16) training and Conv2D's gradients on CPU and GPU."""
import logging

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from deeplab_resnet import checkpoints
from deeplab_resnet.data import demo
from deeplab_resnet.images import bgr_minus_mean
from deeplab_resnet.training import Trainer, gradients
from deeplab_resnet.training.config import SolverConfig
from helpers.training import run_train, tiny_network, train_argv

# bfloat16 keeps 8 significant bits (rounding error 2^-9 = 0.2%); through
# the tiny network the global gradient moved 1.4% of its norm (measured),
# so 5% leaves room without hiding a wrong cast.
GRADIENT_TOLERANCE = 0.05
# Over 50 SGD steps (lr 0.002, batch statistics) rounding noise makes the
# two trajectories drift apart while both converge: the losses stayed within
# 0.8% of the initial loss of each other (measured), so 3%; both must end
# below 5% of it.
DRIFT_TOLERANCE = 0.03


def demo_batch(count=4, size=64):
    rng = np.random.default_rng(0)
    pairs = [demo.draw_sample(rng, size, size) for _ in range(count)]
    images = np.stack([bgr_minus_mean(image.astype(np.float32)) for image, _ in pairs])
    return images, np.stack([label[..., None] for _, label in pairs])


def train_losses(bf16, init=None, steps=50):
    """(losses of ``steps`` updates, initial gradients, initial variables)."""
    images, labels = demo_batch()
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        trainer = Trainer(tf.constant(images), tf.constant(labels),
                          tiny_network(5, bf16=bf16, is_training=True),
                          solver=SolverConfig(learning_rate=0.002))
        variables = tf.global_variables()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            if init is None:
                init = sess.run({v.op.name: v for v in variables})
            for var in variables:
                var.load(init[var.op.name], sess)
            assert all(v.dtype.base_dtype == tf.float32 for v in variables
                       if v.dtype.base_dtype.is_floating)
            grads = sess.run(trainer.gradients)
            assert all(g.dtype == np.float32 for g in grads)
            losses = [trainer.step(sess)["loss"] for _ in range(steps)]
    return np.array(losses), grads, init


def test_bf16_training_follows_float32():
    fp32, fp32_grads, init = train_losses(False)
    bf16, bf16_grads, _ = train_losses(True, init)
    flat = lambda grads: np.concatenate([g.ravel() for g in grads])
    error = (np.linalg.norm(flat(bf16_grads) - flat(fp32_grads))
             / np.linalg.norm(flat(fp32_grads)))
    assert 0 < error < GRADIENT_TOLERANCE
    assert np.max(np.abs(bf16 - fp32)) < DRIFT_TOLERANCE * fp32[0]
    assert fp32[-1] < 0.05 * fp32[0] and bf16[-1] < 0.05 * bf16[0]


def zero_inserted(kernel, rate):
    """A dilated kernel as the undilated one with zeros between its taps."""
    k_h, k_w, c_i, c_o = kernel.shape
    out = np.zeros(((k_h - 1) * rate + 1, (k_w - 1) * rate + 1, c_i, c_o), kernel.dtype)
    out[::rate, ::rate] = kernel
    return out


@pytest.mark.parametrize("kernel,stride,pad,rate,outputs", [
    (1, 1, 0, 1, 8), (1, 2, 0, 1, 8), (3, 1, 1, 1, 8), (7, 2, 3, 1, 8),
    (3, 1, 2, 2, 8), (3, 1, 4, 4, 8), (3, 1, 12, 12, 5), (3, 1, 12, 12, 130)])
def test_cpu_gradient_of_each_convolution_matches_an_undilated_reference(
        kernel, stride, pad, rate, outputs):
    """Every case the network has: 1x1 (strided in res3a), 3x3 at DeepLab's
    dilations, the 7x7/2 stem, narrow (ASPP) and wide outputs."""
    rng = np.random.RandomState(kernel + rate + outputs)
    x = rng.normal(size=(2, 29, 31, 6)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 6, outputs)).astype(np.float32)
    pads = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    inputs, weights = tf.constant(x), tf.constant(w)
    with tf.device("/cpu:0"):
        with tf.get_default_graph().gradient_override_map(
                {"Conv2D": gradients.CONV2D_GRADIENT}):
            out = tf.nn.conv2d(inputs, weights, [1, stride, stride, 1], pads,
                               dilations=[1, rate, rate, 1])
        reference = tf.nn.conv2d(inputs, tf.constant(zero_inserted(w, rate)),
                                 [1, stride, stride, 1], pads)
    upstream = tf.constant(rng.normal(size=out.get_shape().as_list()).astype(np.float32))
    got = tf.gradients(out, [inputs, weights], grad_ys=upstream)
    dx, dw_dilated = tf.gradients(reference, [inputs, reference.op.inputs[1]],
                                  grad_ys=upstream)
    with tf.Session() as sess:
        (gx, gw), wx, ww = sess.run([got, dx, dw_dilated])
    np.testing.assert_allclose(gx, wx, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gw, ww[::rate, ::rate], rtol=1e-4, atol=1e-3)


def test_towers_on_gpus_use_tensorflows_own_gradients():
    """No GPU here: the graph built for /gpu:0 towers is inspected instead."""
    images = tf.zeros([2, 33, 33, 3])
    labels = tf.zeros([2, 33, 33, 1], tf.uint8)
    Trainer(images, labels, tiny_network(5), devices=["/gpu:0", "/gpu:1"])
    ops = tf.get_default_graph().get_operations()
    tower_grads = [op for op in ops if op.name.startswith("tower_") and
                   "gradients" in op.name]
    kinds = {op.type for op in tower_grads}
    assert {"Conv2DBackpropInput", "Conv2DBackpropFilter"} <= kinds
    # Neither the CPU's space-to-batch form nor its pad-then-VALID form.
    assert not kinds & {"SpaceToBatchND", "BatchToSpaceND"}
    backprops = [op for op in tower_grads if op.type == "Conv2DBackpropInput"]
    assert all(op.get_attr("padding") == b"EXPLICIT" for op in backprops)
    assert any(max(op.get_attr("dilations")) > 1 for op in backprops)
    # And the ASPP head is a plain convolution there, not the CPU's taps form.
    assert not any("taps" in op.name for op in ops)


def test_a_bf16_run_resumes_as_float32_and_back(train_paths, caplog):
    caplog.set_level(logging.INFO)
    data_dir, list_path, snapshot_dir = train_paths
    for steps, extra in ((1, ["--bf16"]), (2, []), (3, ["--bf16"])):
        assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps",
                                    str(steps), "--save-pred-every", "1", *extra)) == 0
    assert "resuming from %s/model.ckpt-2 at step 2" % snapshot_dir in caplog.text
    tensors = checkpoints.read_checkpoint(tf.train.latest_checkpoint(snapshot_dir))
    assert all(v.dtype == np.float32 for k, v in tensors.items() if k != "global_step")
