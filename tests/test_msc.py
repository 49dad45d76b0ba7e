"""Training as DeepLab-v2 trained: multi-scale inputs (MSC), Caffe's scale set,
classifier-only fine-tuning and validation during training."""
import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from conftest import TINY_CONFIG, load_script, save_tiny_model
from deeplab_resnet import checkpoints, constants
from deeplab_resnet.data.augment import image_scaling
from deeplab_resnet.model import build_model
from deeplab_resnet.training import Trainer
from deeplab_resnet.training.loss import FUSED
from helpers.training import random_batch, run_train, tiny_network, train_argv, write_dataset

SCALES = (1.0, 0.75, 0.5)


def nearest(label, size):
    """``label`` [N, H, W] sampled on a grid of ``size`` with aligned corners,
    as labels are shrunk to each output's grid."""
    rows, cols = (np.round(np.arange(n) * (full - 1) / max(n - 1, 1)).astype(int)
                  for n, full in zip(size, label.shape[1:]))
    return label[:, rows][:, :, cols]


def bilinear(logits, size):
    """[N, h, w, C] resized to ``size`` bilinearly with aligned corners."""
    def axis(n_out, n_in):
        pos = np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1)
        low = np.minimum(np.floor(pos).astype(int), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, pos - low
    (r0, r1, fr), (c0, c1, fc) = axis(size[0], logits.shape[1]), axis(size[1],
                                                                       logits.shape[2])
    rows = (logits[:, r0] * (1 - fr)[None, :, None, None]
            + logits[:, r1] * fr[None, :, None, None])
    return rows[:, :, c0] * (1 - fc)[None, None, :, None] + rows[:, :, c1] * fc[None, None, :, None]


def mean_cross_entropy(logits, label, ignore_label=constants.IGNORE_LABEL):
    logits = logits.astype(np.float64)
    keep = label != ignore_label
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, np.where(keep, label, 0)[..., None], -1)[..., 0]
    return -picked[keep].mean()


def test_msc_loss_equals_an_independent_computation_of_the_four_losses():
    rng = np.random.RandomState(0)
    images, labels = random_batch(rng, 2, 5, size=33)
    labels[:, :4] = constants.IGNORE_LABEL
    trainer = Trainer(tf.constant(images), tf.constant(labels),
                      tiny_network(5, train_scales=SCALES))
    names = [out.name for out in trainer.tower.outputs]
    assert names == ["1", "0.75", "0.5", FUSED]
    fetch = [out.logits for out in trainer.tower.outputs]
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        result = trainer.step(sess, fetch)
    branch_logits = result["fetched"]
    # Caffe Interp's branch sizes: (33 - 1) * s + 1 -> 25 and 17 pixels.
    for scale, size, logits in zip(SCALES, (33, 25, 17), branch_logits):
        with tf.Graph().as_default():
            _, expected = build_model(tf.zeros([2, size, size, 3]), 5, config=TINY_CONFIG)
            assert logits.shape == tuple(expected.get_shape().as_list()), scale
    grid = branch_logits[0].shape[1:3]
    fused = branch_logits[0]
    for logits in branch_logits[1:3]:
        fused = np.maximum(fused, bilinear(logits, grid))
    np.testing.assert_allclose(branch_logits[3], fused, rtol=1e-5, atol=1e-5)
    label = labels[..., 0]
    want = {name: mean_cross_entropy(logits, nearest(label, logits.shape[1:3]))
            for name, logits in zip(names, branch_logits)}
    for name in names:
        assert result["losses"][name] == pytest.approx(want[name], rel=1e-5), name
    assert result["loss"] == pytest.approx(sum(want.values()), rel=1e-5)
    # Accuracy is the fused output's.
    fused_label = nearest(label, grid)
    keep = fused_label != constants.IGNORE_LABEL
    accuracy = np.mean(branch_logits[3].argmax(-1)[keep] == fused_label[keep])
    assert result["accuracy"] == pytest.approx(accuracy)


def checkpoint_tensors(snapshot_dir):
    return checkpoints.read_checkpoint(tf.train.latest_checkpoint(snapshot_dir))


