"""Checkpoint rotation touches only the run's own model.ckpt-N snapshots."""
import os
import shutil

from deeplab_resnet.training import snapshots as training_snapshots
from helpers.training import run_train, train_argv, write_dataset


def _files(directory):
    return sorted(os.listdir(directory))


def test_rotation_keeps_exactly_n_of_its_own_and_never_a_users_copy(tmp_path):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "3",
                                "--save-pred-every", "1", "--keep-checkpoints", "0")) == 0
    backup = []
    for name in _files(snapshot_dir):
        if name.startswith("model.ckpt-3."):
            copy = name.replace("model.ckpt-3", "my_backup.ckpt")
            shutil.copy(os.path.join(snapshot_dir, name), os.path.join(snapshot_dir, copy))
            backup.append(copy)
    assert backup
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "5",
                                "--save-pred-every", "1", "--keep-checkpoints", "2")) == 0
    names = _files(snapshot_dir)
    assert set(backup) <= set(names), names
    assert [os.path.basename(p) for p in training_snapshots.own_snapshots(snapshot_dir)] == [
        "model.ckpt-4", "model.ckpt-5"], names


def test_own_snapshots_are_model_ckpt_n_by_step(tmp_path):
    for name in ("model.ckpt-10.index", "model.ckpt-9.index", "model.ckpt.index",
                 "my_backup.ckpt.index", "model.ckpt-3.index.tempstate1", "x-model.ckpt-2.index",
                 "model.ckpt-2.data-00000-of-00001"):
        (tmp_path / name).write_bytes(b"")
    assert training_snapshots.own_snapshots(str(tmp_path)) == [
        str(tmp_path / "model.ckpt-9"), str(tmp_path / "model.ckpt-10")]
