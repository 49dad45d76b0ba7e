"""Worker processes of TF_CONFIG on 127.0.0.1 for the multi-worker tests:
``Workers`` (started, waited for with a deadline, killed in the end),
``run_workers`` and the dataset they train on."""
import json
import os
import re
import signal
import subprocess
import sys
import time

from conftest import REPO_ROOT, reserve_ports, save_tiny_model
from helpers.training import write_dataset

NUM_CLASSES = 5
# The tiny net on unnormalised inputs diverges at higher rates; the
# momentum (the summed gradients) shows a wrong sum or count at any rate.
FLAGS = ["--no-shuffle", "--learning-rate", "1e-5", "--save-num-images", "0",
         "--num-classes", str(NUM_CLASSES), "--intra-op-threads", "1",
         "--startup-timeout", "120"]
# Deadlines, generous on purpose (a shared 2-core machine): measured there
# under a load of 3-4, the workers had all joined at most 31 s after the test
# began (their servers up within 20 s; --startup-timeout 120 is ~4x that), and
# a whole two-worker run of 3 steps took 34 s (TIMEOUT, per Workers, ~7x).
# pytest-timeout's limit lies above two Workers runs (the most a test has),
# so that the deadlines here, which print the worker logs, fire first.
TIMEOUT = 240


def free_ports(count):
    """Distinct free ports on 127.0.0.1, held against other binders until the
    test ends (conftest.reserve_ports: no bind-release race)."""
    return reserve_ports(count)


class Workers(object):
    """``count`` processes of ``script``, worker i with TF_CONFIG index i."""

    def __init__(self, script, args, count, log_dir, timeout=TIMEOUT, argv_of=None,
                 start=None):
        """``argv_of(i)``: worker i's arguments, when they differ from ``args``;
        ``start``: the indices of the workers to start (all by default), the
        others of TF_CONFIG left absent until ``launch`` (``procs`` and
        ``logs`` are in the order of starting)."""
        os.makedirs(log_dir, exist_ok=True)
        self.addresses = ["127.0.0.1:%d" % port for port in free_ports(count)]
        self.deadline = time.time() + timeout
        self._script, self._log_dir = script, log_dir
        self._argv_of = argv_of or (lambda i: args)
        self.logs, self.procs, self.ended = [], [], []
        for i in range(count) if start is None else start:
            self.launch(i)

    def launch(self, i):
        """Start worker ``i`` of TF_CONFIG (now, if ``start`` left it out)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CONFIG=json.dumps(
            {"cluster": {"worker": self.addresses},
             "task": {"type": "worker", "index": i}}))
        self.logs.append(os.path.join(self._log_dir, "w%d.log" % i))
        self.ended.append(None)
        with open(self.logs[-1], "w") as log:
            self.procs.append(subprocess.Popen(
                [sys.executable, os.path.join(REPO_ROOT, self._script)]
                + list(self._argv_of(i)),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                start_new_session=True))

    def log(self, i):
        with open(self.logs[i]) as f:
            return f.read()

    def wait_for_line(self, i, pattern):
        while time.time() < self.deadline:
            if re.search(pattern, self.log(i)):
                return
            assert self.procs[i].poll() is None, self.log(i)
            time.sleep(0.1)
        raise AssertionError("no %r from worker %d:\n%s" % (pattern, i, self.log(i)))

    def wait(self):
        """Every exit status; a worker still running at the deadline is killed."""
        while time.time() < self.deadline and any(p.poll() is None for p in self.procs):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and self.ended[i] is None:
                    self.ended[i] = time.time()
            time.sleep(0.05)
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None and self.ended[i] is None:
                self.ended[i] = time.time()
        self.kill()
        return [p.returncode for p in self.procs]

    def kill_on_line(self, i, pattern, which):
        """SIGKILL worker ``which`` once worker ``i`` logs ``pattern``, then
        ``wait()`` for the others: (exit statuses, time of the kill)."""
        try:
            self.wait_for_line(i, pattern)
            self.kill(which)
            killed = time.time()
            return self.wait(), killed
        finally:
            self.kill()

    def kill(self, which=None):
        for i, proc in enumerate(self.procs):
            if (which is None or i == which) and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def run_workers(script, args, count, log_dir, status=0, **options):
    """``Workers(...)`` waited for; each must exit with ``status``."""
    workers = Workers(script, args, count, log_dir, **options)
    try:
        codes = workers.wait()
    finally:
        workers.kill()
    assert codes == [status] * len(workers.procs), "\n".join(
        workers.log(i) for i in range(len(workers.procs)))
    return workers


def dataset(tmp_path, images=8):
    """(data_dir, list, flags starting from sane tiny weights: random weights
    with frozen BatchNorm diverge within steps)."""
    data = str(tmp_path / "data")
    list_path = write_dataset(data, num_classes=NUM_CLASSES, count=images)
    weights, _ = save_tiny_model(str(tmp_path / "init"), num_classes=NUM_CLASSES)
    return data, list_path, FLAGS + ["--restore-from", weights]
