"""Several workers (TF_CONFIG): worker processes on 127.0.0.1 against one process.

Every worker is a separate ``train.py`` / ``evaluate.py`` process on free
local ports, each waited for with a timeout and killed in ``finally``. The
list is read in order (--no-shuffle), so the workers' batches of a step are
together exactly the single process's batch.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from conftest import REPO_ROOT, save_tiny_model, write_voc_pair
from helpers.training import run_train, train_argv
from helpers.workers import NUM_CLASSES, TIMEOUT, Workers, dataset, run_workers

pytestmark = pytest.mark.timeout(2 * TIMEOUT + 300)


def checkpoint_values(snapshot_dir):
    """Every variable of the last snapshot (weights, momentum, global_step)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(snapshot_dir))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_same_variables(got, want, tolerance=1e-5):
    """Equal within ``tolerance`` of each variable's scale (at least 1): the
    momentum of the tiny net on unnormalised inputs reaches ~3000, where
    float32 summation order alone moves the last bits by ~1e-3."""
    assert sorted(got) == sorted(want)
    worst = max((float(np.max(np.abs(got[n].astype(np.float64) - want[n])))
                 / max(1.0, float(np.max(np.abs(want[n])))), n) for n in want)
    assert worst[0] <= tolerance, worst
    momentum = max(float(np.max(np.abs(v))) for n, v in want.items() if "Momentum" in n)
    assert momentum > 1e-3, momentum


def equivalence(tmp_path, count, extra=(), global_batch=4, steps=3, images=8):
    data, list_path, flags = dataset(tmp_path, images)
    args = ["--batch-size", str(global_batch), "--num-steps", str(steps)] + flags
    workers = Workers("train.py", train_argv(data, list_path, str(tmp_path / "multi"),
                                            *args, *extra), count, str(tmp_path / "logs"))
    try:
        # The reference meanwhile, in this process: one worker, the global batch.
        assert run_train(train_argv(data, list_path, str(tmp_path / "one"), *args,
                                    *extra)) == 0
        codes = workers.wait()
    finally:
        workers.kill()
    assert codes == [0] * count, "\n".join(workers.log(i) for i in range(count))
    assert "worker 1 of %d: all workers joined" % count in workers.log(1)
    assert_same_variables(checkpoint_values(str(tmp_path / "multi")),
                          checkpoint_values(str(tmp_path / "one")))
    return workers


def test_two_workers_train_as_one_process_with_the_global_batch(tmp_path):
    workers = equivalence(tmp_path, 2)
    assert "step 3/3" in workers.log(0)
    assert "step 3/3" not in workers.log(1)  # progress lines are the chief's


@pytest.mark.slow
def test_three_workers_train_as_one_process(tmp_path):
    equivalence(tmp_path, 3, global_batch=6, images=12)


@pytest.mark.slow
def test_towers_and_accumulation_inside_each_worker(tmp_path):
    equivalence(tmp_path, 2, ["--num-gpus", "2", "--tower-device", "cpu",
                              "--grad-update-every", "2"], steps=2)


@pytest.mark.slow
def test_multi_scale_training_over_workers(tmp_path):
    equivalence(tmp_path, 2, ["--train-scales", "1,0.5"], steps=2)


@pytest.mark.slow
def test_a_full_restart_resumes_from_the_chiefs_snapshot(tmp_path):
    data, list_path, flags = dataset(tmp_path)
    snapshots = str(tmp_path / "multi")

    def argv(directory, steps):
        return train_argv(data, list_path, directory, "--batch-size", "4",
                          "--num-steps", str(steps), *flags)
    run_workers("train.py", argv(snapshots, 2), 2, str(tmp_path / "first"))
    workers = run_workers("train.py", argv(snapshots, 4), 2, str(tmp_path / "second"))
    for i in range(2):
        assert "starting at global step 2" in workers.log(i)
    # One process stopped and resumed the same way (--num-steps sets the
    # poly schedule, so 2 then 4 differs from 4 straight).
    assert run_train(argv(str(tmp_path / "one"), 2)) == 0
    assert run_train(argv(str(tmp_path / "one"), 4)) == 0
    assert_same_variables(checkpoint_values(snapshots),
                          checkpoint_values(str(tmp_path / "one")))


# Slow, with the other failure paths of several workers (test_worker_failures.py):
# the fast suite keeps two workers training as one process.
@pytest.mark.slow
def test_a_killed_worker_stops_the_others_and_a_restart_resumes(tmp_path):
    data, list_path, flags = dataset(tmp_path)
    snapshots = str(tmp_path / "multi")

    def argv(steps):
        return train_argv(data, list_path, snapshots, "--batch-size", "4",
                          "--num-steps", str(steps), "--save-pred-every", "2", *flags)
    workers = Workers("train.py", argv(1000), 2, str(tmp_path / "killed"))
    codes, killed = workers.kill_on_line(0, r"saved .*model\.ckpt-4", 1)
    log = workers.log(0)
    assert codes[0] == 75, log
    assert workers.ended[0] - killed < 60
    assert re.search(r"worker 0: lost worker 1 \(127\.0\.0\.1:\d+\)", log), log
    assert "Restart all workers" in log
    last = int(tf.train.latest_checkpoint(snapshots).rsplit("-", 1)[1])
    assert last >= 4
    workers = run_workers("train.py", argv(last + 1), 2, str(tmp_path / "restart"))
    for i in range(2):
        assert "starting at global step %d" % last in workers.log(i)
    assert "step %d/%d" % (last + 1, last + 1) in workers.log(0)


@pytest.mark.slow
def test_distributed_evaluation_equals_one_process(tmp_path):
    data = str(tmp_path / "data")
    names = ["img%d" % i for i in range(5)]  # 3 and 2: uneven shares
    for i, name in enumerate(names):
        write_voc_pair(data, name, (33, 41), num_classes=NUM_CLASSES, seed=i)
    list_path = os.path.join(data, "val.txt")
    with open(list_path, "w") as f:
        f.writelines("/JPEGImages/%s.jpg /SegmentationClassAug/%s.png\n" % (n, n)
                     for n in names)
    model = str(tmp_path / "model")
    save_tiny_model(model, num_classes=NUM_CLASSES, seed=4)

    def argv(confusion):
        return ["--data-dir", data, "--data-list", list_path, "--restore-from", model,
                "--num-classes", str(NUM_CLASSES), "--save-confusion", confusion,
                "--intra-op-threads", "1"]
    one = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "evaluate.py")]
                         + argv(str(tmp_path / "one.npy")), capture_output=True,
                         text=True, timeout=TIMEOUT, cwd=REPO_ROOT)
    assert one.returncode == 0, one.stderr
    workers = run_workers("evaluate.py", argv(str(tmp_path / "multi.npy")), 2,
                          str(tmp_path / "logs"))
    np.testing.assert_array_equal(np.load(str(tmp_path / "multi.npy")),
                                  np.load(str(tmp_path / "one.npy")))
    miou = re.findall(r"mIoU \d\.\d+", one.stdout)[-1]
    assert miou in workers.log(0)
    assert "mIoU" not in workers.log(1).replace("mIoU=", "")
