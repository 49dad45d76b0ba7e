"""Caffe's DeepLab-v2 solver: poly rate, momentum SGD with multipliers, towers, accumulation.

The solver is DeepLab-v2's Caffe ``solver.prototxt`` (as DrSleep's train.py
ports it):

* poly learning rate ``base_lr * (1 - step / num_steps) ** power``;
* SGD with momentum, TensorFlow's form (``v = m * v + g; w -= lr * v``),
  which puts the learning rate outside the velocity where Caffe puts it
  inside; the two agree while the rate is constant and differ slightly as
  the poly schedule decays it;
* learning-rate multipliers from the prototxt: 10 for the classifier's
  weights (``fc1_voc12_c*/weights``, new layers learn faster) and 20 for its
  biases; 1 for every other convolution;
* weight decay on convolution weights only (``decay_mult: 0`` for biases);
* BatchNorm parameters are frozen (``lr_mult: 0``): ``scale``/``offset`` are
  never trained, and the statistics change only with ``is_training``, which
  normalises with batch statistics and updates the moving averages.

Gradient accumulation (``grad_update_every``, Caffe's ``iter_size``) feeds k
batches into one update. Caffe averages the k batch means; here the summed
pixel losses of all k batches are divided by their total labelled pixels
(see ``loss``).

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

Diagnostics: the weight-decay term is reported beside the segmentation loss
(``0.5 * weight_decay * sum(w ** 2)`` over convolution weights, the loss
whose gradient is the ``weight_decay * w`` added to the update, as
``tf.nn.l2_loss`` and DrSleep's train.py define it).
"""
import collections
import contextlib
import functools
import os

import numpy as np

from deeplab_resnet.constants import CLASSIFIER_PREFIX, IGNORE_LABEL
from deeplab_resnet.network import VARIABLE_OPS
from deeplab_resnet.runtime import tf
from deeplab_resnet.training.loss import tower_loss

# DeepLab-v2's prototxt: the classifier is new, so it learns faster.
CLASSIFIER_WEIGHTS_LR_MULT = 10.0
CLASSIFIER_BIASES_LR_MULT = 20.0
# Where the variables live when several towers share them.
VARIABLE_DEVICE = "/cpu:0"
# Below this many images per device, batch statistics are noisy estimates of
# the moving averages they update; DeepLab-v2 trained with 10 on one GPU.
MIN_BATCHNORM_BATCH = 8

Param = collections.namedtuple("Param", ["var", "lr_mult", "decay"])


def _placement(device):
    """Ops on ``device``, variables on ``VARIABLE_DEVICE`` (a device function)."""
    def place(op):
        return VARIABLE_DEVICE if op.type in VARIABLE_OPS else device
    return place


