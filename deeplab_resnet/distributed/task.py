"""This process's place among the workers: TF_CONFIG read once, and its gRPC server.

Every machine runs the same command; the standard ``TF_CONFIG`` environment
variable says who is who::

    TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]},
                "task": {"type": "worker", "index": 0}}'

Worker 0 is the chief. The server listens on all interfaces (TensorFlow
hard-codes "0.0.0.0:port") without authentication: run it on a private
network or behind a firewall.
"""
import dataclasses
import json
import logging
import os
import socket
from typing import Tuple

from deeplab_resnet import process
from deeplab_resnet.distributed.watchdog import exit_process, set_status
from deeplab_resnet.runtime import first_error_line, tf

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerTask:
    """This process's place in the cluster: every worker's address, its index."""
    workers: Tuple[str, ...]
    index: int

    @property
    def num_workers(self):
        return len(self.workers)

    @property
    def is_chief(self):
        return self.index == 0

    def name(self, task):
        return "worker %d (%s)" % (task, self.workers[task])


def task_from_env(env=None):
    """The ``WorkerTask`` TF_CONFIG describes; None without one or with one worker.

    Raises:
      ValueError: TF_CONFIG is not JSON or not of the shape above, has other
        jobs than 'worker' (worker 0 is the chief; there is no 'chief' or
        'ps' job), a bad index, or two workers on one port of one machine.
    """
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except ValueError as err:
        raise ValueError("TF_CONFIG is not valid JSON (%s): %r" % (err, raw[:200]))
    workers, index = _parse_spec(spec)
    if len(workers) == 1:
        log.info("TF_CONFIG lists one worker: single-process run.")
        return None
    return WorkerTask(workers, index)


_SHAPE = ('TF_CONFIG must look like {"cluster": {"worker": ["host:port", ...]}, '
          '"task": {"type": "worker", "index": 0}}')


def _kind(value):
    return "null" if value is None else {bool: "a boolean", int: "a number", float: "a number",
                                         str: "a string", list: "a list",
                                         dict: "an object"}[type(value)]


def _parse_spec(spec):
    """(worker addresses, this task's index) of a decoded TF_CONFIG, checked."""
    if not isinstance(spec, dict):
        raise ValueError("%s; it is %s." % (_SHAPE, _kind(spec)))
    cluster, task = spec.get("cluster"), spec.get("task")
    for name, value in (("cluster", cluster), ("task", task)):
        if not isinstance(value, dict):
            raise ValueError('%s; its "%s" is %s.' % (_SHAPE, name, _kind(value)))
    if sorted(cluster) != ["worker"]:
        raise ValueError("TF_CONFIG: only a 'worker' job is supported (worker 0 is the "
                         "chief); got jobs %s." % sorted(cluster))
    workers = cluster["worker"]
    if not (isinstance(workers, list) and workers
            and all(isinstance(w, str) and _port(w) for w in workers)):
        raise ValueError('%s; its "worker" is %s, not a list of "host:port" strings.'
                         % (_SHAPE, json.dumps(workers)))
    if task.get("type") != "worker":
        raise ValueError("TF_CONFIG: task type must be 'worker', got %r."
                         % task.get("type"))
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError('TF_CONFIG: task "index" must be a whole number (this worker\'s '
                         'place in "worker"), not %s %s.' % (_kind(index), json.dumps(index)))
    if not 0 <= index < len(workers):
        raise ValueError("TF_CONFIG: task index %r is not in 0..%d."
                         % (index, len(workers) - 1))
    _check_distinct(workers)
    return tuple(workers), index


def _port(address):
    """The port of 'host:port' (1..65535), or None."""
    host, _, port = address.rpartition(":")
    return int(port) if host and port.isdigit() and 0 < int(port) < 65536 else None


# Names a worker's host may have that all mean this machine's loopback.
_LOOPBACK = ("localhost", "ip6-localhost", "::1", "[::1]", "0.0.0.0")


def _machine(host):
    """One name per machine where the spelling differs but the machine does not."""
    host = host.lower()
    if host in _LOOPBACK or host.startswith("127."):
        return "this machine"
    return "this machine" if host in (socket.gethostname().lower(),) else host


def _check_distinct(workers):
    """Two workers on the same port of the same machine: the second could never listen."""
    seen = {}
    for i, address in enumerate(workers):
        key = (_machine(address.rpartition(":")[0]), _port(address))
        if key in seen:
            raise ValueError("TF_CONFIG: workers %d (%s) and %d (%s) are the same port of "
                             "one machine; give each worker its own host:port."
                             % (seen[key], workers[seen[key]], i, address))
        seen[key] = i


def start_server(task, config):
    """This worker's started ``tf.distribute.Server`` and the session config it owns.

    Once a server runs, the process leaves through ``exit_process``
    (``process.set_exit``): a gRPC server has no clean shutdown.

    Args:
      config: the session ConfigProto (threads, and ``device_count`` for CPU
        towers); the server is created with it, since the server, not the
        session, owns the devices and the collective group leader.
    Returns:
      (server, ConfigProto): sessions on ``server.target`` use that config.
    Raises:
      OSError: the server cannot listen on this worker's address.
    """
    own = tf.ConfigProto()
    own.CopyFrom(config)
    # Only in the server's config does the leader reach the collective
    # param resolver; in the session's alone the first collective hangs.
    own.experimental.collective_group_leader = "/job:worker/replica:0/task:0"
    # Own devices only: no discovery of (maybe absent) peers, and
    # '/cpu:1' still means this worker's.
    del own.device_filters[:]
    own.device_filters.append("/job:worker/task:%d" % task.index)
    # A session on a server runs on the server's pools, sized by this
    # config; TensorFlow refuses per-session pools there.
    own.use_per_session_threads = False
    try:
        server = tf.distribute.Server(
            tf.train.ClusterSpec({"worker": list(task.workers)}), job_name="worker",
            task_index=task.index, config=own, start=True)
    except (tf.errors.OpError, RuntimeError) as err:
        raise OSError(
            "worker %d cannot listen on %s, its address in TF_CONFIG (%s). Another "
            "process may hold that port, or the host is not this machine: free the "
            "port or change TF_CONFIG on every worker." % (
                task.index, task.workers[task.index], first_error_line(err))) from None
    process.set_exit(exit_process)
    set_status(server.target, task.index, "")  # what the peers' probes read
    log.info("worker %d of %d%s: server on %s", task.index, task.num_workers,
             " (chief)" if task.is_chief else "", task.workers[task.index])
    return server, own
