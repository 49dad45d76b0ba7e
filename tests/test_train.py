"""Training: the solver against hand computations, the loop, resume and errors."""
import json
import logging
import os
import re
import signal

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from conftest import TINY_CONFIG, save_tiny_model, write_voc_pair
from deeplab_resnet.data.reader import TrainingReader
from deeplab_resnet import constants
from deeplab_resnet import training
from deeplab_resnet.training import gradients
from deeplab_resnet.training import loop as training_loop
from deeplab_resnet.training.loss import prepare_label
from deeplab_resnet.training.config import DataConfig, SolverConfig
from deeplab_resnet.training.snapshots import SnapshotLock
from deeplab_resnet.training.solver import ReportedSums
from helpers.training import (SignalOnLine, random_batch, read_events, run_signalled,
                              run_train, script, tiny_network, train_argv, write_dataset)

# ------------------------------------------------------------------ solver
def thread_count():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_session_gets_the_intra_op_threads_it_asks_for_after_the_gradient_probe():
    """Building a CPU training graph runs the gradient probe, a one-thread
    session. By TensorFlow's default the process's one intra-op pool would
    take its size from that first session and every training step would run
    on one core; runtime makes each session own the pool it asks for."""
    gradients._probe("float32", False)
    before = thread_count()
    with tf.Graph().as_default():
        total = tf.reduce_sum(tf.ones([64, 64]))
        with tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=5,
                                              inter_op_parallelism_threads=1,
                                              use_per_session_threads=True)) as sess:
            assert sess.run(total) == 64 * 64
            assert thread_count() - before >= 5


