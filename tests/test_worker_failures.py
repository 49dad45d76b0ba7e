"""Several workers on their unhappy paths: a signal to one worker, flags that differ,
a chief killed, a worker that never starts, a run that diverges, a bad file on one
worker (mid-run, or before it joined), a port in use.

Worker processes on 127.0.0.1 (``helpers.workers.Workers``: reserved ports,
a deadline, killed in ``finally``), tiny network, the demo-sized data.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from conftest import REPO_ROOT, reserve_ports
from helpers.workers import TIMEOUT, Workers, dataset, run_workers
from helpers.training import run_train, train_argv

# Slow: two worker processes per test, 15-45 s each on 2 idle cores (CI's
# second stage runs them).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * TIMEOUT + 300)]


@pytest.mark.parametrize("signalled", [1, 0])
def test_sigterm_to_one_worker_stops_all_after_the_same_step_with_a_snapshot(tmp_path,
                                                                             signalled):
    """A scheduler's SIGTERM to one worker alone (1, or the chief): every
    worker stops after one common step, the chief writes that step's
    snapshot, all exit 130 within seconds, and rerunning the commands resumes
    from it (checked once)."""
    data, list_path, flags = dataset(tmp_path)
    snapshots = str(tmp_path / "multi")

    def argv(steps):
        return train_argv(data, list_path, snapshots, "--batch-size", "4",
                          "--num-steps", str(steps), "--save-pred-every", "1000", *flags)
    workers = Workers("train.py", argv(1000), 2, str(tmp_path / "term"))
    try:
        workers.wait_for_line(0, r"step 3/1000")
        workers.procs[signalled].send_signal(signal.SIGTERM)
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
    if signalled == 0:
        return
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
    workers = run_workers("train.py", argvs[0], 2, str(tmp_path / "logs"), status=2,
                          argv_of=lambda i: argvs[i])
    logs = [workers.log(i) for i in range(2)]
    for log in logs:
        assert "%s differs between the workers %s" % (flag, shown) in log, log
        assert "step 1/" not in log
    assert tf.train.latest_checkpoint(str(tmp_path / "multi")) is None


def test_a_killed_chief_stops_the_other_worker_naming_it(tmp_path):
    """kill -9 of worker 0 mid-run: worker 1, which may be waiting on the
    chief in a collective, exits 75 within a minute naming worker 0 and
    saying to restart all workers."""
    data, list_path, flags = dataset(tmp_path)
    argv = train_argv(data, list_path, str(tmp_path / "multi"), "--batch-size", "4",
                      "--num-steps", "1000", *flags)
    workers = Workers("train.py", argv, 2, str(tmp_path / "logs"))
    codes, killed = workers.kill_on_line(0, r"step 2/1000 ", 0)
    log = workers.log(1)
    assert codes[1] == 75, log
    assert workers.ended[1] - killed < 60, log
    assert "worker 1: lost worker 0 (%s)" % workers.addresses[0] in log, log
    assert "Restart all workers" in log
    assert "Traceback" not in log


def test_a_worker_that_never_starts_ends_the_wait_at_the_startup_timeout(tmp_path):
    """Worker 1 of TF_CONFIG is never started: worker 0 waits --startup-timeout
    (15 s) for it, no longer, then exits 75 naming it and the flag."""
    data, list_path, flags = dataset(tmp_path)
    flags[flags.index("--startup-timeout") + 1] = "15"
    argv = train_argv(data, list_path, str(tmp_path / "multi"), "--batch-size", "4",
                      "--num-steps", "3", *flags)
    started = time.time()
    workers = run_workers("train.py", argv, 2, str(tmp_path / "logs"), status=75,
                          start=[0])
    log = workers.log(0)
    # The deadline starts once the server is up (some seconds after the
    # process); 60 s of margin on a loaded 2-core machine.
    assert 15 <= workers.ended[0] - started < 15 + 60, (workers.ended[0] - started, log)
    assert re.search(r"worker 0: the workers did not all join within 15s "
                     r"\(--startup-timeout; never listened: worker 1 \(%s\)\)\. "
                     r"Restart all workers" % re.escape(workers.addresses[1]), log), log
    assert "step 1/" not in log
    assert tf.train.latest_checkpoint(str(tmp_path / "multi")) is None


def snapshot_files(snapshot_dir):
    """{name: (size, mtime)} of the snapshot files."""
    return {n: (os.path.getsize(os.path.join(snapshot_dir, n)),
                os.path.getmtime(os.path.join(snapshot_dir, n)))
            for n in os.listdir(snapshot_dir) if n.startswith("model.ckpt")}


def test_divergence_stops_every_worker_at_the_same_step_keeping_the_last_snapshot(
        tmp_path):
    """A rate that blows the weights up at the first step of a resumed run:
    both workers stop with exit 2 at that step with the divergence message,
    and the snapshot directory keeps exactly the sound snapshot it had."""
    data, list_path, flags = dataset(tmp_path)
    snapshots = str(tmp_path / "multi")
    base = ["--batch-size", "4", "--save-pred-every", "1"] + flags
    # Two sound steps first, in this process (a full restart of the workers
    # resumes a one-process snapshot: test_multiworker).
    assert run_train(train_argv(data, list_path, snapshots, *base)) == 0
    good = os.path.join(snapshots, "model.ckpt-2")
    assert tf.train.latest_checkpoint(snapshots) == good
    before = snapshot_files(snapshots)
    diverging = list(base)
    diverging[diverging.index("--learning-rate") + 1] = "1e30"
    workers = run_workers("train.py", train_argv(data, list_path, snapshots, *diverging,
                                                 "--num-steps", "20"),
                          2, str(tmp_path / "logs"), status=2)
    logs = [workers.log(i) for i in range(2)]
    steps = []
    for log in logs:
        found = re.findall(r"error: The (?:weights|loss|momentum)\b.* at step (\d+) "
                           r"\(lr=\S+e\+29\)\. First check the labels", log)
        assert len(found) == 1, log
        steps.append(int(found[0]))
    assert steps == [3, 3], steps
    assert "Nothing was saved from this run after %s. That is the last sound " \
           "snapshot" % good in logs[0]
    assert tf.train.latest_checkpoint(snapshots) == good
    assert snapshot_files(snapshots) == before


def break_file(path):
    """Replace ``path`` by bytes no decoder reads, at once (readers see the
    old file or the broken one, never half of either)."""
    with open(path + ".tmp", "wb") as f:
        f.write(b"this is not an image\n" * 8)
    os.replace(path + ".tmp", path)


def named_snapshots(log, snapshot_dir):
    """The steps of the snapshots in ``snapshot_dir`` a log names, by path or
    as the chief's."""
    return {int(path or chiefs) for path, chiefs in re.findall(
        r"%s/model\.ckpt-(\d+)|the chief's snapshot of step (\d+)"
        % re.escape(snapshot_dir), log)}


