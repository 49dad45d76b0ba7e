"""Training diagnostics: the L2 term beside the loss, the small-batch
BatchNorm warning, and stopping on divergence or bad labels without losing
the last good snapshot."""
import logging
import os
import re

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image
from deeplab_resnet import training
from deeplab_resnet.training import loop as training_loop
from deeplab_resnet.data.reader import TrainingReader
from deeplab_resnet.training import towers

from helpers.training import (random_batch, read_events, run_train, tiny_network, train_argv,
                              write_dataset)

BN_WARNING = "--is-training updates BatchNorm statistics from"


def scalar_events(snapshot_dir):
    """{(step, tag): value} of the scalar summaries."""
    values = {}
    for name in os.listdir(snapshot_dir):
        if name.startswith("events.out.tfevents"):
            for event in tf.train.summary_iterator(os.path.join(snapshot_dir, name)):
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        values[event.step, value.tag] = value.simple_value
    return values


def numpy_l2(checkpoint, weight_decay):
    """0.5 * weight_decay * sum of squared convolution weights, from the file."""
    reader = tf.train.load_checkpoint(checkpoint)
    names = [n for n in reader.get_variable_to_shape_map() if n.endswith("/weights")]
    assert any(n.startswith("fc1_voc12") for n in names)
    total = sum(np.sum(reader.get_tensor(n).astype(np.float64) ** 2) for n in names)
    return 0.5 * weight_decay * total


def test_progress_line_and_tensorboard_report_loss_and_l2_apart(train_paths, caplog):
    caplog.set_level(logging.INFO)
    data_dir, list_path, snapshot_dir = train_paths
    decay = 0.01
    assert run_train(train_argv(
        data_dir, list_path, snapshot_dir, "--is-training", "--weight-decay",
        str(decay), "--learning-rate", "0.01", "--save-pred-every", "1",
        "--keep-checkpoints", "0")) == 0
    lines = dict(re.findall(r"step (\d)/2 (loss=\S+ l2=\S+) acc=", caplog.text))
    assert sorted(lines) == ["1", "2"], caplog.text
    loss, l2 = (float(v) for v in re.findall(r"=(\S+)", lines["2"]))
    # Step 2's L2 term is that of the weights step 1 left: snapshot 1.
    want = numpy_l2(os.path.join(snapshot_dir, "model.ckpt-1"), decay)
    np.testing.assert_allclose(l2, want, rtol=1e-3)
    events = scalar_events(snapshot_dir)
    np.testing.assert_allclose(events[2, "l2_loss"], want, rtol=1e-5)
    np.testing.assert_allclose(events[2, "loss"], loss, rtol=1e-3)
    np.testing.assert_allclose(events[2, "total_loss"], events[2, "loss"] + want,
                               rtol=1e-5)
    # The weights moved, and so did the term.
    assert abs(events[1, "l2_loss"] - events[2, "l2_loss"]) > 1e-6
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and BN_WARNING in r.getMessage()]
    assert len(warnings) == 1 and "from 2 image(s) per device; under 8" in warnings[0]


@pytest.mark.parametrize("is_training,batch_size,num_devices,per_device", [
    (True, 7, 1, 7), (True, 14, 2, 7), (True, 8, 1, None), (True, 16, 2, None),
    (False, 2, 1, None)])
def test_batchnorm_warning_only_for_updated_statistics_on_small_batches(
        is_training, batch_size, num_devices, per_device):
    warning = towers.batchnorm_batch_warning(is_training, batch_size, num_devices)
    if per_device is None:
        assert warning is None
    else:
        assert "from %d image(s) per device; under 8" % per_device in warning


def test_divergence_stops_and_keeps_the_last_good_snapshot(train_paths, caplog):
    data_dir, list_path, snapshot_dir = train_paths
    assert run_train(train_argv(data_dir, list_path, snapshot_dir,
                                "--learning-rate", "1e-3", "--save-pred-every", "1",
                                "--keep-checkpoints", "0")) == 0
    good = os.path.join(snapshot_dir, "model.ckpt-2")
    reader = tf.train.load_checkpoint(good)
    saved = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    files = {n: os.path.getmtime(os.path.join(snapshot_dir, n))
             for n in os.listdir(snapshot_dir) if n.startswith("model.ckpt")}
    caplog.clear()
    # Resumes at step 3, whose update blows the weights up.
    assert run_train(train_argv(data_dir, list_path, snapshot_dir,
                                "--learning-rate", "1e30", "--num-steps", "20",
                                "--save-pred-every", "1")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert re.search(r"weights became non-finite or too large .* at step 3 "
                     r"\(lr=\S+e\+29\)\. First check the labels: every label value .*"
                     r"dataset/check_labels\.py.* lower --learning-rate.* Nothing was "
                     r"saved from this run after .*model\.ckpt-2\.", errors[0]), errors
    assert tf.train.latest_checkpoint(snapshot_dir) == good
    assert {n: os.path.getmtime(os.path.join(snapshot_dir, n))
            for n in os.listdir(snapshot_dir) if n.startswith("model.ckpt")} == files
    reader = tf.train.load_checkpoint(good)
    for name, value in saved.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value, err_msg=name)
    assert BN_WARNING not in caplog.text


def test_label_values_that_reach_the_loss_are_counted_not_trained_on():
    num_classes = 5
    images = tf.placeholder(tf.float32, [2, 33, 33, 3])
    labels = tf.placeholder(tf.uint8, [2, 33, 33, 1])
    trainer = training.Trainer(images, labels, tiny_network(num_classes))
    image_values, label_values = random_batch(np.random.RandomState(0), 2,
                                              num_classes)
    bad_values = label_values.copy()
    bad_values[0, :, :, 0] = 200
    bad_values[1, 0, :, 0] = 7
    # The grid the loss sees: every 8th pixel from 0, as prepare_label picks.
    grid = bad_values[:, ::8, ::8, 0]
    clean = label_values.copy()
    clean[0] = 255
    clean[1, 0] = 255
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        metrics = [trainer.loss_sum, trainer.num_valid]
        got, bad, largest = sess.run(
            [metrics, trainer.num_bad_labels, trainer.max_bad_label],
            {images: image_values, labels: bad_values})
        want = sess.run(metrics, {images: image_values, labels: clean})
    assert bad == np.sum(grid >= num_classes) > 0
    assert largest == 200
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bad_labels_that_slip_past_the_reader_stop_the_run(tmp_path, caplog,
                                                           monkeypatch):
    """E.g. a wrong label map: the reader is told nothing of the classes."""
    reader = TrainingReader
    monkeypatch.setattr(training_loop, "TrainingReader",
                        lambda *a, **k: reader(*a, **dict(k, num_classes=None)))
    monkeypatch.setattr(training_loop, "CHECKED_LABELS", 0)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir, num_classes=5)
    for name in ("img0", "img1", "img2", "img3"):
        label = os.path.join(data_dir, "SegmentationClassAug", name + ".png")
        values = np.array(Image.open(label))
        values[5:, 5:] = 30
        Image.fromarray(values).save(label)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir,
                                "--num-classes", "5")) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert re.search(r"Step 1 met \d+ labelled pixel\(s\) with values up to 30, "
                     r"outside 0\.\.4 and not --ignore-label 255.*--num-classes.*"
                     r"dataset/check_labels\.py", errors[0]), errors
    assert tf.train.latest_checkpoint(snapshot_dir) is None
    assert "loss" not in read_events(snapshot_dir)
