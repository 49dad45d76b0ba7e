"""Towers: one ``tower_loss`` per device on an equal share of the batch, and their summed gradients.

Several devices (``Trainer(devices=...)``, train.py's ``--num-gpus``) get one
tower each: ``tower_loss`` on an equal share of the batch, all towers sharing
one set of variables kept on the CPU. The towers' summed losses, labelled
pixel counts and gradients are added up, and then divided once by the total
labelled pixels, so N towers of b/N images give the update of one tower of b
images (with frozen BatchNorm), as accumulation does. With ``is_training``
each tower normalises its own share, and only the first tower's batch
statistics update the moving averages: Caffe's multi-GPU solver, which
DeepLab used, likewise broadcasts the first GPU's blobs to the others at
every iteration.
"""
import collections
import contextlib
import logging
import os

from deeplab_resnet.constants import CLASSIFIER_PREFIX, IGNORE_LABEL
from deeplab_resnet.network import VARIABLE_OPS
from deeplab_resnet.runtime import tf
from deeplab_resnet.training import gradients
from deeplab_resnet.training.loss import tower_loss
from deeplab_resnet.training.soundness import is_trained

# DeepLab-v2's prototxt: the classifier is new, so it learns faster.
CLASSIFIER_WEIGHTS_LR_MULT = 10.0
CLASSIFIER_BIASES_LR_MULT = 20.0
# Where the variables live when several towers share them.
VARIABLE_DEVICE = "/cpu:0"
# Below this many images per device, batch statistics are noisy estimates of
# the moving averages they update; DeepLab-v2 trained with 10 on one GPU.
MIN_BATCHNORM_BATCH = 8

log = logging.getLogger(__name__)

Param = collections.namedtuple("Param", ["var", "lr_mult", "decay"])
TowerSums = collections.namedtuple(
    "TowerSums", ["towers", "params", "grad_sums", "denominator", "stat_updates",
                  "per_pass"])
TowerSums.__doc__ = """What one forward/backward pass over all towers adds up.

towers: the ``Tower`` list; params: ``trained_params``; grad_sums: per param
the gradient of the pass's objective summed over towers; denominator: what
the accumulated gradients are divided by (labelled pixels with one scale, 1
per pass with several); stat_updates: the BatchNorm moving-average updates
(first tower); per_pass: True when the denominator counts passes, which
are not summed over workers (each output is already divided by its pixels
over all workers)."""


