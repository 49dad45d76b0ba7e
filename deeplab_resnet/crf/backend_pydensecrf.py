"""The dense CRF by Kraehenbuehl & Koltun's own code, through pydensecrf.

``pydensecrf`` (pip package ``pydensecrf2``) is imported inside the
functions, so that everything else works without it installed.
"""
import numpy as np

from deeplab_resnet.crf import pruning
from deeplab_resnet.crf.params import PROB_EPSILON

INSTALL_HINT = "pip install pydensecrf2"


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


def marginals(image, probs, params):
    """Mean-field marginals [H, W, C] of checked inputs (see ``crf.dense_crf``).

    ``params``: any object with CrfConfig's attributes; read as they are.
    With pruned classes (``pruning``) the CRF runs on the kept ones and the
    folded channel, whose zero compatibility keeps it out of the messages.
    """
    densecrf = require_pydensecrf()
    height, width, classes = probs.shape
    kept = pruning.kept_classes(probs, params.prune_threshold)
    folded = pruning.folded_probs(probs, kept)
    labels = folded.shape[2]
    crf = densecrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(unary_from_probs(folded))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std,
                            compat=_compatibility(params.pos_w, len(kept), labels))
    crf.addPairwiseBilateral(
        sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
        # pydensecrf's typed memoryviews want C order, uint8 and a writeable
        # buffer (arrays from PIL are read-only).
        rgbim=np.require(image, np.uint8, ["C", "W"]),
        compat=_compatibility(params.bi_w, len(kept), labels))
    result = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    result = result.reshape(labels, height, width).transpose(1, 2, 0)
    return pruning.full_marginals(result, kept, classes)


def _compatibility(weight, kept, labels):
    """Potts ``weight`` for pydensecrf; with a folded channel, its diagonal
    form (pydensecrf's message is ``diag(v) Q``, Potts' ``-w Q``) with 0 for
    that channel, which then neither sends nor receives messages."""
    if kept == labels:
        return weight
    return np.array([-weight] * kept + [0.0], np.float32)
