"""The dense CRF of a stream of images on workers, results in input order.

pydensecrf's workers are processes; the TensorFlow CRF's are threads of
this process, since its session.run releases the GIL while its own thread
pools work, and one graph serves every image. Each thread has a CRF
session of its own with one thread (``backend_tf.crf_session_config(1)``):
beside the network every CPU-second counts, and running the CRF's two
kernels side by side, as a CRF alone on the machine does, cost more of them.
Measured in evaluate.py on 20 generated 500x375 images (Zen 5 EPYC, 2
cores, fp32, one CRF thread): 0.97-0.98 s/image with a one-thread session,
1.04-1.05 with the standalone one, pydensecrf on two processes 1.05-1.08.
With --bf16 the CRF is the slower stage, and one CRF thread left a core to
the network's short steps: 1.07-1.08 s/image, against 0.82-0.90 with a
thread per core and pydensecrf's 0.77-0.82; hence a thread per core.

The CRF itself needs numpy only (this module and ``crf``). Worker processes also
re-import the main script, as Python does for every forkserver or spawn
child: evaluate.py and inference.py import TensorFlow inside their main()
for that reason (at their top it cost each worker ~5 s and ~0.5 GiB).
"""
import collections
import concurrent.futures
import logging
import multiprocessing
import signal
import threading
from concurrent.futures.process import BrokenProcessPool

from deeplab_resnet.crf import DEFAULT_BACKEND, crf_labels

log = logging.getLogger(__name__)


class CrfError(RuntimeError):
    """The CRF failed on an image; the message names it, ``__cause__`` says why."""


def _worker_context():
    """Start method for CRF workers: never a plain fork of the caller.

    The caller runs TensorFlow, whose thread pools may hold locks at any
    moment; a forked child inherits those locks but not the threads. A
    forkserver is a fresh interpreter that forks the workers; it imports this
    module (numpy only) once, and each worker then imports the main script
    (see the module doc) and starts in well under a second.
    Without forkserver (Windows), workers are spawned.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def _ignore_sigint():
    """Workers leave Ctrl-C to the main process, which shuts the pool down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CrfPool(object):
    """The dense CRF of a stream of images, on workers, in order.

    ``submit`` queues one image and returns the jobs that have finished by
    then, oldest first and never out of order; ``drain`` waits for the rest.
    At most ``max_pending`` jobs are queued or running: beyond that
    ``submit`` waits for the oldest, so memory stays flat (each job holds
    its image and probabilities, H * W * (3 + 4 C) bytes). With 0 workers
    the CRF runs in this process inside ``submit``, as it did before pools.

    Args:
      params: ``CrfConfig``.
      workers: workers (processes for pydensecrf, threads for the
        'tensorflow' backend), or 0.
      max_pending: default twice the workers, so that each has the next job
        at hand when it finishes.
    Raises (from ``submit`` and ``drain``):
      CrfError: the CRF failed on an image, or a worker died; the message
        names the image.
    """

    def __init__(self, params, workers, max_pending=None, backend=DEFAULT_BACKEND):
        if workers < 0:
            raise ValueError("CRF workers must be 0 or more, got %d." % workers)
        self.params = params
        self.backend = backend
        self.workers = workers
        self.max_pending = max_pending or 2 * max(workers, 1)
        self._pending = collections.deque()
        self._executor = None
        self._local = threading.local()  # each CRF thread's TensorFlowCrf
        self._thread_crfs = []
        # 'forkserver', 'spawn' or 'thread'; None when the CRF runs inside submit.
        self.start_method = None
        if workers and backend == "tensorflow":
            self.start_method = "thread"
            self._executor = concurrent.futures.ThreadPoolExecutor(
                workers, thread_name_prefix="crf")
            log.info("TensorFlow CRF on %d threads", workers)
        elif workers:
            context = _worker_context()
            self.start_method = context.get_start_method()
            self._executor = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_ignore_sigint)
            log.info("CRF on %d worker processes (%s)", workers, self.start_method)

    @classmethod
    def for_stage(cls, stage):
        """The pool of a ``params.CrfStage``, or None for None (no CRF)."""
        if stage is None:
            return None
        return cls(stage.params, stage.workers, backend=stage.backend)

    @property
    def pending(self):
        """Jobs submitted and not yet handed back."""
        return len(self._pending)

    def submit(self, image, probs, name, tag=None):
        """Queue the CRF of one image.

        Args:
          image: uint8 RGB [H, W, 3]; probs: float [H, W, C] (``dense_crf``).
          name: how errors refer to the image, e.g. its path.
          tag: anything the caller needs back with the result.
        Returns:
          list of (tag, label) for the jobs finished so far, in submission
          order; label: int32 [H, W] (``crf_labels``). Jobs before a failed
          one are always handed back before its ``CrfError`` is raised.
        """
        if self._executor is None:
            return [(tag, self._call(crf_labels, name, image, probs, self.params,
                                     self.backend))]
        if self.start_method == "thread":
            future = self._call(self._executor.submit, name, self._thread_labels, image, probs)
        else:
            future = self._call(self._executor.submit, name, crf_labels, image, probs,
                                self.params, self.backend)
        self._pending.append((name, tag, future))
        finished = []
        if len(self._pending) > self.max_pending:
            finished.append(self._result(*self._pending.popleft()))
        while self._pending and self._pending[0][2].done():
            if finished and self._pending[0][2].exception() is not None:
                break  # hand back what is done; the error comes next call
            finished.append(self._result(*self._pending.popleft()))
        return finished

    def _thread_labels(self, image, probs):
        """``crf_labels`` on this CRF thread's own one-thread TensorFlow CRF."""
        crf = getattr(self._local, "crf", None)
        if crf is None:
            from deeplab_resnet.crf import backend_tf
            crf = self._local.crf = backend_tf.TensorFlowCrf(
                self.params, session_config=backend_tf.crf_session_config(1),
                channel_groups=1)
            self._thread_crfs.append(crf)
        return crf.labels(image, probs)

    def drain(self):
        """Yield (tag, label) for every job still queued, in order."""
        while self._pending:
            yield self._result(*self._pending.popleft())

    def _result(self, name, tag, future):
        return tag, self._call(future.result, name)

    @staticmethod
    def _call(function, name, *args):
        try:
            return function(*args)
        except BrokenProcessPool as err:
            raise CrfError("The CRF of %s did not finish: a CRF worker process "
                           "died (killed, or out of memory?). Run with fewer "
                           "--crf-workers, or 0." % name) from err
        except Exception as err:
            raise CrfError("The CRF failed on %s: %s: %s"
                           % (name, type(err).__name__, err)) from err

    def close(self):
        """Stop the workers; jobs not yet handed back are dropped."""
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for crf in self._thread_crfs:
            crf.close()
        self._thread_crfs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