def test_dilated_convolution_gradient_matches_zero_inserted_kernel():
    """The CPU-safe gradient equals that of the same convolution written with
    an undilated kernel that has zeros between its taps."""
    rng = np.random.RandomState(0)
    rate = 3
    x = tf.constant(rng.normal(size=(2, 11, 9, 3)).astype(np.float32))
    w = tf.constant(rng.normal(size=(3, 3, 3, 4)).astype(np.float32))
    pads = [[0, 0], [rate, rate], [rate, rate], [0, 0]]
    graph = tf.get_default_graph()
    with graph.gradient_override_map({"Conv2D": gradients.CONV2D_GRADIENT}):
        dilated = tf.nn.conv2d(x, w, [1, 1, 1, 1], pads, dilations=[1, rate, rate, 1])
        plain = tf.nn.conv2d(x, w, [1, 1, 1, 1], [[0, 0], [1, 1], [1, 1], [0, 0]])
    taps = [[i * rate, j * rate] for i in range(3) for j in range(3)]
    size = 2 * rate + 1
    big = tf.scatter_nd(taps, tf.reshape(w, [9, 3, 4]), [size, size, 3, 4])
    reference = tf.nn.conv2d(x, big, [1, 1, 1, 1], pads)
    plain_reference = tf.nn.conv2d(x, w, [1, 1, 1, 1], [[0, 0], [1, 1], [1, 1], [0, 0]])
    upstream = tf.constant(rng.normal(size=(2, 11, 9, 4)).astype(np.float32))
    with tf.Session() as sess:
        got, want, got_plain, want_plain = sess.run([
            tf.gradients(dilated, [x, w], grad_ys=upstream),
            tf.gradients(reference, [x, w], grad_ys=upstream),
            tf.gradients(plain, [x, w], grad_ys=upstream),
            tf.gradients(plain_reference, [x, w], grad_ys=upstream)])
    for a, b in zip(got + got_plain, want + want_plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_one_step_applies_lr_multipliers_weight_decay_and_poly_rate():
    num_classes, lr, decay, num_steps = 5, 0.01, 0.1, 10
    images = tf.placeholder(tf.float32, [2, 33, 33, 3])
    labels = tf.placeholder(tf.uint8, [2, 33, 33, 1])
    trainer = training.Trainer(images, labels, tiny_network(num_classes),
                               solver=SolverConfig(learning_rate=lr, momentum=0.0, power=0.9,
                                                   num_steps=num_steps, weight_decay=decay))
    # The loss written out independently: mean -log softmax over labelled pixels.
    logits = trainer.tower.logits
    label = prepare_label(labels, tf.unstack(tf.shape(logits)[1:3]))
    valid = tf.cast(tf.not_equal(label, 255), tf.float32)
    log_probs = tf.nn.log_softmax(logits)
    picked = tf.reduce_sum(tf.one_hot(label, num_classes) * log_probs, axis=3)
    loss = -tf.reduce_sum(picked * valid) / tf.reduce_sum(valid)
    variables = trainer.tower.net.variables
    multipliers = {"fc1_voc12_c0/weights": (10.0, True),
                   "fc1_voc12_c1/biases": (20.0, False),
                   "conv1/weights": (1.0, True),
                   "res5a_branch2b/weights": (1.0, True)}
    names = sorted(multipliers)
    grads = tf.gradients(loss, [variables[n] for n in names])
    frozen = ["bn_conv1/scale", "bn_conv1/offset", "bn5a_branch2b/mean"]

    rng = np.random.RandomState(1)
    image_values, label_values = random_batch(rng, 2, num_classes)
    label_values[:, :10] = 255
    feed = {images: image_values, labels: label_values}
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        before, grad_values, frozen_before = sess.run(
            [[variables[n] for n in names], grads, [variables[n] for n in frozen]],
            feed)
        sess.run(trainer.train_op, feed)
        after, frozen_after = sess.run([[variables[n] for n in names],
                                        [variables[n] for n in frozen]])
        step, next_lr = sess.run([trainer.global_step, trainer.learning_rate])
    for name, w0, g, w1 in zip(names, before, grad_values, after):
        mult, decays = multipliers[name]
        expected = w0 - lr * mult * (g + (decay * w0 if decays else 0.0))
        assert np.abs(w1 - w0).max() > 0, name
        np.testing.assert_allclose(w1, expected, rtol=1e-4, atol=1e-7, err_msg=name)
    for name, v0, v1 in zip(frozen, frozen_before, frozen_after):
        np.testing.assert_array_equal(v0, v1, err_msg=name)
    assert step == 1
    np.testing.assert_allclose(next_lr, lr * (1 - 1.0 / num_steps) ** 0.9, rtol=1e-6)


def build_trainer(grad_update_every):
    graph = tf.Graph()
    with graph.as_default():
        images = tf.placeholder(tf.float32, [None, 33, 33, 3])
        labels = tf.placeholder(tf.uint8, [None, 33, 33, 1])
        trainer = training.Trainer(images, labels, tiny_network(5),
                                   solver=SolverConfig(grad_update_every=grad_update_every))
        init = tf.group(tf.global_variables_initializer(),
                        tf.local_variables_initializer())
    sess = tf.Session(graph=graph)
    sess.run(init)
    return sess, trainer, images, labels


def test_accumulating_k_batches_equals_one_batch_of_k_times_the_size():
    rng = np.random.RandomState(2)
    image_values, label_values = random_batch(rng, 4, 5)
    # The halves ignore very different numbers of pixels.
    label_values[:2, :20] = 255
    big_sess, big, big_images, big_labels = build_trainer(1)
    acc_sess, acc, acc_images, acc_labels = build_trainer(2)
    with big_sess, acc_sess:
        weights = {name: big_sess.run(var)
                   for name, var in big.tower.net.variables.items()}
        acc.tower.net.assign_weights(weights, acc_sess)
        want = big_sess.run(big.gradients, {big_images: image_values,
                                            big_labels: label_values})
        halves = [big_sess.run(big.gradients, {big_images: image_values[s],
                                               big_labels: label_values[s]})
                  for s in (slice(0, 2), slice(2, 4))]
        for s in (slice(0, 2), slice(2, 4)):
            acc_sess.run(acc.accumulate_op, {acc_images: image_values[s],
                                             acc_labels: label_values[s]})
        got = acc_sess.run(acc.gradients)
        acc_sess.run(acc.train_op)
        assert acc_sess.run(acc.global_step) == 1
    scale = max(np.abs(g).max() for g in want)
    worst = max(np.abs(a - b).max() for a, b in zip(got, want))
    assert worst <= 1e-5 * max(scale, 1.0), (worst, scale)
    # Averaging the two batch means instead (Caffe's iter_size) would differ.
    caffe_style = [(a + b) / 2 for a, b in zip(*halves)]
    assert max(np.abs(a - b).max() for a, b in zip(caffe_style, want)) > 1e-3 * scale


def test_short_training_run_lowers_the_loss(voc_dataset):
    data_dir, list_path, _ = voc_dataset
    tf.set_random_seed(0)
    coord = tf.train.Coordinator()
    reader = TrainingReader(DataConfig(data_dir, list_path, input_size=(33, 33),
                                       random_mirror=True, ignore_label=255), coord=coord,
                            num_classes=constants.NUM_CLASSES)
    image_batch, label_batch = reader.dequeue(4)
    trainer = training.Trainer(image_batch, label_batch,
                               tiny_network(constants.NUM_CLASSES, is_training=True),
                               solver=SolverConfig(learning_rate=1e-3, num_steps=30))
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        threads = reader.start(sess)
        losses = [trainer.step(sess)["loss"] for _ in range(30)]
        coord.request_stop()
        coord.join(threads)
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses


# ---------------------------------------------------------------- the loop
def test_restoring_weights_for_other_classes_skips_the_classifier(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    _, npz = save_tiny_model(str(tmp_path / "init"), num_classes=constants.NUM_CLASSES)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir, num_classes=5)
    snapshot_dir = str(tmp_path / "snap")
    status = run_train(train_argv(data_dir, list_path, snapshot_dir,
                                  "--num-classes", "5", "--restore-from", npz,
                                  "--save-pred-every", "1", "--learning-rate", "0"))
    assert status == 0
    assert "has a classifier for another number of classes" in caplog.text
    with open(os.path.join(snapshot_dir, constants.MODEL_CONFIG_FILE)) as f:
        assert json.load(f) == dict(TINY_CONFIG.to_dict(), num_classes=5)
    assert tf.train.latest_checkpoint(snapshot_dir).endswith("model.ckpt-2")
    saved = tf.train.load_checkpoint(os.path.join(snapshot_dir, "model.ckpt-2"))
    with np.load(npz) as init:
        # With a zero learning rate the body is exactly what was restored.
        for name in ("conv1/weights", "res5a_branch2b/weights", "bn5a_branch1/mean"):
            np.testing.assert_array_equal(saved.get_tensor(name), init[name])
    assert saved.get_tensor("fc1_voc12_c0/biases").shape == (5,)
    assert {"loss", "accuracy", "learning_rate"} <= read_events(snapshot_dir)
    assert any(tag.startswith("images") for tag in read_events(snapshot_dir))


def test_non_finite_loss_stops_without_saving(tmp_path, caplog):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    status = run_train(train_argv(data_dir, list_path, snapshot_dir,
                                  "--learning-rate", "1e30", "--num-steps", "20"))
    assert status == 2
    assert re.search(r"loss became (nan|inf) at step \d+ \(lr=.*label value.*"
                     r"--learning-rate", caplog.text)
    assert tf.train.latest_checkpoint(snapshot_dir) is None


def break_missing_image(data_dir, list_path):
    os.remove(os.path.join(data_dir, "JPEGImages", "img2.jpg"))
    return r"line 3: .*img2.jpg"


def break_label_size(data_dir, list_path):
    write_voc_pair(data_dir, "img1", (33, 33))
    Image.new("L", (20, 33)).save(os.path.join(data_dir, "SegmentationClassAug",
                                               "img1.png"))
    return r"img1.png is 33x20 but its image .*img1.jpg is 33x33"


def break_label_colour(data_dir, list_path):
    label = os.path.join(data_dir, "SegmentationClassAug", "img3.png")
    Image.open(label).convert("RGB").save(label)
    return r"img3.png is a colour image.*Convert it"


def break_label_value(data_dir, list_path):
    label = os.path.join(data_dir, "SegmentationClassAug", "img0.png")
    Image.fromarray(np.full((33, 33), 30, np.uint8)).save(label)
    return r"img0.png has values \[30\]"


def break_list(data_dir, list_path):
    open(list_path, "w").close()
    return r"train.txt' lists no image/label pairs"


@pytest.mark.parametrize("breakage", [break_missing_image, break_label_size,
                                      break_label_colour, break_label_value,
                                      break_list])
def test_bad_data_fails_before_training_and_keeps_snapshots(tmp_path, caplog, breakage):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    os.makedirs(snapshot_dir)
    previous = {"checkpoint": 'model_checkpoint_path: "model.ckpt-7"\n',
                "model.ckpt-7.index": "index", constants.MODEL_CONFIG_FILE: "{}",
                "model.ckpt-7.data-00000-of-00001": "data"}
    for name, text in previous.items():
        with open(os.path.join(snapshot_dir, name), "w") as f:
            f.write(text)
    message = breakage(data_dir, list_path)
    assert run_train(train_argv(data_dir, list_path, snapshot_dir)) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert not any(r.getMessage().startswith("step ") for r in caplog.records)
    assert sorted(os.listdir(snapshot_dir)) == sorted(previous)
    for name, text in previous.items():
        with open(os.path.join(snapshot_dir, name)) as f:
            assert f.read() == text


def test_bad_label_met_by_the_reader_during_training_stops_the_run(
        tmp_path, caplog, monkeypatch):
    """Labels beyond the checked sample are checked by the reader threads."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(training_loop, "CHECKED_LABELS", 0)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    message = break_label_size(data_dir, list_path)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir,
                                "--num-steps", "50")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    # The error names the list line, and the steps done before are kept.
    assert re.search(r"It is line \d of %s\. Fix it, then rerun the same command "
                     r"to resume from " % re.escape(list_path), errors[0]), errors
    done = [int(step) for step in re.findall(r"step (\d+)/50 ", caplog.text)]
    latest = tf.train.latest_checkpoint(snapshot_dir)
    if done:
        assert latest == os.path.join(snapshot_dir, "model.ckpt-%d" % max(done))
        assert errors[0].endswith("resume from %s." % latest)
    else:
        assert latest is None and errors[0].endswith("resume from the start.")


@pytest.mark.slow
def test_resnet101_trains_with_accumulation_and_batch_statistics(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    argv = ["--data-dir", data_dir, "--data-list", list_path, "--snapshot-dir",
            snapshot_dir, "--input-size", "65,65", "--batch-size", "2",
            "--grad-update-every", "2", "--num-steps", "3", "--is-training",
            "--random-scale", "--random-mirror"]
    assert run_train(argv) == 0
    losses = [float(m) for m in re.findall(r"loss=(\S+)", caplog.text)]
    assert len(losses) == 3 and np.isfinite(losses).all()
    saved = tf.train.load_checkpoint(tf.train.latest_checkpoint(snapshot_dir))
    assert saved.get_tensor("global_step") == 3
    assert saved.get_tensor("res4b22_branch2b/weights/Momentum").any()


# ------------------------------------------------------- the script itself
def test_cli_reports_a_bad_label_in_one_line(tmp_path):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    message = break_label_colour(data_dir, list_path)
    process = script(train_argv(data_dir, list_path, str(tmp_path / "snap")))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2, output
    assert re.search(r"error: Label .*" + message, output)
    assert "Traceback" not in output


def test_ctrl_c_snapshots_and_rerun_resumes_at_the_saved_step(tmp_path, caplog):
    """Ctrl-C (SIGINT, sent to this process from the step 3 line) while the
    run holds its snapshot directory: a snapshot of the step, exit 130; the
    rerun resumes there with the rate of that step and keeps
    --keep-checkpoints snapshots."""
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    argv = train_argv(data_dir, list_path, snapshot_dir, "--learning-rate", "0.001",
                      "--is-training", "--keep-checkpoints", "2")
    held = []

    class LockCheck(logging.Handler):
        """The run holds its snapshot directory (checked at step 3)."""

        def emit(self, record):
            if not held and re.search(r"^step 3/1000000 ", record.getMessage()):
                with pytest.raises(IOError, match="Another train.py is writing to"):
                    with SnapshotLock(snapshot_dir):
                        pass
                held.append(True)

    status = run_signalled(argv + ["--num-steps", "1000000", "--save-pred-every", "1000000",
                                   "--log-every", "1"],
                           LockCheck(), SignalOnLine(r"^step 3/1000000 ", signal.SIGINT))
    output = caplog.text
    assert held == [True], output
    assert status == training.INTERRUPTED_STATUS, output
    saved = int(re.search(r"interrupted at step (\d+)", output).group(1))
    assert saved >= 3
    assert tf.train.latest_checkpoint(snapshot_dir).endswith("model.ckpt-%d" % saved)

    num_steps = saved + 3
    caplog.clear()
    assert run_train(argv + ["--num-steps", str(num_steps), "--save-pred-every", "1"]) == 0
    output = caplog.text
    assert "resuming from %s at step %d" % (
        os.path.join(snapshot_dir, "model.ckpt-%d" % saved), saved) in output
    first_step = re.search(r"step (\d+)/%d .* lr=(\S+)" % num_steps, output)
    assert int(first_step.group(1)) == saved + 1
    expected_lr = 0.001 * (1 - saved / float(num_steps)) ** 0.9
    np.testing.assert_allclose(float(first_step.group(2)), expected_lr, rtol=1e-3)
    # Old snapshots, the interrupted run's included, beyond --keep-checkpoints go.
    state = tf.train.get_checkpoint_state(snapshot_dir)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "model.ckpt-%d" % s for s in (num_steps - 1, num_steps)]
    assert not os.path.exists(os.path.join(snapshot_dir,
                                           "model.ckpt-%d.index" % saved))
    final = tf.train.load_checkpoint(state.model_checkpoint_path)
    assert final.get_tensor("global_step") == num_steps
    assert final.get_tensor("fc1_voc12_c0/weights/Momentum").any()


def test_reported_sums_are_packed_and_read_by_slot_name():
    layout = ReportedSums(["1", "0.5", "max"])
    values = {slot: float(i + 1) for i, slot in enumerate(reversed(layout.slots))}
    with tf.Session() as sess:
        totals = sess.run(layout.pack(values))
    assert layout.read(totals) == values
    assert layout.read(totals)["num_valid/0.5"] == values["num_valid/0.5"]
    with pytest.raises(ValueError, match="slots"):
        layout.pack({k: v for k, v in values.items() if k != "interrupt"})
    with pytest.raises(ValueError, match="8 values for 9 slots"):
        layout.read(totals[:-1])
