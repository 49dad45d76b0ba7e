"""Lost workers: a watchdog thread that probes every peer, and the exit that skips teardown.

TensorFlow alone does not bound failures: when one of three workers dies,
one survivor gets an error at once while another waits for a peer that
already aborted; and a worker waiting for an absent chief retries the
leader's step-id RPC forever, whatever the op and run timeouts say. So a
``Watchdog`` thread probes every peer with a tiny op (after the first
collective, when all are up; a probe of a peer that was never up blocks in
device discovery) and ends the process with ``EXIT_LOST_WORKER`` when a
peer's port is closed (killed, crashed) or it has answered nothing for
``peer_timeout`` (hung, unreachable). Before the first collective a startup
deadline does the same. Exits go through ``os._exit`` (``exit_process``): a
daemon thread inside a TF call aborts normal interpreter teardown, and a
gRPC server has no clean shutdown.

A worker that stops on an error it can name (a file it cannot decode, a
label out of range) says so first: it writes the error into a string
variable on its own device, which is what the peers' probes read, and
keeps its server up until they have left (``Watchdog.tell_peers``). Each
survivor then logs "worker 1 (host:port) stopped: <the error>" and exits
with that worker's status, instead of finding a lost worker. Before the
group formed the same status is read too: the startup poll asks every peer
that listens, so a worker that stops before the first step is heard for
certain, not caught leaving between two polls.
"""
import logging
import os
import socket
import sys
import threading
import time

from deeplab_resnet.runtime import first_error_line, tf

log = logging.getLogger(__name__)

# Exit status of a worker that lost a peer (EX_TEMPFAIL: restart them all).
EXIT_LOST_WORKER = 75
RESTART_ADVICE = ("Restart all workers (the same command on each): training resumes "
                  "from the chief's last snapshot, an evaluation starts again.")
# Every worker's string resource variable that its peers' probes read:
# empty while it runs, "<exit status>\t<error>" once it stops on an error.
STATUS_VARIABLE = "deeplab_worker_status"


def _status_handle(task):
    with tf.device("/job:worker/replica:0/task:%d/device:CPU:0" % task):
        return tf.raw_ops.VarHandleOp(dtype=tf.string, shape=[],
                                      shared_name=STATUS_VARIABLE)


def set_status(target, task, text):
    """Write ``text`` into worker ``task``'s status variable, through this
    process's server at ``target`` (its own device only: no peer needed)."""
    with tf.Graph().as_default() as graph:
        write = tf.raw_ops.AssignVariableOp(resource=_status_handle(task),
                                            value=tf.constant(text))
    config = tf.ConfigProto()
    config.device_filters.append("/job:worker/task:%d" % task)
    with tf.Session(target, graph=graph, config=config) as sess:
        sess.run(write)


def _status_probe(target, own, peer):
    """(session, op): reads worker ``peer``'s status variable, in a session on
    this worker's server (at ``target``) that sees only itself and ``peer``."""
    with tf.Graph().as_default() as graph:
        probe = tf.raw_ops.ReadVariableOp(resource=_status_handle(peer), dtype=tf.string)
    config = tf.ConfigProto()
    config.device_filters.extend(["/job:worker/task:%d" % own, "/job:worker/task:%d" % peer])
    return tf.Session(target, graph=graph, config=config), probe


