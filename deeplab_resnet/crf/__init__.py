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
(``cli.add_crf_flags``) so they can be cross-validated on a held-out set.

The package, one job per module: ``params`` (``CrfConfig`` and the input
checks), ``backend_pydensecrf`` (Kraehenbuehl & Koltun's code),
``permutohedral`` (the lattice filter as TensorFlow ops), ``backend_tf``
(mean field as a TensorFlow graph and its session), ``pool`` (worker
processes). This module holds the entry points: ``dense_crf`` and
``crf_labels``. ``pydensecrf`` (pip package ``pydensecrf2``) and TensorFlow
are imported inside the functions, so that everything else works without
them.

The CRF runs on the CPU, one image at a time, and takes about as long as the
network; ``pool.CrfPool`` runs it on worker processes so that evaluate.py and
inference.py keep the network busy on the next images meanwhile, and hands the
results back in input order, equal to the in-process CRF's. This module and
``pool`` need numpy only, so the workers start without TensorFlow.
"""
import threading

import numpy as np

from deeplab_resnet.crf import backend_pydensecrf
from deeplab_resnet.crf.backend_pydensecrf import (  # noqa: F401 (the public names)
    INSTALL_HINT, require_pydensecrf, unary_from_probs)
from deeplab_resnet.crf.params import (  # noqa: F401
    BACKENDS, DEFAULT_BACKEND, DEFAULTS, PROB_EPSILON, CrfConfig, CrfStage, check_inputs)

# The TensorFlow CRF of each parameter set, built once per process (the
# lock: CrfPool's threads may ask for it at once).
_TENSORFLOW_CRFS = {}
_TENSORFLOW_CRFS_LOCK = threading.Lock()


def dense_crf(image, probs, params=DEFAULTS, backend=DEFAULT_BACKEND):
    """Mean-field inference of the dense CRF on one image.

    Args:
      image: uint8 RGB array [H, W, 3], the photo the network saw.
      probs: float array [H, W, C], softmax output at the image's size.
      params: ``CrfConfig``.
      backend: 'pydensecrf' (Kraehenbuehl & Koltun's code) or 'tensorflow'
        (``backend_tf.TensorFlowCrf``: the same model and inference as
        TensorFlow ops, one graph for every image, kept for the process).
    Returns:
      float32 array [H, W, C]: the CRF's marginals (argmax them for labels).
    Raises:
      ValueError: image and probabilities of different sizes, an image that
        is not RGB, or an unknown backend.
      ImportError: pydensecrf is not installed.
    """
    image, probs = check_inputs(image, probs)
    if backend == "tensorflow":
        return _tensorflow_crf(params).marginals(image, probs)
    return backend_pydensecrf.marginals(image, probs, _checked(backend, params))


def crf_labels(image, probs, params=DEFAULTS, backend=DEFAULT_BACKEND):
    """Class ids after the CRF: the argmax of ``dense_crf``'s marginals (the
    TensorFlow CRF takes it in its graph, without making them).

    Returns:
      int32 array [H, W]. This is what ``CrfPool`` workers compute and send
      back (a quarter of the int64 argmax, a C-th of the marginals).
    """
    image, probs = check_inputs(image, probs)
    if backend == "tensorflow":
        return _tensorflow_crf(params).labels(image, probs)
    marginals = backend_pydensecrf.marginals(image, probs, _checked(backend, params))
    return marginals.argmax(axis=2).astype(np.int32)


def _tensorflow_crf(params):
    """The process's ``backend_tf.TensorFlowCrf`` for these parameters."""
    from deeplab_resnet.crf import backend_tf
    with _TENSORFLOW_CRFS_LOCK:
        if params not in _TENSORFLOW_CRFS:
            _TENSORFLOW_CRFS[params] = backend_tf.TensorFlowCrf(params)
        return _TENSORFLOW_CRFS[params]


def _checked(backend, params):
    """``params`` for pydensecrf, or the error for a backend that is neither."""
    if backend != "pydensecrf":
        raise ValueError("Unknown CRF backend %r; choose from %s."
                         % (backend, ", ".join(BACKENDS)))
    return params
