"""Multi-device training: N towers on logical CPU devices against one tower.

Logical devices: ``tf.config.set_logical_device_configuration`` must run
before TensorFlow's runtime starts, i.e. once per process, and a
``tf.compat.v1.Session`` reads it only when created without a ConfigProto
(TF 2.21, python/client/session.py: ``config = context.context().config``,
whose ``device_count`` counts the logical devices). Graph-mode sessions that
pass a ConfigProto, as train.py does, get their CPU devices from
``ConfigProto.device_count`` instead, per session. That is what these tests
and ``--tower-device cpu`` use, so they run in this process next to the
other tests, with no start-up ordering to get right.
"""
import logging
import re

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from deeplab_resnet import training
from deeplab_resnet.training import towers
from deeplab_resnet.training.config import SolverConfig

from helpers.training import (random_batch, run_train, tiny_network, train_argv, train_script,
                              write_dataset)

NUM_CLASSES = 5


def cpu_session(graph, num_devices):
    config = tf.ConfigProto(device_count={"CPU": num_devices},
                            allow_soft_placement=True)
    return tf.Session(graph=graph, config=config)


def build(batch, devices=None, grad_update_every=1, is_training=False,
          weight_decay=5e-4):
    """A Trainer on placeholders in its own graph and session."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.placeholder(tf.float32, [batch, 33, 33, 3])
        labels = tf.placeholder(tf.uint8, [batch, 33, 33, 1])
        trainer = training.Trainer(
            images, labels, tiny_network(NUM_CLASSES, is_training=is_training),
            solver=SolverConfig(learning_rate=1.0, weight_decay=weight_decay,
                                grad_update_every=grad_update_every),
            devices=devices)
        init = tf.group(tf.global_variables_initializer(),
                        tf.local_variables_initializer())
    sess = cpu_session(graph, len(devices or [None]))
    sess.run(init)
    return sess, trainer, images, labels


def cpu_devices(count):
    return ["/cpu:%d" % i for i in range(count)]


def copy_weights(src_sess, src, dst_sess, dst):
    weights = {name: src_sess.run(var) for name, var in src.tower.net.variables.items()}
    dst.tower.net.assign_weights(weights, dst_sess)
    return weights


def labelled_batch(count, seed):
    """Labels whose images ignore very different numbers of pixels."""
    images, labels = random_batch(np.random.RandomState(seed), count, NUM_CLASSES)
    for i in range(count):
        labels[i, :4 + 7 * (i % 3)] = 255
    return images, labels


def assert_close(got, want):
    scale = max(max(np.abs(w).max() for w in want), 1.0)
    worst = max(np.abs(g - w).max() for g, w in zip(got, want))
    assert worst <= 1e-5 * scale, (worst, scale)


def run_step(sess, trainer, images, labels, feed_images, feed_labels):
    """One update from ``grad_update_every`` equal batches; the summed
    ``loss_sum`` and ``num_valid`` of the forward passes."""
    k = trainer.grad_update_every
    batch = len(images) // k
    totals = np.zeros(2)
    for i in range(k):
        feed = {feed_images: images[i * batch:(i + 1) * batch],
                feed_labels: labels[i * batch:(i + 1) * batch]}
        op = trainer.train_op if trainer.accumulate_op is None else trainer.accumulate_op
        totals += sess.run([trainer.loss_sum, trainer.num_valid, op], feed)[:2]
    if trainer.accumulate_op is not None:
        sess.run(trainer.train_op)
    return totals


# Three towers with accumulation in the fast suite; two without, the simpler
# case of the same path, in the slow set (each builds two training graphs).
@pytest.mark.parametrize("num_towers,grad_update_every", [
    pytest.param(2, 1, marks=pytest.mark.slow), (3, 2)])
def test_towers_give_the_update_of_one_device_with_the_whole_batch(
        num_towers, grad_update_every):
    per_step = 2 * num_towers * grad_update_every
    images, labels = labelled_batch(per_step, seed=num_towers)
    one_sess, one, one_images, one_labels = build(per_step)
    many_sess, many, many_images, many_labels = build(
        per_step // grad_update_every, cpu_devices(num_towers), grad_update_every)
    with one_sess, many_sess:
        before = copy_weights(one_sess, one, many_sess, many)
        want_totals = run_step(one_sess, one, images, labels, one_images, one_labels)
        got_totals = run_step(many_sess, many, images, labels, many_images,
                              many_labels)
        names = sorted(before)
        want = [one_sess.run(one.tower.net.variables[n]) - before[n] for n in names]
        got = [many_sess.run(many.tower.net.variables[n]) - before[n] for n in names]
        assert many_sess.run(many.global_step) == 1
    assert len(many.towers) == num_towers
    np.testing.assert_allclose(got_totals, want_totals, rtol=1e-5)
    # The update moved the weights (learning rate 1), and moved them alike.
    assert max(np.abs(w).max() for w in want) > 1e-3
    assert_close(got, want)


def test_batch_statistics_per_tower_and_moving_averages_from_the_first():
    """With --is-training each tower normalises its own share; the update sums
    the shares' pixel gradients, and the averages move by tower 0's share."""
    images, labels = labelled_batch(4, seed=7)
    shares = (slice(0, 2), slice(2, 4))
    many_sess, many, many_images, many_labels = build(
        4, cpu_devices(2), is_training=True, weight_decay=0.0)
    one_sess, one, one_images, one_labels = build(2, is_training=True,
                                                  weight_decay=0.0)
    stats = sorted(n for n in many.tower.net.variables if n.endswith(("/mean",
                                                                     "/variance")))
    with one_sess, many_sess:
        before = copy_weights(many_sess, many, one_sess, one)
        # Each share alone: its gradient (a mean over its pixels) and pixel count.
        per_share = []
        for share in shares:
            feed = {one_images: images[share], one_labels: labels[share]}
            per_share.append(one_sess.run([one.gradients, one.num_valid], feed))
        # Fetching the gradients moved the averages; start them afresh.
        one.tower.net.assign_weights(before, one_sess)
        one_sess.run(one.train_op, {one_images: images[shares[0]],
                                    one_labels: labels[shares[0]]})
        want_stats = [one_sess.run(one.tower.net.variables[n]) for n in stats]
        # Fetched with the update: every run of the gradients moves the averages.
        got, _ = many_sess.run([many.gradients, many.train_op],
                               {many_images: images, many_labels: labels})
        got_stats = [many_sess.run(many.tower.net.variables[n]) for n in stats]
    (grads0, valid0), (grads1, valid1) = per_share
    want = [(g0 * valid0 + g1 * valid1) / (valid0 + valid1)
            for g0, g1 in zip(grads0, grads1)]
    assert_close(got, want)
    moved = [np.abs(g - before[n]).max() for g, n in zip(got_stats, stats)]
    assert max(moved) > 1e-4
    np.testing.assert_allclose(np.concatenate(got_stats), np.concatenate(want_stats),
                               rtol=1e-5, atol=1e-6)


def test_towers_run_on_their_devices_and_variables_on_the_cpu():
    sess, trainer, images, labels = build(4, cpu_devices(2))
    image_values, label_values = labelled_batch(4, seed=3)
    metadata = tf.RunMetadata()
    with sess:
        sess.run(trainer.train_op, {images: image_values, labels: label_values},
                 options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE),
                 run_metadata=metadata)
    ran_on = {}
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            ran_on.setdefault(node.node_name.split("/")[0], set()).add(
                device.device.rsplit("/", 1)[-1])
    assert ran_on["tower_0"] == {"device:CPU:0"}
    assert ran_on["tower_1"] == {"device:CPU:1"}
    variables = trainer.tower.net.variables.values()
    assert {v.device for v in variables} == {towers.VARIABLE_DEVICE}
    assert trainer.towers[1].net.variables["conv1/weights"] is \
        trainer.tower.net.variables["conv1/weights"]


def test_a_batch_that_does_not_split_evenly_is_refused():
    images = tf.placeholder(tf.float32, [5, 33, 33, 3])
    labels = tf.placeholder(tf.uint8, [5, 33, 33, 1])
    with pytest.raises(ValueError, match="batch of 5 images does not split evenly "
                                         "over 2 devices"):
        training.Trainer(images, labels, tiny_network(NUM_CLASSES), devices=cpu_devices(2))


def test_flags_refuse_uneven_batches_and_missing_gpus(tmp_path, capsys, caplog):
    with pytest.raises(SystemExit) as exit_info:
        train_script.get_arguments(["--batch-size", "10", "--num-gpus", "4"])
    assert exit_info.value.code == 2
    assert "--batch-size 10 does not split evenly over --num-gpus 4; use a " \
           "multiple of 4, such as 8." in capsys.readouterr().err
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has GPUs")
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir,
                                "--num-gpus", "2")) == 2
    assert re.search(r"error: --num-gpus 2, but TensorFlow sees 0 GPU.*"
                     r"--tower-device cpu", caplog.text)
    assert tf.train.latest_checkpoint(snapshot_dir) is None


def test_train_py_with_cpu_towers_and_accumulation_then_one_device(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    argv = train_argv(data_dir, list_path, snapshot_dir, "--num-gpus", "2",
                      "--tower-device", "cpu", "--batch-size", "4",
                      "--grad-update-every", "2", "--learning-rate", "1e-3")
    assert run_train(argv) == 0
    assert "2 towers on /cpu:0, /cpu:1, 2 images each; variables on /cpu:0" \
        in caplog.text
    losses = [float(v) for v in re.findall(r"step \d+/2 loss=(\S+)", caplog.text)]
    assert len(losses) == 2 and np.isfinite(losses).all()
    saved = tf.train.load_checkpoint(tf.train.latest_checkpoint(snapshot_dir))
    assert saved.get_tensor("global_step") == 2
    assert saved.get_tensor("fc1_voc12_c0/weights/Momentum").any()
    # Snapshots do not depend on the number of devices: one device resumes.
    caplog.clear()
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--batch-size", "4",
                                "--num-steps", "3")) == 0
    assert re.search(r"resuming from .*model.ckpt-2 at step 2", caplog.text)
    assert "towers on" not in caplog.text
    assert tf.train.latest_checkpoint(snapshot_dir).endswith("model.ckpt-3")
