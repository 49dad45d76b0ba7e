"""Fully connected (dense) CRF post-processing, as in DeepLab.

DeepLab sharpens the network's coarse, blurry object boundaries with the
fully connected CRF of Kraehenbuehl & Koltun (NIPS 2011): the unary term is
the negative log of the network's softmax, and two Potts-model Gaussian
pairwise terms pull labels together:

* an appearance (bilateral) kernel over position and colour, weight
  ``bi_w``, widths ``bi_xy_std`` pixels and ``bi_rgb_std`` intensity levels,
  so that nearby pixels of similar colour take the same label;
* a smoothness kernel over position only, weight ``pos_w``, width
  ``pos_xy_std``, which removes small isolated regions.

Mean-field inference runs for ``iterations`` steps (10 in DeepLab).

Default values and where they come from:

* ``pos_w = 3``, ``pos_xy_std = 3``, 10 iterations: fixed in the DeepLab
  papers (Chen et al., ICLR 2015 and TPAMI 2017, "we fix w2 = 3 and
  sigma_gamma = 3"); only the bilateral parameters are cross-validated.
* ``bi_w = 4``, ``bi_xy_std = 67``, ``bi_rgb_std = 3``: the values
  cross-validated for DeepLab-v2 ResNet-101 on PASCAL VOC 2012, as used by
  the DeepLab-v2 ResNet-101 reproductions (e.g. kazuto1011/deeplab-pytorch,
  ``configs/voc12.yaml``: BI_W 4, BI_XY_STD 67, BI_RGB_STD 3; that file sets
  POS_XY_STD 1 instead of the papers' 3). The VGG-16 DeepLab-LargeFOV
  prototxt used ``bi_w 4, bi_xy_std 121, bi_rgb_std 5``.

The parameters differ per dataset and network; every one is a flag
(``add_crf_flags``) so they can be cross-validated on a held-out set.

``pydensecrf`` (pip package ``pydensecrf2``) is imported lazily, inside the
functions, so that everything else works without it installed.

The CRF runs on the CPU, one image at a time, and takes about as long as the
network; ``CrfPool`` runs it on worker processes so that evaluate.py and
inference.py keep the network busy on the next images meanwhile, and hands the
results back in input order, equal to the in-process CRF's.
"""
import collections
import concurrent.futures
import logging
import multiprocessing
import os
import signal
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from deeplab_resnet import utils

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install pydensecrf2"
# Probabilities are clipped before the log so that a confident 0 from the
# softmax is a large but finite energy.
PROB_EPSILON = 1e-8


class CrfParams(collections.namedtuple(
        "CrfParams", ["iterations", "pos_w", "pos_xy_std", "bi_w", "bi_xy_std",
                      "bi_rgb_std"])):
    """Dense CRF parameters, DeepLab-v2 ResNet-101 VOC defaults (see module doc)."""

    def __new__(cls, iterations=10, pos_w=3.0, pos_xy_std=3.0, bi_w=4.0,
                bi_xy_std=67.0, bi_rgb_std=3.0):
        if iterations < 0:
            raise ValueError("--crf-iters must be >= 0, got %r." % iterations)
        for name, value in (("--crf-pos-xy-std", pos_xy_std),
                            ("--crf-bi-xy-std", bi_xy_std),
                            ("--crf-bi-rgb-std", bi_rgb_std)):
            if value <= 0:
                raise ValueError("%s must be positive, got %r." % (name, value))
        return super(CrfParams, cls).__new__(
            cls, int(iterations), float(pos_w), float(pos_xy_std), float(bi_w),
            float(bi_xy_std), float(bi_rgb_std))


DEFAULTS = CrfParams()