def test_train_scales_1_is_plain_training(tmp_path):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    runs = {}
    for name, extra in (("plain", []), ("one_scale", ["--train-scales", "1"])):
        snapshot_dir = str(tmp_path / name)
        # One reader thread (--no-shuffle): with four, which example meets
        # which random crop depends on thread timing, and the runs differ.
        assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "3",
                                    "--no-shuffle", *extra)) == 0
        runs[name] = checkpoint_tensors(snapshot_dir)
    assert sorted(runs["plain"]) == sorted(runs["one_scale"])
    for key, value in runs["plain"].items():
        np.testing.assert_array_equal(runs["one_scale"][key], value, err_msg=key)


def test_msc_trains_with_accumulation_and_towers_and_evaluates_multi_scale(
        tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--train-scales",
                                "1,0.75,0.5", "--grad-update-every", "2", "--num-gpus",
                                "2", "--tower-device", "cpu", "--num-steps", "2")) == 0
    lines = re.findall(r"step \d/2 loss=(\S+) \(1=(\S+) 0\.75=(\S+) 0\.5=(\S+) max=(\S+)\)",
                       caplog.text)
    assert len(lines) == 2, caplog.text
    total, *parts = (float(v) for v in lines[-1])
    assert total == pytest.approx(sum(parts), rel=1e-3)
    # The variables are those of one network: evaluate.py restores them, MSC too.
    tensors = checkpoint_tensors(snapshot_dir)
    assert not any("scale" in name.split("/")[0] for name in tensors)
    evaluate = load_script("evaluate")
    assert evaluate.main(["--data-dir", data_dir, "--data-list", list_path,
                          "--restore-from", snapshot_dir, "--scales", "0.5,0.75,1"]) == 0
    assert re.search(r"^mIoU \d\.\d{4}$", capsys.readouterr().out, re.M)


def test_scale_set_draws_only_listed_scales():
    image = tf.zeros([40, 40, 3])
    label = tf.zeros([40, 40, 1], tf.uint8)
    scaled, scaled_label = image_scaling(image, label, scale_set=(0.5, 0.75, 1.5))
    with tf.Session() as sess:
        sizes = {tuple(sess.run(tf.shape(scaled))[:2]) for _ in range(60)}
        assert sess.run(tf.shape(scaled_label)).tolist()[2] == 1
    assert sizes == {(20, 20), (30, 30), (60, 60)}


def test_train_last_only_leaves_the_body_bit_identical(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    _, npz = save_tiny_model(str(tmp_path / "init"))
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--restore-from", npz,
                                "--train-last-only", "--learning-rate", "0.01",
                                "--num-steps", "3")) == 0
    start = dict(np.load(npz))
    trained = checkpoints.model_weights(checkpoint_tensors(snapshot_dir))
    changed = sorted(k for k in start if not np.array_equal(start[k], trained[k]))
    assert changed and all(k.startswith(constants.CLASSIFIER_PREFIX) for k in changed)
    # No momentum for the body: nothing of it was differentiated.
    slots = [k for k in checkpoint_tensors(snapshot_dir) if "/Momentum" in k]
    assert slots and all(k.startswith(constants.CLASSIFIER_PREFIX) for k in slots)
    with pytest.raises(SystemExit):
        load_script("train").get_arguments(["--scale-set", "0.5,1", "--random-scale"])


def test_validation_during_training_logs_summarises_and_keeps_the_best(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "3",
                                "--val-list", list_path, "--val-every", "1",
                                "--val-images", "3", "--keep-checkpoints", "1",
                                "--is-training", "--learning-rate", "0.01")) == 0
    scores = [float(v) for v in re.findall(
        r"validation at step \d: mIoU=(\S+) on 3 images of", caplog.text)]
    assert len(scores) == 3, caplog.text
    best_dir = os.path.join(snapshot_dir, "best")
    with open(os.path.join(best_dir, "best.json")) as f:
        best = json.load(f)
    assert best["miou"] == pytest.approx(max(scores), abs=1e-4)
    assert best["step"] == 1 + scores.index(max(scores))
    # Rotation keeps one snapshot; best/ holds its own copy, which restores.
    assert len(checkpoints.snapshot_prefixes(snapshot_dir)) == 1
    best_prefix = checkpoints.resolve_checkpoint(best_dir)
    assert os.path.basename(best_prefix) == best["snapshot"]
    assert checkpoints.read_weights(best_prefix)
    # TensorBoard's own reader finds the validation scalars.
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(snapshot_dir)
    events.Reload()
    assert "val/miou" in events.Tags()["scalars"]
    values = [e.value for e in events.Scalars("val/miou")]
    np.testing.assert_allclose(values, scores, atol=1e-4)
