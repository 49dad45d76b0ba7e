"""Workers agree on the flags that define the model and the update before any weight moves.

Every worker runs the same command, but nothing stops one from being started
with another ``--batch-size`` or ``--learning-rate``: the collectives would
still sum, and the run would train silently on mixed settings (or, with
another ``--num-classes``, fail later as a lost worker). So the first
collective of a run is a small vector of these settings, reduced by 'Max'
over the workers both as it is and negated: equal largest and smallest
values mean every worker has the same. Numbers travel exactly (float64), so
the refusal can show both values.

Files count by what they say, not by their path (which may differ between
machines): the label map by its table, the training list by its lines in
order (each worker reads every n-th line of it, so another order is another
share). Each travels as a ``Digest``, four 32-bit slices of its SHA-256.
Every train.py flag is either a setting here or in ``MAY_DIFFER``, with the
reason; tests/test_agreement.py fails on a flag that is in neither.
"""
import hashlib

import numpy as np

from deeplab_resnet.data.label_maps import read_label_map
from deeplab_resnet.data.lists import read_text

# Slots per setting: its length, then its values (blocks, ASPP rates and
# scales are tuples), zero-padded to this many, so every worker's vector has
# the same layout whatever its flags.
SLOTS = 9
# Marks a row that holds a Digest rather than the values themselves.
_DIGEST_ROW = -1.0

# train.py's flags that may differ between workers, and why.
MAY_DIFFER = {
    # A path may differ between machines: what --data-list says is agreed.
    "--data-dir": "paths differ between machines",
    # The chief restores them and broadcasts its weights to every worker.
    "--restore-from": "the chief's starting weights are broadcast",
    "--not-restore-last": "the chief's starting weights are broadcast",
    # Where a worker's towers run and with how many threads: the same sums.
    "--tower-device": "where the towers run, not what they compute",
    "--intra-op-threads": "threads of this process",
    "--inter-op-threads": "threads of this process",
    # Each worker's own randomness (crops, mirroring, its shard's shuffle);
    # the initial weights are the chief's, broadcast.
    "--random-seed": "each worker's own random stream",
    "--reader-threads": "how this worker reads its shard, not what it reads",
    # The chief's duties alone: snapshots, TensorBoard, progress, validation.
    "--snapshot-dir": "the chief writes snapshots",
    "--keep-checkpoints": "the chief writes snapshots",
    "--save-num-images": "the chief writes TensorBoard",
    "--log-every": "the chief prints progress",
    "--val-list": "the chief validates",
    "--val-data-dir": "the chief validates",
    "--val-every": "the chief validates",
    "--val-images": "the chief validates",
    # How long this worker waits for the others.
    "--step-timeout": "this worker's patience",
    "--startup-timeout": "this worker's patience",
    "--peer-timeout": "this worker's patience",
}


class Digest(tuple):
    """A file's content as four 32-bit numbers of its SHA-256 (exact in float64)."""

    @classmethod
    def of(cls, data):
        digest = hashlib.sha256(data).digest()
        return cls(int.from_bytes(digest[i:i + 4], "big") for i in range(0, 16, 4))


def label_map_digest(path):
    """The ``Digest`` of a label map's table (empty without one): its meaning, not its spelling."""
    return Digest.of(read_label_map(path).table.tobytes()) if path else Digest()


def list_digest(path):
    """The ``Digest`` of a list file's pairs in order, blank lines and spacing aside."""
    lines = (" ".join(line.split()) for line in read_text(path, "--data-list").split("\n"))
    return Digest.of("\n".join(line for line in lines if line).encode("utf-8"))


def settings(config):
    """(flag, value) of the settings every worker must share, in a fixed order.

    Reads ``--label-map`` and ``--data-list`` (their ``Digest``).
    """
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
            ("--num-gpus", solver.num_gpus),
            ("--random-scale", data.random_scale),
            ("--scale-set", tuple(data.scale_set or ())),
            ("--random-mirror", data.random_mirror), ("--no-shuffle", not data.shuffle),
            ("--skip-bad-images", data.skip_bad_images),
            # Every worker checks the weights at each snapshot, so all stop together.
            ("--save-pred-every", config.snapshots.save_pred_every),
            ("--label-map", label_map_digest(data.label_map)),
            ("--data-list", list_digest(data.data_list))]


def encode(pairs):
    """The float64 vector of ``settings``: per setting its length, then its
    values, zero-padded to ``SLOTS``; a ``Digest``, or a tuple too long for
    its row, is marked by a length of -1 and its digest."""
    vector = []
    for flag, value in pairs:
        values = list(value) if isinstance(value, tuple) else [value]
        if isinstance(value, Digest) or len(values) >= SLOTS:
            digest = value if isinstance(value, Digest) else Digest.of(repr(values).encode())
            row = [_DIGEST_ROW] + [float(v) for v in digest]
        else:
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
    for i, (flag, value) in enumerate(pairs):
        row = slice(i * SLOTS, (i + 1) * SLOTS)
        if np.array_equal(largest[row], smallest[row]):
            continue
        raise ValueError(
            "%s differs between the workers (%s on one, %s on another); every "
            "worker must run the same command with the same flags%s. Fix the "
            "commands and restart all workers." % (
                flag, _decode(smallest[row]), _decode(largest[row]),
                " and the same file content" if isinstance(value, Digest) else ""))


def _decode(row):
    """A row back to the flag's spelling: '4', '0.0001', '1,1,1,1'.

    A mix of workers' tuples of different lengths shows as the element-wise
    smallest or largest, which still differ where the workers do; a digest
    as the first eight hex digits of its hash.
    """
    if row[0] == _DIGEST_ROW:
        return "content %08x" % int(row[1])
    values = row[1:1 + int(max(row[0], 0))]
    return ",".join("%g" % v for v in values) if len(values) else "none"