def add_crf_flags(parser):
    """``--crf`` and one flag per CRF parameter, shared by evaluate/inference."""
    group = parser.add_argument_group(
        "dense CRF", "Fully connected CRF post-processing (needs `%s`).\n"
        "Defaults: DeepLab-v2 ResNet-101 on PASCAL VOC." % INSTALL_HINT)
    group.add_argument("--crf", action="store_true",
                       help="Refine the prediction with the dense CRF "
                            "(default: off).")
    group.add_argument("--crf-iters", type=int, default=DEFAULTS.iterations,
                       help="Mean-field iterations (default: %(default)s).")
    group.add_argument("--crf-pos-w", type=float, default=DEFAULTS.pos_w,
                       help="Weight of the position-only smoothness kernel "
                            "(default: %(default)s).")
    group.add_argument("--crf-pos-xy-std", type=float, default=DEFAULTS.pos_xy_std,
                       help="Width in pixels of the smoothness kernel "
                            "(default: %(default)s).")
    group.add_argument("--crf-bi-w", type=float, default=DEFAULTS.bi_w,
                       help="Weight of the position+colour (bilateral) kernel "
                            "(default: %(default)s).")
    group.add_argument("--crf-bi-xy-std", type=float, default=DEFAULTS.bi_xy_std,
                       help="Width in pixels of the bilateral kernel "
                            "(default: %(default)s).")
    group.add_argument("--crf-bi-rgb-std", type=float, default=DEFAULTS.bi_rgb_std,
                       help="Width in intensity levels (0..255) of the bilateral "
                            "kernel (default: %(default)s).")
    group.add_argument("--crf-workers", type=int, default=None,
                       help="Processes running the CRF while the network goes "
                            "on with the next images; results keep the input "
                            "order and are the same for any count. 0 runs it "
                            "in the main process between images (default: one "
                            "per available core).")


def params_from_flags(args):
    """``CrfParams`` from parsed ``add_crf_flags`` flags, or None without --crf.

    Raises:
      ValueError: a parameter out of range.
        Also when --crf is given but pydensecrf is not installed: raised
        now, before any image is processed, as the user error it is.
    """
    if not args.crf:
        return None
    params = CrfParams(args.crf_iters, args.crf_pos_w, args.crf_pos_xy_std,
                       args.crf_bi_w, args.crf_bi_xy_std, args.crf_bi_rgb_std)
    try:
        _densecrf()
    except ImportError as err:
        raise ValueError(str(err))
    return params


def pool_from_flags(args, params):
    """A ``CrfPool`` for ``--crf-workers``, or None when ``params`` is None.

    Raises:
      ValueError: a negative worker count.
    """
    if params is None:
        return None
    workers = args.crf_workers
    if workers is None:
        workers = utils.available_cores()
    if workers < 0:
        raise ValueError("--crf-workers must be 0 (CRF in the main process) or "
                         "more, got %d." % workers)
    return CrfPool(params, workers)


def _densecrf():
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as err:
        raise ImportError("The dense CRF needs pydensecrf, which is not "
                          "installed (%s). Install it with `%s`, or run without "
                          "--crf." % (err, INSTALL_HINT))
    return densecrf


def unary_from_probs(probs):
    """Negative log probabilities in pydensecrf's layout.

    Args:
      probs: float array [H, W, C], each pixel summing to 1.
    Returns:
      C-contiguous float32 array [C, H * W].
    """
    probs = np.clip(np.asarray(probs, dtype=np.float32), PROB_EPSILON, 1.0)
    height, width, classes = probs.shape
    unary = -np.log(probs).reshape(height * width, classes).T
    return np.ascontiguousarray(unary, dtype=np.float32)


def dense_crf(image, probs, params=DEFAULTS):
    """Mean-field inference of the dense CRF on one image.

    Args:
      image: uint8 RGB array [H, W, 3], the photo the network saw.
      probs: float array [H, W, C], softmax output at the image's size.
      params: ``CrfParams``.
    Returns:
      float32 array [H, W, C]: the CRF's marginals (argmax them for labels).
    Raises:
      ValueError: image and probabilities of different sizes, or an image
        that is not RGB.
      ImportError: pydensecrf is not installed.
    """
    image = np.asarray(image)
    probs = np.asarray(probs)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("The CRF needs an RGB image [H, W, 3]; got shape %s."
                         % (image.shape,))
    if probs.ndim != 3 or probs.shape[:2] != image.shape[:2]:
        raise ValueError("The CRF needs probabilities [H, W, C] at the image's "
                         "size %s; got shape %s." % (image.shape[:2], probs.shape))
    densecrf = _densecrf()
    height, width, classes = probs.shape
    crf = densecrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(unary_from_probs(probs))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(
        sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
        # pydensecrf's typed memoryviews want C order, uint8 and a writeable
        # buffer (arrays from PIL are read-only).
        rgbim=np.require(image, np.uint8, ["C", "W"]), compat=params.bi_w)
    marginals = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return marginals.reshape(classes, height, width).transpose(1, 2, 0)