@pytest.mark.parametrize("broken", [1, 0])
def test_a_bad_file_on_one_worker_reaches_the_other_by_name(tmp_path, broken):
    """An image of one worker's share becomes unreadable mid-run: that
    worker stops with exit 2 naming the file, and the other, waiting on it in
    an all-reduce, logs "worker N (address) stopped:" with the same file name
    (not a lost worker) and exits 2 as well, within a minute. The chief keeps
    the steps before a bad file of its own; a worker that is not the chief
    never names a snapshot the chief did not write."""
    data, list_path, flags = dataset(tmp_path)
    argv = train_argv(data, list_path, str(tmp_path / "multi"), "--batch-size", "4",
                      "--num-steps", "1000", "--save-pred-every", "1000", *flags)
    # --no-shuffle: worker i reads rows i::2 of the list, img<i> first.
    image = os.path.join(data, "JPEGImages", "img%d.jpg" % broken)
    workers = Workers("train.py", argv, 2, str(tmp_path / "logs"))
    try:
        workers.wait_for_line(0, r"step 2/1000 ")
        break_file(image)
        broken_at = time.time()
        codes = workers.wait()
    finally:
        workers.kill()
    logs = [workers.log(i) for i in range(2)]
    survivor = 1 - broken
    assert codes == [2, 2], "\n".join(logs)
    assert "img%d.jpg" % broken in logs[broken].split("error: ", 1)[-1], logs[broken]
    said = re.search(r"worker %d: worker %d \(%s\) stopped: (.*)" % (
        survivor, broken, re.escape(workers.addresses[broken])), logs[survivor])
    assert said and "img%d.jpg" % broken in said.group(1), logs[survivor]
    assert "Restart all workers" not in said.group(1) and "restart all workers" in said.group(1)
    assert "lost worker" not in logs[survivor], logs[survivor]
    assert max(workers.ended) - broken_at < 60, "\n".join(logs)
    for log in logs:
        assert "Traceback" not in log
    snapshots = str(tmp_path / "multi")
    written = {int(n.split("-")[1].split(".")[0]) for n in os.listdir(snapshots)
               if re.match(r"model\.ckpt-\d+\.index$", n)}
    for log in logs:
        assert named_snapshots(log, snapshots) <= written, (written, log)
    if broken == 0:
        kept = re.search(r"resume from (\S+model\.ckpt-(\d+))\.", logs[0])
        assert kept and int(kept.group(2)) >= 2, logs[0]
        assert tf.train.latest_checkpoint(snapshots) == kept.group(1)


