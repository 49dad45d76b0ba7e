"""Workers agree on the flags that define the model and the update before any weight moves.

Every worker runs the same command, but nothing stops one from being started
with another ``--batch-size`` or ``--learning-rate``: the collectives would
still sum, and the run would train silently on mixed settings (or, with
another ``--num-classes``, fail later as a lost worker). So the first
collective of a run is a small vector of these settings, reduced by 'Max'
over the workers both as it is and negated: equal largest and smallest
values mean every worker has the same. Numbers travel exactly (float64), so
the refusal can show both values.
"""
import numpy as np

# Slots per setting: its length, then its values (blocks, ASPP rates and
# scales are tuples), zero-padded to this many, so every worker's vector has
# the same layout whatever its flags.
SLOTS = 9


def settings(config):
    """(flag, value) of the settings every worker must share, in a fixed order."""
    network, solver, data = config.network, config.solver, config.data
    model = network.model
    return [("--blocks", tuple(model.blocks)), ("--base-depth", model.base_depth),
            ("--aspp-rates", tuple(model.aspp_rates)),
            ("--num-classes", network.num_classes), ("--ignore-label", data.ignore_label),
            ("--input-size", tuple(data.input_size)),
            ("--train-scales", tuple(network.train_scales)),
            ("--train-last-only", network.train_last_only),
            ("--is-training", network.is_training), ("--bf16", network.bf16),
            ("--batch-size", solver.batch_size), ("--learning-rate", solver.learning_rate),
            ("--momentum", solver.momentum), ("--power", solver.power),
            ("--num-steps", solver.num_steps), ("--weight-decay", solver.weight_decay),
            ("--grad-update-every", solver.grad_update_every),
            ("--num-gpus", solver.num_gpus)]


def encode(pairs):
    """The float64 vector of ``settings``: per setting its length, then its
    values, zero-padded to ``SLOTS``."""
    vector = []
    for flag, value in pairs:
        values = list(value) if isinstance(value, tuple) else [value]
        if len(values) >= SLOTS:
            raise ValueError("%s has %d values; at most %d can be compared across "
                             "workers." % (flag, len(values), SLOTS - 1))
        row = [float(len(values))] + [float(v) for v in values]
        vector += row + [0.0] * (SLOTS - len(row))
    return np.array(vector, np.float64)


def check(pairs, reduced):
    """Raise if the workers' settings differ.

    Args:
      pairs: this worker's ``settings``.
      reduced: [2, n], the largest of each ``encode`` entry over the workers,
        and minus the smallest (``collectives.agreement``).
    Raises:
      ValueError: naming the first setting that differs, with the smallest
        and the largest value found.
    """
    largest, smallest = reduced[0], -reduced[1]
    for i, (flag, _) in enumerate(pairs):
        row = slice(i * SLOTS, (i + 1) * SLOTS)
        if np.array_equal(largest[row], smallest[row]):
            continue
        raise ValueError(
            "%s differs between the workers (%s on one, %s on another); every "
            "worker must run the same command with the same flags. Fix the "
            "commands and restart all workers." % (
                flag, _decode(smallest[row]), _decode(largest[row])))


def _decode(row):
    """A row back to the flag's spelling: '4', '0.0001', '1,1,1,1'.

    A mix of workers' tuples of different lengths shows as the element-wise
    smallest or largest, which still differ where the workers do.
    """
    values = row[1:1 + int(row[0])]
    return ",".join("%g" % v for v in values) if len(values) else "none"