def check_batch_split(batch_size, parts, subject, over):
    """Refuse a batch that does not split evenly into ``parts``.

    The one check of divisibility: of the flags (train.py), of a run over
    workers and towers (``loop``), of a batch over devices (``build_towers``).

    Args:
      subject, over: the words of the message, e.g. '--batch-size 10' and
        '--num-gpus 4'.
    Raises:
      ValueError: ``batch_size`` is not a multiple of ``parts``.
    """
    if batch_size is not None and batch_size % parts:
        raise ValueError("%s does not split evenly over %s; use a multiple of %d, "
                         "such as %d." % (subject, over, parts,
                                          max(parts, batch_size // parts * parts)))


def build_towers(image_batch, label_batch, network, *, ignore_label=IGNORE_LABEL,
                 devices=None, collectives=None):
    """``tower_loss`` on each device's share of the batch, and the summed gradients.

    The objective of one forward pass over all towers: with one scale, the
    cross-entropy summed over its labelled pixels, divided later by the
    labelled pixels of every tower and accumulated batch (exactly the update
    of one device taking all the images). With several scales (MSC), each
    output's loss is the mean over its own labelled pixels of all towers,
    summed over the outputs; accumulated batches are then averaged, as
    Caffe's ``iter_size`` does.

    Args:
      image_batch, label_batch: the whole batch, as for ``tower_loss``.
      network: ``training.config.NetworkConfig``: ``num_classes``, ``model``
        (the ``ModelConfig``), ``is_training`` and ``train_scales`` go to
        ``tower_loss``; ``train_last_only`` trains the classifier alone
        (``trained_params``); ``bf16`` computes in bfloat16 (``compute_dtype``).
      ignore_label: see ``tower_loss``.
      devices: e.g. ``['/gpu:0', '/gpu:1']``, one tower each, sharing the
        variables (on ``VARIABLE_DEVICE``); None for one tower with
        TensorFlow's default placement.
      collectives: ``distributed.Local`` or ``Cluster``: with several
        scales, each output's labelled pixels are counted over all workers
        (one small all-reduce per pass), as one process taking them all.
    Returns:
      ``TowerSums``.
    Raises:
      ValueError: the batch does not split evenly over ``devices``.
    """
    num_towers = len(devices) if devices else 1
    batch = tf.dimension_value(image_batch.get_shape()[0])
    check_batch_split(batch, num_towers, "A batch of %s images" % batch,
                      "%d devices (--batch-size)" % num_towers)
    towers, stat_updates, dtype = [], None, compute_dtype(network.bf16)
    for i, (images, labels) in enumerate(_shares(image_batch, label_batch, devices)):
        updates_before = set(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
        with tower_scope(devices, i):
            towers.append(tower_loss(images, labels, network.num_classes,
                                     ignore_label=ignore_label,
                                     is_training=network.is_training, config=network.model,
                                     scales=network.train_scales, compute_dtype=dtype,
                                     on_gpu=_on_gpu(devices, i)))
        if i == 0:
            stat_updates = [op for op in tf.get_collection(tf.GraphKeys.UPDATE_OPS)
                            if op not in updates_before]
    params = trained_params(towers[0].net, last_only=network.train_last_only)
    objectives, denominator = _objectives(towers, devices, collectives)
    tower_grads = []
    for i, objective in enumerate(objectives):
        with tower_scope(devices, i):
            tower_grads.append(tf.gradients(objective, [p.var for p in params],
                                            colocate_gradients_with_ops=bool(devices)))
    with on_variable_device(devices), tf.name_scope("sum_towers"):
        grad_sums = [None if any(g is None for g in grads) else total(list(grads))
                     for grads in zip(*tower_grads)]
        per_pass = denominator is not None
        if denominator is None:
            denominator = total([t.num_valid for t in towers])
    return TowerSums(towers, params, grad_sums, denominator, stat_updates, per_pass)


def compute_dtype(bf16):
    """bfloat16 for --bf16, with a warning where the CPU would emulate it."""
    if not bf16:
        return tf.float32
    if not tf.config.list_physical_devices("GPU") and not gradients.onednn_handles(
            "bfloat16"):
        log.warning("--bf16 on a CPU without native bfloat16 (AVX512_BF16 or AMX): "
                    "training stays correct (backprops run in float32) but will be "
                    "slower than float32.")
    return tf.bfloat16


def _shares(image_batch, label_batch, devices):
    """Each tower's (images, labels): the batch split evenly over ``devices``."""
    if not devices:
        return [(image_batch, label_batch)]
    with tf.device(VARIABLE_DEVICE), tf.name_scope("split_batch"):
        return list(zip(tf.split(image_batch, len(devices)),
                        tf.split(label_batch, len(devices))))


def _objectives(towers, devices, collectives):
    """Per tower the objective to differentiate, and the denominator if it
    counts passes (several scales) rather than pixels (None)."""
    if len(towers[0].outputs) == 1:
        return [tower.loss_sum for tower in towers], None
    with on_variable_device(devices):
        # Label counts do not depend on the weights: no gradient flows.
        counts = [total([t.outputs[o].num_valid for t in towers])
                  for o in range(len(towers[0].outputs))]
        if collectives is not None:
            counts = collectives.all_reduce_sum(counts)
        counts = [tf.maximum(count, 1.0) for count in counts]
    return [total([out.loss_sum / count for out, count in zip(tower.outputs, counts)])
            for tower in towers], tf.constant(1.0)


def _placement(device):
    """Ops on ``device``, variables on ``VARIABLE_DEVICE`` (a device function)."""
    def place(op):
        return VARIABLE_DEVICE if op.type in VARIABLE_OPS else device
    return place


def _on_gpu(devices, i):
    """Whether tower ``i`` runs on a GPU; None (ask TensorFlow) without devices."""
    if not devices:
        return None
    return (tf.DeviceSpec.from_string(devices[i]).device_type or "").upper() == "GPU"


def tower_scope(devices, i):
    """Where tower ``i`` is built: its device, variables shared; one tower
    places freely."""
    if not devices:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    # Re-entering the root variable scope resets the name scope, so it goes
    # outside 'tower_i'.
    stack.enter_context(tf.variable_scope(tf.get_variable_scope(), reuse=i > 0))
    stack.enter_context(tf.name_scope("tower_%d" % i))
    stack.enter_context(tf.device(_placement(devices[i])))
    return stack


def on_variable_device(devices):
    """Towers keep shared ops with the variables; one tower places freely."""
    return tf.device(VARIABLE_DEVICE) if devices else contextlib.nullcontext()


def total(values):
    """The sum of a list of tensors, without an op for a single one."""
    return values[0] if len(values) == 1 else tf.add_n(values)


def tower_devices(num_devices, device_type="gpu"):
    """``['/gpu:0', ..]`` for ``num_devices`` towers; None for a single one.

    Raises:
      ValueError: fewer GPUs than asked for (TensorFlow would otherwise
        quietly put every tower on the CPU).
    """
    if num_devices < 1:
        raise ValueError("--num-gpus must be at least 1, got %d." % num_devices)
    if num_devices == 1:
        return None
    if device_type == "gpu":
        found = len(tf.config.list_physical_devices("GPU"))
        if found < num_devices:
            raise ValueError(
                "--num-gpus %d, but TensorFlow sees %d GPU(s) (CUDA_VISIBLE_DEVICES"
                "=%s). Lower --num-gpus, check the GPU build of TensorFlow and the "
                "driver, or add --tower-device cpu to try the multi-device path "
                "on the CPU." % (num_devices, found,
                                 os.environ.get("CUDA_VISIBLE_DEVICES", "unset")))
    return ["/%s:%d" % (device_type, i) for i in range(num_devices)]


def batchnorm_batch_warning(is_training, batch_size, num_devices=1):
    """A warning when BatchNorm statistics come from too few images, else None.

    Args:
      batch_size: images per step over all devices (per forward pass;
        accumulation does not help, each pass normalises on its own).
    """
    per_device = batch_size // num_devices
    if not is_training or per_device >= MIN_BATCHNORM_BATCH:
        return None
    return ("--is-training updates BatchNorm statistics from %d image(s) per "
            "device; under %d they are noisy and usually hurt (DeepLab used 10 on "
            "one GPU). Fine-tune without --is-training (frozen BatchNorm, as "
            "DeepLab does), or raise --batch-size (per device: --batch-size / "
            "--num-gpus); --grad-update-every does not help here."
            % (per_device, MIN_BATCHNORM_BATCH))


def trained_params(net, last_only=False):
    """The parameters DeepLab trains, with their learning-rate multipliers.

    Convolution weights and biases only; BatchNorm is frozen (see
    ``solver``'s module doc); which variables those are is
    ``soundness.is_trained``, the rule snapshots are judged by.

    Args:
      last_only: the classifier ``fc1_voc12_*`` alone (the original project's
        fine_tune.py). No gradient is then taken for the body, so back-
        propagation stops at the classifier and a step costs little more
        than the forward pass.
    Returns:
      list of ``Param(var, lr_mult, decay)``, ``decay`` True for weights.
    """
    params = []
    for name, var in sorted(net.variables.items()):
        if not is_trained(name):
            continue
        if last_only and not name.startswith(CLASSIFIER_PREFIX):
            continue
        kind = name.rsplit("/", 1)[-1]
        lr_mult = 1.0
        if name.startswith(CLASSIFIER_PREFIX):
            lr_mult = (CLASSIFIER_WEIGHTS_LR_MULT if kind == "weights"
                       else CLASSIFIER_BIASES_LR_MULT)
        params.append(Param(var, lr_mult, kind == "weights"))
    return params
