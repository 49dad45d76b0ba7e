"""Several workers on their unhappy paths: a signal to one worker, flags that differ.

Worker processes on 127.0.0.1 (``test_multiworker.Workers``: reserved ports,
a deadline, killed in ``finally``), tiny network, the demo-sized data.
"""
import re
import signal
import time

import pytest
import tensorflow.compat.v1 as tf

from test_multiworker import TIMEOUT, Workers, dataset, run_workers
from test_train import train_argv

pytestmark = pytest.mark.timeout(2 * TIMEOUT + 300)


def test_sigterm_to_one_worker_stops_all_after_the_same_step_with_a_snapshot(tmp_path):
    """A scheduler's SIGTERM to worker 1 alone: every worker stops after one
    common step, the chief writes that step's snapshot, all exit 130 within
    seconds, and rerunning the commands resumes from it."""
    data, list_path, flags = dataset(tmp_path)
    snapshots = str(tmp_path / "multi")

    def argv(steps):
        return train_argv(data, list_path, snapshots, "--batch-size", "4",
                          "--num-steps", str(steps), "--save-pred-every", "1000", *flags)
    workers = Workers("train.py", argv(1000), 2, str(tmp_path / "term"))
    try:
        workers.wait_for_line(0, r"step 3/1000")
        workers.procs[1].send_signal(signal.SIGTERM)
        signalled = time.time()
        codes = workers.wait()
    finally:
        workers.kill()
    logs = [workers.log(i) for i in range(2)]
    assert codes == [130, 130], "\n".join(logs)
    assert max(workers.ended) - signalled < 60, "\n".join(logs)
    steps = [int(re.search(r"interrupted at step (\d+)", log).group(1)) for log in logs]
    assert steps[0] == steps[1], steps
    assert tf.train.latest_checkpoint(snapshots).endswith("model.ckpt-%d" % steps[0])
    # The same commands resume every worker from that snapshot.
    resumed = run_workers("train.py", argv(steps[0] + 1), 2, str(tmp_path / "resume"))
    for i in range(2):
        assert "starting at global step %d" % steps[0] in resumed.log(i)


@pytest.mark.parametrize("flag, values, shown", [
    ("--batch-size", ("4", "8"), "(4 on one, 8 on another)"),
    ("--learning-rate", ("1e-5", "1e-4"), "(1e-05 on one, 0.0001 on another)"),
    ("--num-classes", ("5", "7"), "(5 on one, 7 on another)"),
])
def test_workers_refuse_flags_that_differ_naming_the_flag_and_both_values(
        tmp_path, flag, values, shown):
    data, list_path, flags = dataset(tmp_path)
    if flag == "--num-classes":
        # Random weights: the tiny model's file is for 5 classes.
        flags = flags[:flags.index("--restore-from")] + ["--is-training"]
    base = ["--batch-size", "4", "--num-steps", "3"] + flags
    argvs = []
    for value in values:
        args = list(base)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
        argvs.append(train_argv(data, list_path, str(tmp_path / "multi"), *args))
    workers = Workers("train.py", argvs[0], 2, str(tmp_path / "logs"),
                      argv_of=lambda i: argvs[i])
    try:
        codes = workers.wait()
    finally:
        workers.kill()
    logs = [workers.log(i) for i in range(2)]
    assert codes == [2, 2], "\n".join(logs)
    for log in logs:
        assert "%s differs between the workers %s" % (flag, shown) in log, log
        assert "step 1/" not in log
    assert tf.train.latest_checkpoint(str(tmp_path / "multi")) is None
