"""Several machines, one synchronous run: TF_CONFIG, the gRPC server, collectives, the watchdog.

Every machine runs the same command; the standard ``TF_CONFIG`` environment
variable says who is who::

    TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222"]},
                "task": {"type": "worker", "index": 0}}'

Each worker starts a ``tf.distribute.Server`` and runs its own copy of the
graph in a session on it (between-graph replication: variables replicated
on every worker, no parameter server). Sums over the workers use
TensorFlow's collective ops (``CollectiveReduce``, ``CollectiveBcastSend`` /
``Recv``), the ring all-reduce ``MultiWorkerMirroredStrategy`` runs
underneath. The strategy itself is not used: its v1 optimizer sums the
gradients itself and scales the loss by 1/replicas, which does not fit the
solver's "sum the gradient sums and the pixel counts, divide once"; its
initial broadcast happens before a restore; and its health checks are
eager-only. ``SyncReplicasOptimizer`` fills a step with whichever gradients
come first (the chief's own, twice) and leaves the chief blocked forever
when a worker dies. The ring result is bitwise identical on every worker,
so the replicated variables stay bitwise identical.

Worker 0 is the chief: it restores and writes snapshots; ``broadcast_from_chief``
gives everyone its values.

Failures. TensorFlow alone does not bound them: when one of three workers
dies, one survivor gets an error at once while another waits for a peer
that already aborted; and a worker waiting for an absent chief retries the
leader's step-id RPC forever, whatever the op and run timeouts say. So a
``Watchdog`` thread probes every peer with a tiny op (after the first
collective, when all are up; a probe of a peer that was never up blocks in
device discovery) and ends the process with ``EXIT_LOST_WORKER`` when a
peer's port is closed (killed, crashed) or it has answered nothing for
``peer_timeout`` (hung, unreachable). Before the first collective a startup
deadline does the same. Exits go through ``os._exit`` (``exit_process``): a
daemon thread inside a TF call aborts normal interpreter teardown, and a
gRPC server has no clean shutdown.

The server listens on all interfaces (TensorFlow hard-codes "0.0.0.0:port")
without authentication: run it on a private network or behind a firewall.
"""
import dataclasses
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from typing import Tuple

from deeplab_resnet import process
from deeplab_resnet.runtime import tf
from tensorflow.python.ops import collective_ops  # noqa: E402

log = logging.getLogger(__name__)