def _said(raw):
    """(status, error) from a status variable's text, or None while it runs."""
    if not raw:
        return None
    status, _, error = raw.decode("utf-8", "replace").partition("\t")
    return int(status), error


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
        self._said = {}
        self._asking, self._answered = set(), set()
        self._verdict = {}
        WATCHING.add(self)

    def startup_deadline(self, seconds):
        """Exit unless ``started()`` is called within ``seconds``.

        The peers' ports are polled meanwhile, and each peer that listens is
        asked its status, so that the verdict names the workers that never
        listened or never answered, or says why one stopped, not a survivor
        that gave up first.
        """
        threading.Thread(target=self._poll_startup, args=(seconds,), daemon=True,
                         name="startup-deadline").start()

    def _poll_startup(self, seconds):
        ever_up, closed, deadline = set(), {}, time.time() + seconds
        while not (self._started or self._stop.is_set()) and time.time() < deadline:
            for t in self._peers:
                up = port_open(self.task.workers[t], 0.5)
                closed[t] = 0 if up else closed.get(t, 0) + 1
                if up:
                    ever_up.add(t)
                    self._ask(t)
            stopped = self._stopped_peer()
            if stopped:
                self._fire(*stopped)
                return
            # A peer that listened and then closed its port (twice in a row)
            # has left: waiting out the deadline would not help.
            if any(t in ever_up and closed[t] >= 2 for t in self._peers):
                break
            time.sleep(1.0)
        if not (self._started or self._stop.is_set()):
            self._fire(*self._startup_verdict(seconds, ever_up))

    def _startup_verdict(self, seconds, ever_up):
        """(lost, message) when the startup poll gives up."""
        never = [t for t in self._peers if t not in ever_up]
        gone = [t for t in self._peers
                if t in ever_up and not port_open(self.task.workers[t])]
        if gone:
            return ({t: "left" for t in gone},
                    "worker %d: %s listened, then left before every worker joined; its "
                    "own log says why. %s" % (self.task.index,
                                              ", ".join(map(self.task.name, gone)),
                                              RESTART_ADVICE))
        with self._lock:
            silent = [t for t in self._peers if t in ever_up and t not in self._answered]
        why = []
        if never:
            why.append("never listened: %s" % ", ".join(map(self.task.name, never)))
        if silent:
            why.append("%s listen%s but never answered as a worker (another program may "
                       "hold the port, or it failed to start: its own log says why)" % (
                           ", ".join(map(self.task.name, silent)),
                           "s" if len(silent) == 1 else ""))
        return ({t: "did not join" for t in never + silent},
                "worker %d: the workers did not all join within %.0fs (--startup-timeout; "
                "%s). %s" % (self.task.index, seconds,
                             "; ".join(why) or "all listen, but the group did not form",
                             RESTART_ADVICE))

    def _ask(self, task):
        """Read a listening peer's status before the group formed, in a
        thread of its own (one at a time per peer): whatever listens on its
        port may not be a TensorFlow server that answers."""
        with self._lock:
            if task in self._asking:
                return
            self._asking.add(task)

        def read():
            try:
                sess, probe = _status_probe(self.cluster.server.target, self.task.index,
                                            task)
                with sess:
                    said = _said(sess.run(probe, options=tf.RunOptions(
                        timeout_in_ms=int(self.probe_timeout * 1000))))
            except Exception:  # noqa: BLE001 - not up yet, or not a worker: no news
                said = False
            with self._lock:
                self._asking.discard(task)
                if said is not False:
                    self._answered.add(task)
                if said:
                    self._said[task] = said
        threading.Thread(target=read, daemon=True, name="ask-worker-%d" % task).start()

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
        """Stop judging the peers (they are about to exit too); this watchdog
        leaves ``WATCHING``."""
        self._stop.set()
        WATCHING.remove(self)

    def _probe_loop(self, task):
        sess, probe = _status_probe(self.cluster.server.target, self.task.index, task)
        options = tf.RunOptions(timeout_in_ms=int(self.probe_timeout * 1000))
        with sess:
            while not self._stop.is_set():
                self._probe(task, sess, probe, options)
                self._stop.wait(self.interval)

    def _probe(self, task, sess, probe, options):
        try:
            said = sess.run(probe, options=options)
        except Exception as err:  # noqa: BLE001 - any failure counts
            why = ("no answer within %gs" % self.probe_timeout
                   if isinstance(err, tf.errors.DeadlineExceededError)
                   else "%s: %s" % (type(err).__name__, first_error_line(err)))
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
            if said:
                self._said[task] = _said(said)

    def _stopped_peer(self):
        """(lost, message, status) for the first peer that said why it
        stopped, else None."""
        with self._lock:
            if not self._said:
                return None
            task, (status, error) = min(self._said.items())
        error = error if error.endswith(".") else error + "."
        return ({task: "stopped: %s" % error},
                "worker %d: %s stopped: %s Stopping too; once that is fixed, %s" % (
                    self.task.index, self.task.name(task), error,
                    RESTART_ADVICE[0].lower() + RESTART_ADVICE[1:]), status)

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

    def _judge(self):
        """The lost peers, after leaving (``_fire``) if a peer said why it stopped."""
        stopped = self._stopped_peer()
        if stopped:
            self._fire(*stopped)
        return self._lost()

    def _monitor(self):
        while not self._stop.wait(0.5):
            lost = self._judge()
            if lost:
                self._fire(lost, lost_message(self.task, lost))
                return

    def _fire(self, lost, message, status=EXIT_LOST_WORKER):
        with self._lock:
            if self._fired or self._stop.is_set():
                return
            self._fired, self._verdict = True, lost
        log.error(message)
        exit_process(status)

    def tell_peers(self, status, error, linger=20.0):
        """Leave ``status`` and ``error`` where the peers' probes read them,
        then wait (up to ``linger`` seconds) until every peer has left.

        Before every peer is up the peers' startup poll reads the same status
        (``_ask``), so it is the same either way.
        """
        if self._fired:
            return
        set_status(self.cluster.server.target, self.task.index,
                   "%d\t%s" % (status, " ".join(error.split())))
        deadline = time.time() + linger
        while time.time() < deadline and self._a_peer_listens():
            time.sleep(0.5)

    def _a_peer_listens(self):
        return any(port_open(self.task.workers[t], 0.5) for t in self._peers)

    def wait_for_verdict(self, seconds):
        """After a failed collective: the peers found lost within ``seconds``."""
        if not self._started:
            return {t: "not listening" for t in self._peers
                    if not port_open(self.task.workers[t])}
        deadline = time.time() + seconds
        while time.time() < deadline:
            lost = self._judge()
            if lost:
                return lost
            time.sleep(0.25)
        return {}


class Watching(object):
    """The watchdogs of this process that still watch: each from when it is
    made until it stops (``Watchdog.stop``), so that ``exit_process`` tells
    the peers of the runs still on, and a finished run's watchdog is let go."""

    def __init__(self):
        self._lock = threading.Lock()
        self._watchdogs = []

    def add(self, watchdog):
        with self._lock:
            self._watchdogs.append(watchdog)

    def remove(self, watchdog):
        with self._lock:
            if watchdog in self._watchdogs:
                self._watchdogs.remove(watchdog)

    def active(self):
        with self._lock:
            return list(self._watchdogs)


WATCHING = Watching()


def exit_process(status, reason=None):
    """Leave now with ``status``, logs flushed, skipping interpreter teardown.

    A watchdog thread inside a TF call makes normal teardown abort
    ("terminate called ... FATAL: exception not rethrown", SIGABRT), and a
    gRPC server has no clean shutdown, so a worker leaves with os._exit.
    With a ``reason`` (the error it stops on) the peers are told first
    (``Watchdog.tell_peers``).
    """
    watching = WATCHING.active()
    for watchdog in watching:
        watchdog.stop()
    if reason and status:
        for watchdog in watching:
            watchdog.tell_peers(status, reason)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
