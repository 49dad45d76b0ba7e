"""The one rule a snapshot must pass: finite, no weight over MAX_ABS_WEIGHT, at most GROWTH_LIMIT times the last sound norm.

The same rule judges the weights in the graph before a save
(``graph_weight_statistics``) and the files when a run resumes
(``weight_statistics``, ``newest_sound_snapshot``), so a snapshot is sound
alike when written and when resumed. ``is_trained`` says which variables
the rule measures, and is the rule ``towers.trained_params`` trains by.
"""
import logging

import numpy as np

from deeplab_resnet import checkpoints
from deeplab_resnet.runtime import tf

log = logging.getLogger(__name__)

# The norm of a snapshot's trained weights (convolution weights and biases)
# may grow at most this much over the last sound weights': a run that
# diverges multiplies it by orders of magnitude within a few steps, while a
# healthy run, even from random weights, stays within a few times its start.
# BatchNorm statistics are left out: from scratch they rightly move from
# 0 and 1 to the activations' statistics, thousands of times larger.
GROWTH_LIMIT = 100.0
# No trained weight comes near this.
MAX_ABS_WEIGHT = 1e8


def is_trained(name):
    """Whether a variable is one the solver trains: convolution weights and
    biases (BatchNorm's parameters and statistics are frozen or averaged)."""
    return name.rsplit("/", 1)[-1] in ("weights", "biases")


def weight_statistics(weights):
    """(L2 norm, largest magnitude) of the trained weights, and whether every
    float value (BatchNorm statistics included) is finite; float64."""
    arrays = {k: np.asarray(v, np.float64) for k, v in weights.items()
              if np.issubdtype(np.asarray(v).dtype, np.floating)}
    trained = [a for k, a in arrays.items() if is_trained(k)]
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.sqrt(sum(np.sum(np.square(a)) for a in trained)))
        largest = float(max((np.max(np.abs(a)) for a in trained if a.size), default=0.0))
    finite = all(np.isfinite(a).all() for a in arrays.values())
    return norm, largest, finite


def graph_weight_statistics(variables):
    """``weight_statistics`` in the graph: (norm and largest
    magnitude of the trained weights, all values finite), scalar tensors.

    The same rule as for a file, so that a snapshot is judged sound alike
    when it is written and when it is resumed. float64, so that only
    non-finite weights give a non-finite norm.

    Args:
      variables: {name: variable}.
    """
    floats = {name: tf.cast(v, tf.float64) for name, v in variables.items()
              if v.dtype.base_dtype.is_floating}
    trained = [v for name, v in floats.items() if is_trained(name)] or \
        [tf.zeros([1], tf.float64)]
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(v)) for v in trained]))
    largest = tf.reduce_max(tf.stack([tf.reduce_max(tf.abs(v)) for v in trained]))
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.is_finite(v))
                                     for v in floats.values()]))
    return norm, largest, finite


def soundness_problem(norm, largest, finite=True, reference_norm=None):
    """Why weights with these ``weight_statistics`` are not a sound model,
    or None.

    Args:
      reference_norm: the norm of the last sound weights (the run's start or
        its last snapshot); growth beyond ``GROWTH_LIMIT`` times it is
        divergence.
    """
    if not (finite and np.isfinite(norm) and np.isfinite(largest)):
        return "weights became non-finite or too large (NaN or inf)"
    if largest > MAX_ABS_WEIGHT:
        return ("weights became non-finite or too large (largest %.3g, over %.0e)"
                % (largest, MAX_ABS_WEIGHT))
    if reference_norm and norm > GROWTH_LIMIT * reference_norm:
        return ("weights became non-finite or too large (norm %.3g, %.3gx the last "
                "sound weights'; at most %gx)" % (norm, norm / reference_norm,
                                                  GROWTH_LIMIT))
    return None


def newest_sound_snapshot(directory):
    """The newest snapshot in ``directory`` that reads in full and is sound.

    A snapshot is sound if its weights are finite, no larger in magnitude
    than ``MAX_ABS_WEIGHT``, and have not grown more than ``GROWTH_LIMIT``
    times over the snapshot before it. Snapshots that fail are named in a
    warning; resuming steps back past them.

    Returns:
      (prefix, norm of its weights), or (None, None) when there is no
      snapshot at all.
    Raises:
      IOError: there are snapshots but none is usable.
    """
    prefixes = checkpoints.snapshot_prefixes(directory)
    if not prefixes:
        return None, None
    statistics = {}

    def stats(prefix):
        if prefix not in statistics:
            try:
                statistics[prefix] = weight_statistics(
                    checkpoints.model_weights(checkpoints.read_checkpoint(prefix)))
            except IOError as err:
                log.warning("%s", err)
                statistics[prefix] = None
        return statistics[prefix]

    rejected = []
    for i in range(len(prefixes) - 1, -1, -1):
        current = stats(prefixes[i])
        if current is None:
            rejected.append(prefixes[i])
            continue
        older = next((stats(p) for p in reversed(prefixes[:i]) if stats(p) is not None),
                     None)
        problem = soundness_problem(*current, reference_norm=older and older[0])
        if problem is not None:
            log.warning("%s is not a sound snapshot: its %s.", prefixes[i], problem)
            rejected.append(prefixes[i])
            continue
        if rejected:
            log.warning("resuming from %s, the newest sound snapshot, instead of %s. "
                        "If the run diverged, rerun with a lower --learning-rate "
                        "(e.g. a tenth).", prefixes[i], ", ".join(rejected))
        return prefixes[i], current[0]
    raise IOError("None of the %d snapshots in %s is usable (see the warnings). Move "
                  "them away to start again, or pick another --snapshot-dir."
                  % (len(prefixes), directory))