# Exit status of a worker that lost a peer (EX_TEMPFAIL: restart them all).
EXIT_LOST_WORKER = 75
# Gradients are flattened and concatenated into packs of at most this many
# bytes, one collective each (ResNet-101: 178 MB, 3 packs).
PACK_BYTES = 64 << 20
# Every worker's CPU:0 forms the one collective group.
_GROUP_KEY = 1
_FIRST_INSTANCE_KEY = 1000
RESTART_ADVICE = ("Restart all workers (the same command on each) to resume from "
                  "the chief's last snapshot.")


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
      ValueError: TF_CONFIG is not JSON, has other jobs than 'worker' (worker
        0 is the chief; there is no 'chief' or 'ps' job), or a bad index.
    """
    env = os.environ if env is None else env
    raw = env.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except ValueError as err:
        raise ValueError("TF_CONFIG is not valid JSON (%s): %r" % (err, raw[:200]))
    cluster, task = spec.get("cluster") or {}, spec.get("task") or {}
    if sorted(cluster) != ["worker"]:
        raise ValueError("TF_CONFIG: only a 'worker' job is supported (worker 0 is the "
                         "chief); got jobs %s." % sorted(cluster))
    workers = tuple(cluster["worker"])
    if task.get("type") != "worker":
        raise ValueError("TF_CONFIG: task type must be 'worker', got %r."
                         % task.get("type"))
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(workers):
        raise ValueError("TF_CONFIG: task index %r is not in 0..%d."
                         % (index, len(workers) - 1))
    if len(set(workers)) != len(workers):
        raise ValueError("TF_CONFIG: duplicate worker addresses %s." % list(workers))
    if len(workers) == 1:
        log.info("TF_CONFIG lists one worker: single-process run.")
        return None
    return WorkerTask(workers, index)


class Cluster(object):
    """This worker's server, session config and collective ops.

    Build the same graph, in the same order, on every worker: collective
    instance keys are handed out in construction order and must match.
    Chief-only graph parts hold no collective.

    Args:
      task: ``WorkerTask``.
      config: the session ConfigProto (threads, and ``device_count`` for CPU
        towers); the server is created with it, since the server, not the
        session, owns the devices and the collective group leader.
      step_timeout: seconds a training collective may wait for the others
        (they wait while the chief saves a snapshot or validates).
      startup_timeout: seconds for every worker to join (and for barriers).
    """

    def __init__(self, task, *, config, step_timeout=1800.0, startup_timeout=300.0):
        self.task = task
        self.index, self.num_workers, self.is_chief = (task.index, task.num_workers,
                                                       task.is_chief)
        self.step_timeout = float(step_timeout)
        self.startup_timeout = float(startup_timeout)
        self.device = "/job:worker/replica:0/task:%d/device:CPU:0" % self.index
        self._next_key = _FIRST_INSTANCE_KEY
        self.watchdog = None
        self.config = tf.ConfigProto()
        self.config.CopyFrom(config)
        # Only in the server's config does the leader reach the collective
        # param resolver; in the session's alone the first collective hangs.
        self.config.experimental.collective_group_leader = "/job:worker/replica:0/task:0"
        # Own devices only: no discovery of (maybe absent) peers, and
        # '/cpu:1' still means this worker's.
        del self.config.device_filters[:]
        self.config.device_filters.append("/job:worker/task:%d" % self.index)
        self.server = tf.distribute.Server(
            tf.train.ClusterSpec({"worker": list(task.workers)}), job_name="worker",
            task_index=self.index, config=self.config, start=True)
        _SERVERS.append(self.server)
        process.set_exit(exit_process)
        log.info("worker %d of %d%s: server on %s", self.index, self.num_workers,
                 " (chief)" if self.is_chief else "", task.workers[self.index])

    def session(self, graph=None):
        return tf.Session(self.server.target, graph=graph, config=self.config)

    def _key(self):
        self._next_key += 1
        return self._next_key

    def all_reduce(self, tensor, merge_op="Add", timeout=None):
        """``tensor`` summed (or 'Max') over the workers, the same on each."""
        with tf.device(self.device):
            return collective_ops.all_reduce(
                tensor, self.num_workers, _GROUP_KEY, self._key(), merge_op=merge_op,
                final_op="Id", communication_hint="ring",
                timeout=self.step_timeout if timeout is None else timeout)

    def all_reduce_sum(self, tensors, pack_bytes=PACK_BYTES):
        """Sums of ``tensors`` over the workers, in few collectives.

        Tensors of one dtype are flattened and concatenated, in order, into
        packs of at most ``pack_bytes``: one collective per pack, not per
        variable (ResNet-101 has 300 of them).
        """
        out = [None] * len(tensors)
        by_dtype = {}
        for i, tensor in enumerate(tensors):
            by_dtype.setdefault(tensor.dtype.base_dtype.name, []).append(i)
        for dtype in sorted(by_dtype):
            pack, size = [], 0
            for i in by_dtype[dtype]:
                nbytes = (tensors[i].get_shape().num_elements()
                          * tensors[i].dtype.base_dtype.size)
                if pack and size + nbytes > pack_bytes:
                    self._reduce_pack(tensors, pack, out)
                    pack, size = [], 0
                pack.append(i)
                size += nbytes
            self._reduce_pack(tensors, pack, out)
        return out

    def _reduce_pack(self, tensors, pack, out):
        with tf.device(self.device), tf.name_scope("all_reduce_pack"):
            sizes = [tensors[i].get_shape().num_elements() for i in pack]
            total = self.all_reduce(tf.concat([tf.reshape(tensors[i], [-1])
                                               for i in pack], 0))
            for i, part in zip(pack, tf.split(total, sizes)):
                out[i] = tf.reshape(part, tensors[i].get_shape())

    def broadcast_from_chief(self, variables):
        """An op giving every worker the chief's values of ``variables``.

        Run after the chief's restore: weights, momentum, BatchNorm
        statistics and global_step all come from the chief's snapshot,
        which the other workers never read (no race with a save). As the
        first collective it also forms the group, so it takes
        ``startup_timeout``.
        """
        ops = []
        with tf.device(self.device), tf.name_scope("broadcast_from_chief"):
            for var in variables:
                key, shape, dtype = self._key(), var.get_shape(), var.dtype.base_dtype
                if self.is_chief:
                    ops.append(collective_ops.broadcast_send(
                        var.read_value(), shape, dtype, self.num_workers, _GROUP_KEY,
                        key, communication_hint="ring", timeout=self.startup_timeout))
                else:
                    ops.append(tf.assign(var, collective_ops.broadcast_recv(
                        shape, dtype, self.num_workers, _GROUP_KEY, key,
                        communication_hint="ring", timeout=self.startup_timeout)).op)
        return tf.group(ops, name="broadcast_from_chief")

    def barrier(self, name="barrier"):
        """An op that returns once every worker has run it."""
        with tf.name_scope(name):
            return self.all_reduce(tf.constant([1.0]), timeout=self.startup_timeout)

    def join(self):
        """Wait (up to ``startup_timeout``) until every worker has joined.

        For a run whose graph holds no other collective before its end
        (evaluation); training's broadcast forms the group instead.
        """
        with tf.Graph().as_default() as graph:
            barrier = self.barrier()
        with self.session(graph) as sess:
            sess.run(barrier)

    def sum_array(self, array):
        """A numpy array summed over the workers (integers stay exact).

        Waits up to ``step_timeout`` for the others, which may have more to do.
        """
        with tf.Graph().as_default() as graph:
            local = tf.placeholder(tf.as_dtype(array.dtype), array.shape)
            total = self.all_reduce(local)
        with self.session(graph) as sess:
            return sess.run(total, {local: array})

    def describe_failure(self, err):
        """The message for a failed collective: who was lost, what to do.

        Asks the watchdog first (up to 20 s): TensorFlow's error names no
        worker when a peer hung, and may name a survivor that gave up.
        """
        lost = self.watchdog.wait_for_verdict(20.0) if self.watchdog else {}
        if self.watchdog:
            self.watchdog.stop()  # this message says it; the caller exits
        if not lost:
            named = re.findall(r"remote target /job:worker/replica:0/task:(\d+)", str(err))
            lost = {t: "named in TensorFlow's error"
                    for t in sorted({int(t) for t in named} - {self.index})[:1]}
        detail = "%s: %s" % (type(err).__name__, _first_line(err))
        if lost:
            return lost_message(self.task, lost, detail)
        return ("worker %d: a collective failed while every peer still answers; a "
                "peer may be slower than --step-timeout %.0fs allows (%s). %s"
                % (self.index, self.step_timeout, detail, RESTART_ADVICE))


def lost_message(task, lost, detail=None):
    """'worker 1: lost worker 0 (host:port): why; stopping. Restart all ...'"""
    return "worker %d: lost %s; stopping%s. %s" % (
        task.index, "; ".join("%s: %s" % (task.name(t), why)
                              for t, why in sorted(lost.items())),
        " (%s)" % detail if detail else "", RESTART_ADVICE)


def port_open(address, timeout=1.0):
    """True if something accepts TCP connections at ``host:port``."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


