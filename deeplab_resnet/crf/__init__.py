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

``pydensecrf`` (pip package ``pydensecrf2``) is imported lazily, inside the
functions, so that everything else works without it installed.

The CRF runs on the CPU, one image at a time, and takes about as long as the
network; ``pool.CrfPool`` runs it on worker processes so that evaluate.py and
inference.py keep the network busy on the next images meanwhile, and hands the
results back in input order, equal to the in-process CRF's. This module and
``pool`` need numpy only, so the workers start without TensorFlow.
"""
import collections

import numpy as np

INSTALL_HINT = "pip install pydensecrf2"
BACKENDS = ("pydensecrf", "tensorflow")
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


def require_pydensecrf():
    """The pydensecrf module, or an ImportError that says how to install it."""
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as err:
        raise ImportError("The 'pydensecrf' CRF backend needs pydensecrf, which "
                          "is not installed (%s). Install it with `%s`, or use "
                          "--crf-backend tensorflow (the same CRF as TensorFlow "
                          "ops, nothing to install)." % (err, INSTALL_HINT))
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


def check_inputs(image, probs):
    """(image, probs) as arrays, checked to be an RGB image and its probabilities.

    Raises:
      ValueError: image and probabilities of different sizes, an image that
        is not RGB, or an empty one.
    """
    image = np.asarray(image)
    probs = np.asarray(probs)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("The CRF needs an RGB image [H, W, 3]; got shape %s."
                         % (image.shape,))
    if probs.ndim != 3 or probs.shape[:2] != image.shape[:2]:
        raise ValueError("The CRF needs probabilities [H, W, C] at the image's "
                         "size %s; got shape %s." % (image.shape[:2], probs.shape))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("The CRF needs a non-empty image; got shape %s."
                         % (image.shape,))
    return image, probs


# The TensorFlow CRF of each parameter set, built once per process.
_TENSORFLOW_CRFS = {}


def dense_crf(image, probs, params=DEFAULTS, backend="pydensecrf"):
    """Mean-field inference of the dense CRF on one image.

    Args:
      image: uint8 RGB array [H, W, 3], the photo the network saw.
      probs: float array [H, W, C], softmax output at the image's size.
      params: ``CrfParams``.
      backend: 'pydensecrf' (Kraehenbuehl & Koltun's code) or 'tensorflow'
        (``lattice.TensorFlowCrf``: the same model and inference as
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
        from deeplab_resnet.crf import lattice
        if params not in _TENSORFLOW_CRFS:
            _TENSORFLOW_CRFS[params] = lattice.TensorFlowCrf(params)
        return _TENSORFLOW_CRFS[params].marginals(image, probs)
    if backend != "pydensecrf":
        raise ValueError("Unknown CRF backend %r; choose from %s."
                         % (backend, ", ".join(BACKENDS)))
    densecrf = require_pydensecrf()
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


def crf_labels(image, probs, params=DEFAULTS, backend="pydensecrf"):
    """Class ids after the CRF: the argmax of ``dense_crf``'s marginals.

    Returns:
      int32 array [H, W]. This is what ``CrfPool`` workers compute and send
      back (a quarter of the int64 argmax, a C-th of the marginals).
    """
    return dense_crf(image, probs, params, backend).argmax(axis=2).astype(np.int32)
