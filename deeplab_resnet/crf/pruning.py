"""Class pruning: mean field on the classes an image holds, the rest folded into one channel.

Numpy only (CRF workers import it); ``backend_tf`` builds the same rule as
graph ops, and a test holds the two to each other.

**The rule.** A class is kept when its largest probability anywhere in the
image reaches ``CrfConfig.prune_threshold``; at least two are always kept
(the two with the largest peaks, the lower index first on a tie). A
threshold of 0 keeps every class, and the backends then run the unpruned
CRF, the very same computation as before pruning existed. The caller gets
marginals of the full shape [H, W, C], the pruned classes at zero.

**What pruning does to the model.** With Potts compatibility the message a
class receives at pixel i, ``m_i(l) = sum_k w_k sum_j k_k(i, j) Q_j(l)``,
is made of that same class's marginals elsewhere: classes never send each
other messages. They meet only in each pixel's softmax,
``Q_i(l) = p_i(l) exp(m_i(l)) / Z_i`` with ``Z_i = sum_l p_i(l) exp(m_i(l))``
(``p`` the clipped probabilities). So a pruned class p changes the kept
classes' marginals in one way only, through its term ``p_i(p) exp(m_i(p))``
in ``Z_i``. Three ways to treat that term:

* *drop it* (keep the kept classes' probabilities, renormalised): the term
  is 0. At the start every kept marginal is 1 / (1 - r_i) times the full
  CRF's, r_i the pruned mass at pixel i (up to ~0.4 on network-like
  probabilities at temperature 0.25, where 18 absent classes hold 0.01-0.03
  each); the kept classes then send each other larger messages than in the
  full CRF, and where r_i varies across the image, unevenly so. This is
  what moves the labels that pruning moves.
* *fold it, with messages*: one extra class holding ``r_i`` that takes part
  in the pairwise terms. Potts then treats all pruned classes as a single
  label, so neighbours holding different pruned classes reinforce each
  other: its term ``r_i exp(m_i(r))`` with ``m_i(r) = sum_p m_i(p)`` is at
  least the full CRF's ``sum_p p_i(p) exp(m_i(p))``. An upper bound, and it
  costs one more filtered channel.
* *fold it, without messages* (what this module does): one extra channel
  with unary ``-log r_i`` (``r_i`` the sum of the pruned classes'
  probabilities, at least 1e-8 for each, as the clipping gives the full
  CRF) that sends and receives nothing. Its term ``r_i`` is the
  full CRF's with every ``exp(m_i(p))`` set to 1, a lower bound that is
  tight: ``m_i(p) <= (pos_w + bi_w) max_j Q_j(p)`` (the normalised kernels
  average to at most 1), and a pruned class's marginal starts below the
  threshold and only shrinks while the kept classes gather messages, so the
  error factor stays within ``exp(7 * threshold)`` with DeepLab's weights,
  on a term that is itself small. The first iteration starts from the full
  CRF's marginals exactly. It is the model in which the pruned classes'
  pairwise terms are switched off and nothing else.

The last is closest for (about) the same speed: the extra channel is never
filtered in the TensorFlow backend; in pydensecrf it rides along in the
filter, one channel more, with a zero diagonal compatibility. ``misc/benchmark.py
--parts crf`` records it against dropping, on network-like probabilities of
the demo's validation images and the VOC sample photo: folding keeps more
labels equal to the full CRF's. (Folding with messages,
the upper bound, costs a filtered channel more and was not measured.)

The folded channel's marginal (the pruned classes' share) is not returned:
kept marginals are the model's, so a pixel's sum 1 minus that share, which
the pairwise terms drive towards 0 in a few iterations.
"""
import numpy as np

from deeplab_resnet.crf.params import PROB_EPSILON

# At least this many classes are kept: mean field on one class is a no-op.
MIN_KEPT = 2


def kept_classes(probs, threshold):
    """The classes the CRF runs on: indices, ascending, int64 [K], K >= 2.

    Args:
      probs: float array [H, W, C].
      threshold: a class is kept when its largest probability reaches this;
        0 keeps all.
    """
    classes = probs.shape[-1]
    if threshold <= 0 or classes <= MIN_KEPT:
        return np.arange(classes)
    peak = np.asarray(probs).reshape(-1, classes).max(axis=0)
    kept = np.flatnonzero(peak >= threshold)
    if kept.size < MIN_KEPT:
        kept = np.sort(np.argsort(-peak, kind="stable")[:MIN_KEPT])
    return kept


def folded_probs(probs, kept):
    """Clipped probabilities of the kept classes and, when some are pruned,
    one more channel with the pruned ones' sum (see the module doc), at
    least ``PROB_EPSILON`` for each of them as if clipped one by one.

    Args:
      probs: float array [H, W, C]; kept: ``kept_classes``.
    Returns:
      float32 [H, W, K] or [H, W, K + 1], in (0, 1]; not renormalised.
    """
    probs = np.asarray(probs, dtype=np.float32)
    kept_probs = np.clip(probs[..., kept], PROB_EPSILON, 1.0)
    pruned = probs.shape[-1] - len(kept)
    if not pruned:
        return kept_probs
    is_pruned = np.ones(probs.shape[-1], np.float32)
    is_pruned[kept] = 0
    other = np.maximum(probs @ is_pruned, np.float32(PROB_EPSILON * pruned))
    return np.concatenate([kept_probs, other[..., None]], axis=-1)


def full_marginals(marginals, kept, classes):
    """[H, W, classes] float32: the kept classes' marginals in their places
    (the folded channel, if any, left out), the pruned classes at zero."""
    if len(kept) == classes and marginals.shape[-1] == classes:
        return marginals
    full = np.zeros(marginals.shape[:-1] + (classes,), np.float32)
    full[..., kept] = marginals[..., :len(kept)]
    return full