def build_towers(image_batch, label_batch, num_classes, *, ignore_label=IGNORE_LABEL,
                 is_training=False, config=None, devices=None):
    """``tower_loss`` on each device's share of the batch, and the summed gradients.

    Args:
      image_batch, label_batch: the whole batch, as for ``tower_loss``.
      num_classes, ignore_label, is_training, config: see ``tower_loss``.
      devices: e.g. ``['/gpu:0', '/gpu:1']``, one tower each, sharing the
        variables (on ``VARIABLE_DEVICE``); None for one tower with
        TensorFlow's default placement.
    Returns:
      (towers, params, grad_sums, stat_updates): the ``Tower`` list, the
      ``trained_params``, per param the gradient of all towers' summed
      ``loss_sum``, and the BatchNorm moving-average updates (first tower).
    Raises:
      ValueError: the batch does not split evenly over ``devices``.
    """
    if not devices:
        tower = tower_loss(image_batch, label_batch, num_classes,
                           ignore_label=ignore_label, is_training=is_training,
                           config=config)
        params = trained_params(tower.net)
        grad_sums = tf.gradients(tower.loss_sum, [p.var for p in params])
        return [tower], params, grad_sums, tf.get_collection(tf.GraphKeys.UPDATE_OPS)

    num_towers = len(devices)
    batch = tf.dimension_value(image_batch.get_shape()[0])
    if batch is not None and batch % num_towers:
        raise ValueError("A batch of %d images does not split evenly over %d "
                         "devices; use a --batch-size divisible by %d."
                         % (batch, num_towers, num_towers))
    with tf.device(VARIABLE_DEVICE), tf.name_scope("split_batch"):
        image_shares = tf.split(image_batch, num_towers)
        label_shares = tf.split(label_batch, num_towers)
    towers, tower_grads, params, stat_updates = [], [], None, None
    for i, device in enumerate(devices):
        updates_before = set(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
        # Re-entering the root variable scope resets the name scope, so it
        # goes outside 'tower_i'.
        with tf.variable_scope(tf.get_variable_scope(), reuse=i > 0), \
                tf.name_scope("tower_%d" % i), tf.device(_placement(device)):
            tower = tower_loss(image_shares[i], label_shares[i], num_classes,
                               ignore_label=ignore_label, is_training=is_training,
                               config=config)
            if params is None:
                params = trained_params(tower.net)
            tower_grads.append(tf.gradients(tower.loss_sum, [p.var for p in params],
                                            colocate_gradients_with_ops=True))
        if i == 0:
            stat_updates = [op for op in tf.get_collection(tf.GraphKeys.UPDATE_OPS)
                            if op not in updates_before]
        towers.append(tower)
    with tf.device(VARIABLE_DEVICE), tf.name_scope("sum_towers"):
        grad_sums = [None if any(g is None for g in grads) else tf.add_n(list(grads))
                     for grads in zip(*tower_grads)]
    return towers, params, grad_sums, stat_updates


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


def weights_are_finite(variables):
    """Scalar bool: every float variable, and their summed squares, finite.

    The sum of squares also catches weights too large to square in float32
    (|w| > 1e19), which a huge learning rate leaves behind before any NaN.
    """
    squares = [tf.reduce_sum(tf.square(v)) for v in variables
               if v.dtype.base_dtype.is_floating]
    return tf.is_finite(tf.add_n(squares))


def trained_params(net):
    """The parameters DeepLab trains, with their learning-rate multipliers.

    Convolution weights and biases only; BatchNorm is frozen (see module doc).

    Returns:
      list of ``Param(var, lr_mult, decay)``, ``decay`` True for weights.
    """
    params = []
    for name, var in sorted(net.variables.items()):
        kind = name.rsplit("/", 1)[-1]
        if kind not in ("weights", "biases"):
            continue
        lr_mult = 1.0
        if name.startswith(CLASSIFIER_PREFIX):
            lr_mult = (CLASSIFIER_WEIGHTS_LR_MULT if kind == "weights"
                       else CLASSIFIER_BIASES_LR_MULT)
        params.append(Param(var, lr_mult, kind == "weights"))
    return params


def poly_learning_rate(base_lr, step, num_steps, power):
    """``base_lr * (1 - step / num_steps) ** power``, 0 from ``num_steps`` on."""
    progress = tf.minimum(tf.cast(step, tf.float32) / float(num_steps), 1.0)
    return base_lr * tf.pow(1.0 - progress, power)


class Trainer(object):
    """One SGD update from ``grad_update_every`` batches; see the module doc.

    Args:
      image_batch, label_batch: the batch tensors (a reader's ``dequeue``, or
        placeholders); each forward pass takes a new batch.
      num_classes, ignore_label, is_training, config: see ``tower_loss``.
      learning_rate, momentum, power, num_steps: the poly SGD schedule.
      weight_decay: L2 factor on convolution weights.
      grad_update_every: batches accumulated per update.
      devices: one tower per device on an equal share of each batch (see
        ``build_towers``); None for one tower.

    Attributes:
      towers: the ``Tower`` of each device.
      tower: the first tower; its ``net`` holds the shared variables.
      params: ``trained_params(tower.net)``.
      loss_sum, num_valid, num_correct, num_bad_labels, max_bad_label: over
        all towers, for the last batch.
      gradients: per param, the gradient the optimizer applies (multiplier
        and weight decay included) once the batches of a step are in.
      l2_loss: ``0.5 * weight_decay * sum(w ** 2)`` over the decayed weights,
        read before the update that ``train_op`` applies.
      learning_rate: the base rate at the current global step.
      global_step: updates done.
      weights_finite: scalar bool, ``weights_are_finite`` of the network's
        variables and the momentum.
    """

    def __init__(self, image_batch, label_batch, num_classes, *,
                 ignore_label=IGNORE_LABEL, is_training=False, config=None,
                 learning_rate=2.5e-4, momentum=0.9, power=0.9, num_steps=20001,
                 weight_decay=5e-4, grad_update_every=1, devices=None):
        if grad_update_every < 1:
            raise ValueError("--grad-update-every must be at least 1, got %d."
                             % grad_update_every)
        self.grad_update_every = grad_update_every
        self.global_step = tf.train.get_or_create_global_step()
        self.towers, self.params, grad_sums, stat_updates = build_towers(
            image_batch, label_batch, num_classes, ignore_label=ignore_label,
            is_training=is_training, config=config, devices=devices)
        self.tower = self.towers[0]
        on_variable_device = functools.partial(_on_variable_device, devices)
        with on_variable_device():
            self.loss_sum, self.num_valid, self.num_correct, self.num_bad_labels = [
                _total([getattr(t, name) for t in self.towers])
                for name in ("loss_sum", "num_valid", "num_correct", "num_bad_labels")]
            self.max_bad_label = tf.reduce_max([t.max_bad_label for t in self.towers])
        variables = [p.var for p in self.params]
        self.learning_rate = poly_learning_rate(learning_rate, self.global_step,
                                                num_steps, power)
        optimizer = tf.train.MomentumOptimizer(self.learning_rate, momentum)

        if grad_update_every == 1:
            self.accumulate_op = None
            # BatchNorm's moving averages move with every forward pass.
            with tf.control_dependencies(stat_updates), on_variable_device():
                self.gradients, self.l2_loss = self._update_gradients(
                    grad_sums, self.num_valid, weight_decay)
            self.train_op = optimizer.apply_gradients(
                zip(self.gradients, variables), global_step=self.global_step)
            self.weights_finite = self._weights_finite(optimizer, variables)
            return

        # Sums over the step's batches; local, so never checkpointed.
        with tf.variable_scope("grad_accumulation"), on_variable_device():
            accumulators = [
                tf.get_variable("sum_%d" % i, var.get_shape(), tf.float32,
                                tf.zeros_initializer(), trainable=False,
                                collections=[tf.GraphKeys.LOCAL_VARIABLES])
                for i, var in enumerate(variables)]
            valid_sum = tf.get_variable("num_valid", [], tf.float32,
                                        tf.zeros_initializer(), trainable=False,
                                        collections=[tf.GraphKeys.LOCAL_VARIABLES])
        self.accumulate_op = tf.group(
            [tf.assign_add(acc, grad) for acc, grad in zip(accumulators, grad_sums)]
            + [tf.assign_add(valid_sum, self.num_valid)] + stat_updates)
        with on_variable_device():
            self.gradients, self.l2_loss = self._update_gradients(
                [acc.read_value() for acc in accumulators], valid_sum.read_value(),
                weight_decay)
        apply_op = optimizer.apply_gradients(zip(self.gradients, variables),
                                             global_step=self.global_step)
        with tf.control_dependencies([apply_op]):
            self.train_op = tf.group(
                [tf.assign(acc, tf.zeros_like(acc)) for acc in accumulators]
                + [tf.assign(valid_sum, 0.0)])
        self.weights_finite = self._weights_finite(optimizer, variables)

    def _weights_finite(self, optimizer, variables):
        slots = [optimizer.get_slot(var, "momentum") for var in variables]
        return weights_are_finite(list(self.tower.net.variables.values()) + slots)

    def _update_gradients(self, grad_sums, num_valid, weight_decay):
        """The gradients to apply, and the L2 term of the weights they change."""
        scale = 1.0 / tf.maximum(num_valid, 1.0)
        gradients = []
        for param, grad in zip(self.params, grad_sums):
            if grad is None:
                raise ValueError("%s does not reach the loss." % param.var.op.name)
            grad = grad * scale
            if param.decay and weight_decay:
                grad += weight_decay * param.var
            gradients.append(param.lr_mult * grad)
        decayed = [tf.reduce_sum(tf.square(p.var)) for p in self.params if p.decay]
        l2_loss = 0.5 * weight_decay * _total(decayed) if decayed else tf.constant(0.0)
        # Released together, so that no update starts while back-propagation
        # or the L2 term still reads the weights it would change (GATE_GRAPH).
        gated = tf.tuple(gradients + [l2_loss])
        return gated[:-1], gated[-1]

    def step(self, sess, fetches=()):
        """Run one update: forward/backward over the step's batches, then SGD.

        Args:
          fetches: extra tensors evaluated with the step's last batch.
        Returns:
          dict with ``loss`` (mean cross-entropy over the step's labelled
          pixels), ``l2`` (the weight-decay term before the update),
          ``accuracy`` (pixel accuracy), ``lr`` (the base rate used),
          ``bad_labels`` (pixels whose label is neither a class id nor the
          ignore label; left out of the loss), ``max_bad_label`` (the largest
          of them, -1 if none) and ``fetched`` (the values of ``fetches``).
        """
        sums = [self.loss_sum, self.num_valid, self.num_correct, self.num_bad_labels]
        metrics = [sums, self.max_bad_label]
        totals, max_bad = np.zeros(len(sums)), -1
        if self.accumulate_op is None:
            (values, max_bad), fetched, lr, l2, _ = sess.run(
                [metrics, fetches, self.learning_rate, self.l2_loss, self.train_op])
            totals += values
        else:
            for i in range(self.grad_update_every):
                last = i == self.grad_update_every - 1
                (values, batch_max_bad), fetched, _ = sess.run(
                    [metrics, fetches if last else (), self.accumulate_op])
                totals += values
                max_bad = max(max_bad, batch_max_bad)
            lr, l2, _ = sess.run([self.learning_rate, self.l2_loss, self.train_op])
        loss_sum, num_valid, num_correct, num_bad = totals
        valid = max(num_valid, 1.0)
        return {"loss": loss_sum / valid, "l2": float(l2),
                "accuracy": num_correct / valid, "lr": float(lr),
                "bad_labels": int(num_bad), "max_bad_label": int(max_bad),
                "fetched": fetched}


def _total(values):
    return values[0] if len(values) == 1 else tf.add_n(values)


def _on_variable_device(devices):
    """Towers keep shared ops with the variables; one tower places freely."""
    return tf.device(VARIABLE_DEVICE) if devices else contextlib.nullcontext()