class Watchdog(object):
    """Watches the peers and ends this process when one is lost.

    Monitoring only: one thread per peer runs a tiny op placed on that peer
    every ``interval`` seconds (own graph and session, ``timeout_in_ms``).
    A peer is lost after ``failures`` failed probes in a row while its port
    refuses connections (process gone), or when no probe has succeeded for
    ``peer_timeout`` seconds (hung or cut off). Probe timeouts alone do not
    count fast: probes run on the peer's inter-op pool, which long ops of a
    healthy peer can fill. The verdict is logged, then the process exits
    with ``EXIT_LOST_WORKER``: the main thread may be blocked in a
    ``Session.run`` that nothing else can interrupt.
    """

    def __init__(self, cluster, *, peer_timeout=45.0, interval=2.0, probe_timeout=10.0,
                 failures=2):
        self.cluster, self.task = cluster, cluster.task
        self.peer_timeout, self.interval = peer_timeout, interval
        self.probe_timeout, self.failures = probe_timeout, failures
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = self._fired = False
        self._peers = [t for t in range(self.task.num_workers) if t != self.task.index]
        self._last_ok = {t: time.time() for t in self._peers}
        self._fail_count = {t: 0 for t in self._peers}
        self._last_err = {t: None for t in self._peers}
        self._port_closed = {t: False for t in self._peers}
        self._verdict = {}
        _WATCHDOGS.append(self)

    def startup_deadline(self, seconds):
        """Exit unless ``started()`` is called within ``seconds``.

        The peers' ports are polled meanwhile, so that the verdict names the
        workers that never listened, not a survivor that gave up first.
        """
        def poll():
            ever_up, deadline = set(), time.time() + seconds
            while not (self._started or self._stop.is_set()) and time.time() < deadline:
                ever_up.update(t for t in self._peers if t not in ever_up
                               and port_open(self.task.workers[t], 0.5))
                time.sleep(1.0)
            if self._started or self._stop.is_set():
                return
            never = [t for t in self._peers if t not in ever_up]
            gone = [t for t in self._peers
                    if t in ever_up and not port_open(self.task.workers[t])]
            why = "; ".join(["never listened: %s" % ", ".join(map(self.task.name, never))]
                            * bool(never) + ["listened, then left: %s" % ", ".join(
                                map(self.task.name, gone))] * bool(gone))
            self._fire({t: "did not join" for t in never or gone},
                       "worker %d: the workers did not all join within %.0fs "
                       "(--startup-timeout; %s). %s" % (
                           self.task.index, seconds,
                           why or "all listen, but the group did not form",
                           RESTART_ADVICE))
        threading.Thread(target=poll, daemon=True, name="startup-deadline").start()

    def started(self):
        """Every peer is up (a collective completed): start probing them."""
        self._started = True
        for t in self._peers:
            self._last_ok[t] = time.time()
            threading.Thread(target=self._probe_loop, args=(t,), daemon=True,
                             name="probe-worker-%d" % t).start()
        threading.Thread(target=self._monitor, daemon=True, name="watchdog").start()
        return self

    def stop(self):
        """Stop judging the peers (they are about to exit too)."""
        self._stop.set()

    def _probe_loop(self, task):
        graph = tf.Graph()
        with graph.as_default(), \
                tf.device("/job:worker/replica:0/task:%d/device:CPU:0" % task):
            probe = tf.constant(task, name="probe") + 1
        config = tf.ConfigProto()
        config.device_filters.extend(["/job:worker/task:%d" % self.task.index,
                                      "/job:worker/task:%d" % task])
        options = tf.RunOptions(timeout_in_ms=int(self.probe_timeout * 1000))
        with tf.Session(self.cluster.server.target, graph=graph, config=config) as sess:
            while not self._stop.is_set():
                self._probe(task, sess, probe, options)
                self._stop.wait(self.interval)

    def _probe(self, task, sess, probe, options):
        try:
            sess.run(probe, options=options)
        except Exception as err:  # noqa: BLE001 - any failure counts
            why = ("no answer within %gs" % self.probe_timeout
                   if isinstance(err, tf.errors.DeadlineExceededError)
                   else "%s: %s" % (type(err).__name__, _first_line(err)))
            closed = not port_open(self.task.workers[task])
            with self._lock:
                self._fail_count[task] += 1
                self._last_err[task], self._port_closed[task] = why, closed
                if self._fail_count[task] == 1 and not self._stop.is_set():
                    log.warning("probe of %s failed (%s%s)", self.task.name(task), why,
                                ", port closed" if closed else "")
            return
        with self._lock:
            if self._fail_count[task]:
                log.info("%s answers again", self.task.name(task))
            self._last_ok[task], self._fail_count[task] = time.time(), 0

    def _lost(self):
        now, lost = time.time(), {}
        with self._lock:
            for t in self._peers:
                if self._fail_count[t] >= self.failures and self._port_closed[t]:
                    lost[t] = "process gone (port closed; %s)" % self._last_err[t]
                elif now - self._last_ok[t] > self.peer_timeout:
                    lost[t] = "no answer for %.0fs (--peer-timeout)" % (
                        now - self._last_ok[t])
        return lost

    def _monitor(self):
        while not self._stop.wait(0.5):
            lost = self._lost()
            if lost:
                self._fire(lost, lost_message(self.task, lost))
                return

    def _fire(self, lost, message):
        with self._lock:
            if self._fired or self._stop.is_set():
                return
            self._fired, self._verdict = True, lost
        log.error(message)
        exit_process(EXIT_LOST_WORKER)

    def wait_for_verdict(self, seconds):
        """After a failed collective: the peers found lost within ``seconds``."""
        if not self._started:
            return {t: "not listening" for t in self._peers
                    if not port_open(self.task.workers[t])}
        deadline = time.time() + seconds
        while time.time() < deadline:
            lost = self._lost()
            if lost:
                return lost
            time.sleep(0.25)
        return {}


def start(task, *, config, step_timeout=1800.0, startup_timeout=300.0,
          peer_timeout=45.0):
    """This worker's ``Cluster``, its ``Watchdog`` (``.watchdog``) on the
    startup deadline.

    Call ``cluster.watchdog.started()`` once the first collective has completed.
    """
    cluster = Cluster(task, config=config, step_timeout=step_timeout,
                      startup_timeout=startup_timeout)
    cluster.watchdog = Watchdog(cluster, peer_timeout=peer_timeout)
    cluster.watchdog.startup_deadline(startup_timeout)
    return cluster


_SERVERS = []
_WATCHDOGS = []


def active():
    """True once this process has started a server (see ``exit_process``)."""
    return bool(_SERVERS)


def exit_process(status):
    """Leave now with ``status``, logs flushed, skipping interpreter teardown.

    A watchdog thread inside a TF call makes normal teardown abort
    ("terminate called ... FATAL: exception not rethrown", SIGABRT), and a
    gRPC server has no clean shutdown, so a worker leaves with os._exit.
    """
    for watchdog in _WATCHDOGS:
        watchdog.stop()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _first_line(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() and "Graph execution error" not in line:
            return line[:300]
    return lines[0][:300] if lines else ""
