"""The dense CRF's parameters (``CrfConfig``) and the inputs every backend takes.

Standard library and numpy only: CRF workers, the flag parser and both
backends read it.
"""
import dataclasses
import math

import numpy as np

BACKENDS = ("pydensecrf", "tensorflow")
# Chosen from measurements (docs/speed.md, "The dense CRF"): the pruned CRF
# in TensorFlow uses every core on one image, the only default that was 3x
# DeepLab's CRF in every run, and in evaluate.py it was as fast as
# pydensecrf's worker processes or faster; its labels equal pydensecrf's.
DEFAULT_BACKEND = "tensorflow"
# Probabilities are clipped before the log so that a confident 0 from the
# softmax is a large but finite energy.
PROB_EPSILON = 1e-8
# Classes whose largest probability in an image stays below this are pruned
# from the CRF (``pruning``). Chosen from measurements: see docs/inference.md.
DEFAULT_PRUNE_THRESHOLD = 0.05


@dataclasses.dataclass(frozen=True)
class CrfConfig(object):
    """Dense CRF parameters, DeepLab-v2 ResNet-101 VOC defaults (see ``crf``'s doc).

    ``prune_threshold``: the CRF runs on the classes whose largest
    probability in the image reaches it (``pruning``); 0 runs DeepLab's
    CRF on every class, exactly.

    Frozen, so that it is hashable (the TensorFlow backend keeps one graph
    per config) and travels to CRF workers as it is.

    Raises:
      ValueError: a value that is not finite, a negative weight, a standard
        deviation that is not positive, or fewer than one iteration. A NaN
        or infinite weight would otherwise turn every marginal into NaN,
        and every pixel into class 0, without any error. A prune threshold
        outside [0, 1].
    """
    iterations: int = 10
    pos_w: float = 3.0
    pos_xy_std: float = 3.0
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    prune_threshold: float = DEFAULT_PRUNE_THRESHOLD

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError("CRF %s must be a number, got %r." % (field.name, value))
            if not math.isfinite(value):
                raise ValueError("CRF %s must be finite, got %r." % (field.name, value))
        if self.iterations < 1 or self.iterations != int(self.iterations):
            raise ValueError("CRF iterations must be a whole number >= 1, got %r."
                             % self.iterations)
        for name in ("pos_w", "bi_w"):
            if getattr(self, name) < 0:
                raise ValueError("CRF %s (a kernel weight) must be >= 0, got %r."
                                 % (name, getattr(self, name)))
        for name in ("pos_xy_std", "bi_xy_std", "bi_rgb_std"):
            if getattr(self, name) <= 0:
                raise ValueError("CRF %s (a standard deviation) must be positive, "
                                 "got %r." % (name, getattr(self, name)))
        if not 0 <= self.prune_threshold <= 1:
            raise ValueError("CRF prune_threshold (a probability) must be in [0, 1], "
                             "got %r." % self.prune_threshold)
        object.__setattr__(self, "iterations", int(self.iterations))
        for name in ("pos_w", "pos_xy_std", "bi_w", "bi_xy_std", "bi_rgb_std",
                     "prune_threshold"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def as_dict(self):
        """The parameters by name, for reports such as export_info.json."""
        return dataclasses.asdict(self)


DEFAULTS = CrfConfig()


@dataclasses.dataclass(frozen=True)
class CrfStage(object):
    """The dense CRF on each prediction of evaluate.py or inference.py, and
    where it runs (``pool.CrfPool``).

    params: ``CrfConfig``.
    backend: 'tensorflow' or 'pydensecrf' (``crf.dense_crf``).
    workers: threads ('tensorflow') or processes running the CRF beside
      the network; 0: in the calling process, between images.
    """
    params: CrfConfig
    backend: str = DEFAULT_BACKEND
    workers: int = 0


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