def crf_labels(image, probs, params=DEFAULTS):
    """Class ids after the CRF: the argmax of ``dense_crf``'s marginals.

    Returns:
      int32 array [H, W]. This is what ``CrfPool`` workers compute and send
      back (a quarter of the int64 argmax, a C-th of the marginals).
    """
    return dense_crf(image, probs, params).argmax(axis=2).astype(np.int32)


class CrfError(RuntimeError):
    """The CRF failed on an image; the message names it, ``__cause__`` says why."""


def _worker_context():
    """Start method for CRF workers: never a plain fork of the caller.

    The caller runs TensorFlow, whose thread pools may hold locks at any
    moment; a forked child inherits those locks but not the threads. A
    forkserver is a fresh interpreter that forks the workers; importing
    this module there once (TensorFlow comes with the package) lets every
    worker start in milliseconds with the import shared. Without forkserver
    (Windows), workers are spawned.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        from multiprocessing import forkserver
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        # Python 3.11's forkserver does not take the caller's sys.path, so
        # outside the repository's root the preload would fail and each
        # worker import TensorFlow on its own (~220 MB each); PYTHONPATH
        # reaches it. Started now, it imports while the caller builds its
        # graph, and the first submit does not wait for that.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + ([saved] if saved else []))
        try:
            forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        return context
    return multiprocessing.get_context("spawn")


def _ignore_sigint():
    """Workers leave Ctrl-C to the main process, which shuts the pool down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CrfPool(object):
    """The dense CRF of a stream of images, on worker processes, in order.

    ``submit`` queues one image and returns the jobs that have finished by
    then, oldest first and never out of order; ``drain`` waits for the rest.
    At most ``max_pending`` jobs are queued or running: beyond that
    ``submit`` waits for the oldest, so memory stays flat (each job holds
    its image and probabilities, H * W * (3 + 4 C) bytes). With 0 workers
    the CRF runs in this process inside ``submit``, as it did before pools.

    Args:
      params: ``CrfParams``.
      workers: worker processes, or 0.
      max_pending: default twice the workers, so that each has the next job
        at hand when it finishes.
    Raises (from ``submit`` and ``drain``):
      CrfError: the CRF failed on an image, or a worker died; the message
        names the image.
    """

    def __init__(self, params, workers, max_pending=None):
        if workers < 0:
            raise ValueError("CRF workers must be 0 or more, got %d." % workers)
        self.params = params
        self.workers = workers
        self.max_pending = max_pending or 2 * max(workers, 1)
        self._pending = collections.deque()
        self._executor = None
        # 'forkserver' or 'spawn'; None when the CRF runs in this process.
        self.start_method = None
        if workers:
            context = _worker_context()
            self.start_method = context.get_start_method()
            self._executor = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_ignore_sigint)
            log.info("CRF on %d worker processes (%s)", workers, self.start_method)

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
            return [(tag, self._call(crf_labels, name, image, probs, self.params))]
        future = self._call(self._executor.submit, name, crf_labels, image, probs,
                            self.params)
        self._pending.append((name, tag, future))
        finished = []
        if len(self._pending) > self.max_pending:
            finished.append(self._result(*self._pending.popleft()))
        while self._pending and self._pending[0][2].done():
            if finished and self._pending[0][2].exception() is not None:
                break  # hand back what is done; the error comes next call
            finished.append(self._result(*self._pending.popleft()))
        return finished

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

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