def test_a_port_in_use_is_refused_in_one_line_naming_the_address(tmp_path):
    """Worker 0's port in TF_CONFIG is held by a listening socket: worker 0
    exits 2 at once with one line naming its address and TF_CONFIG, no
    traceback."""
    data, list_path, flags = dataset(tmp_path)
    argv = train_argv(data, list_path, str(tmp_path / "multi"), "--batch-size", "4",
                      "--num-steps", "3", *flags)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = "127.0.0.1:%d" % holder.getsockname()[1]
        other = "127.0.0.1:%d" % reserve_ports(1)[0]
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": [address, other]}, "task": {"type": "worker", "index": 0}}))
        done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train.py")] + argv,
                              env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert re.search(r"error: worker 0 cannot listen on %s, its address in TF_CONFIG "
                     r"\(.+\)\. .*free the port or change TF_CONFIG" % re.escape(address),
                     output), output
    assert "Traceback" not in output


def clock_seconds(hh_mm_ss):
    hours, minutes, seconds = map(int, hh_mm_ss.split(":"))
    return 3600 * hours + 60 * minutes + seconds


def test_the_other_worker_names_a_worker_whose_port_another_program_holds(tmp_path):
    """Worker 0's port is held by another program: worker 0 stops at once
    (its own test above); worker 1, which finds that port listening but never
    answering as a worker, exits 75 at --startup-timeout (15 s) naming worker
    0 and the likely cause."""
    data, list_path, flags = dataset(tmp_path)
    flags[flags.index("--startup-timeout") + 1] = "15"
    argv = train_argv(data, list_path, str(tmp_path / "multi"), "--batch-size", "4",
                      "--num-steps", "3", *flags)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        workers = ["127.0.0.1:%d" % holder.getsockname()[1],
                   "127.0.0.1:%d" % reserve_ports(1)[0]]
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 1}}))
        done = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "train.py")] + argv,
                              env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 75, output
    # The deadline runs from the server's start (the log's clock, to the second).
    up, verdict = [clock_seconds(re.search(r"^(\d\d:\d\d:\d\d) " + line, output,
                                           re.MULTILINE).group(1))
                   for line in ("worker 1 of 2: server on", "worker 1: the workers did not")]
    assert 15 - 1 <= (verdict - up) % 86400 < 15 + 30, output
    assert re.search(r"worker 1: the workers did not all join within 15s \(--startup-timeout; "
                     r"worker 0 \(%s\) listens but never answered as a worker \(another "
                     r"program may hold the port" % re.escape(workers[0]), output), output
    assert "Traceback" not in output


def test_a_worker_that_leaves_before_joining_ends_the_others_wait_within_seconds(tmp_path):
    """Worker 1's check before step 1 finds a label out of range: it exits 2
    naming the file, and worker 0, waiting for it to join, reads why from its
    status (not from catching its port close) and exits 2 saying it, within
    a minute, not at --startup-timeout (120 s)."""
    data, list_path, flags = dataset(tmp_path)
    # --no-shuffle: worker 1 reads rows 1::2 of the list, img1 among them.
    label = os.path.join(data, "SegmentationClassAug", "img1.png")
    Image.fromarray(np.full((33, 33), 200, np.uint8), "L").save(label)
    argv = train_argv(data, list_path, str(tmp_path / "multi"), "--batch-size", "4",
                      "--num-steps", "3", *flags)
    workers = Workers("train.py", argv, 2, str(tmp_path / "logs"), start=[0])
    try:
        workers.wait_for_line(0, r"worker 0 of 2 \(chief\): server on")
        workers.launch(1)
        codes = workers.wait()
    finally:
        workers.kill()
    logs = [workers.log(i) for i in range(2)]
    assert codes == [2, 2], "\n".join(logs)
    assert "img1.png" in logs[1].split("error: ", 1)[-1], logs[1]
    said = re.search(r"worker 0: worker 1 \(%s\) stopped: (.*)" % re.escape(
        workers.addresses[1]), logs[0])
    assert said and "img1.png" in said.group(1), logs[0]
    assert workers.ended[0] - workers.ended[1] < 60, "\n".join(logs)
    assert "step 1/" not in logs[0]
