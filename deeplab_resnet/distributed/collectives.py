"""The unit of synchronisation: sums, broadcasts and barriers over the workers (or over one process).

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

``Local`` is the same interface for one process: a sum over one process is
its input, a broadcast or barrier does nothing, it is always the chief, and
no collective op enters its graph. Code written against the interface (the
solver, the training loop) runs alike on one process and on many.

Worker 0 is the chief: it restores and writes snapshots; ``broadcast``
gives everyone its values. Lost peers are the watchdog's (``watchdog``).
Both classes fit ``interface.Collectives``; TensorFlow's private collective
ops come through ``tf_collectives``.
"""
import logging
import re

import numpy as np

from deeplab_resnet.distributed.task import start_server
from deeplab_resnet.distributed.watchdog import (RESTART_ADVICE, Watchdog,
                                                 lost_message)
from deeplab_resnet.runtime import first_error_line, tf
from deeplab_resnet.distributed import tf_collectives as collective_ops

log = logging.getLogger(__name__)

# Gradients are flattened and concatenated into packs of at most this many
# bytes, one collective each (ResNet-101: 178 MB, 3 packs).
PACK_BYTES = 64 << 20
# Every worker's CPU:0 forms the one collective group.
_GROUP_KEY = 1
_FIRST_INSTANCE_KEY = 1000


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
        self.server, self.config = start_server(task, config)

    def session(self, graph=None):
        return tf.Session(self.server.target, graph=graph, config=self.config)

    def _key(self):
        self._next_key += 1
        return self._next_key

    @property
    def shard(self):
        """(index, count): the rows ``index::count`` of a list this worker reads."""
        return self.index, self.num_workers

    def all_reduce_max(self, tensors):
        """The largest of each of ``tensors`` over the workers."""
        return [self.all_reduce(tensor, merge_op="Max") for tensor in tensors]

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

    def broadcast(self, variables):
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

    def stop_after_step(self, asked, agreed):
        """Whether to stop after a step: only when the step's reduced flag says
        some worker asked (``agreed``). A request that came during the step
        (``asked``) travels in the next step's flag, so that every worker
        stops after the same step: one that stopped alone would leave the
        others waiting in the next all-reduce."""
        return bool(agreed)

    def agreement(self, vector):
        """[2, n]: the largest of ``vector`` over the workers, and minus the
        smallest. As the first collective it forms the group, so it waits up
        to ``startup_timeout``."""
        with tf.name_scope("agreement"):
            both = tf.stack([vector, -vector])
            return self.all_reduce(both, merge_op="Max", timeout=self.startup_timeout)

    def watch_peers(self):
        """Every peer is up (a collective completed): the watchdog starts probing."""
        self.watchdog.started()
        log.info("worker %d of %d: all workers joined", self.index, self.num_workers)

    def stop_watching(self):
        """The run is over: peers leaving are no longer lost."""
        self.watchdog.stop()
        log.info("worker %d of %d: done", self.index, self.num_workers)

    def lost_peer(self, err):
        """The message for an op error of a training step: every step runs
        collectives, so any of its errors may be a peer's (``describe_failure``
        says whether one was lost)."""
        return self.describe_failure(err)

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
        detail = "%s: %s" % (type(err).__name__, first_error_line(err))
        if lost:
            return lost_message(self.task, lost, detail)
        return ("worker %d: a collective failed while every peer still answers; a "
                "peer may be slower than --step-timeout %.0fs allows (%s). %s"
                % (self.index, self.step_timeout, detail, RESTART_ADVICE))


class Local(object):
    """The collectives of a process that trains or evaluates alone.

    Sums and maxima over one process are their inputs (no op is added, so
    a single-process graph holds no collective op), a broadcast or barrier
    has nothing to wait for, and this process is the chief and reads the
    whole list.
    """

    index, num_workers, is_chief, shard, watchdog = 0, 1, True, (0, 1), None

    def __init__(self, *, config=None):
        self.config = config

    def session(self, graph=None):
        return tf.Session(graph=graph, config=self.config)

    def all_reduce(self, tensor, merge_op="Add", timeout=None):
        """A sum or maximum over one process: ``tensor`` itself."""
        return tensor

    def all_reduce_sum(self, tensors):
        return list(tensors)

    def all_reduce_max(self, tensors):
        return list(tensors)

    def broadcast(self, variables):
        return tf.no_op(name="broadcast_from_chief")

    def stop_after_step(self, asked, agreed):
        """Alone, a request stops the run right after the step it came in."""
        return bool(asked or agreed)

    def agreement(self, vector):
        """One process agrees with itself: its values are the largest and the smallest."""
        return tf.stack([vector, -vector])

    def barrier(self, name="barrier"):
        return tf.no_op(name=name)

    def join(self):
        """Nobody to wait for."""

    def sum_array(self, array):
        return np.asarray(array)

    def describe_failure(self, err):
        return "%s: %s" % (type(err).__name__, first_error_line(err))

    def watch_peers(self):
        """Nobody to watch."""

    def stop_watching(self):
        """Nobody to watch."""

    def lost_peer(self, err):
        """None: an op error of one process is its own, not a lost peer."""
        return None


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


def connect(task, *, config, step_timeout=1800.0, startup_timeout=300.0,
            peer_timeout=45.0):
    """The collectives of this process: ``Local`` without a task, else ``start``.

    The one place that tells one process from many; everything after talks
    to the interface.
    """
    if task is None:
        return Local(config=config)
    return start(task, config=config, step_timeout=step_timeout,
                 startup_timeout=startup_timeout, peer_timeout=peer_timeout)
