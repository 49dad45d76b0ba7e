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

from deeplab_resnet import checkpoints
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
                 is_training=False, config=None, devices=None, scales=(1.0,),
                 last_only=False, cluster=None, compute_dtype=tf.float32):
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
      num_classes, ignore_label, is_training, config, scales: see ``tower_loss``.
      devices: e.g. ``['/gpu:0', '/gpu:1']``, one tower each, sharing the
        variables (on ``VARIABLE_DEVICE``); None for one tower with
        TensorFlow's default placement.
      last_only: train the classifier alone (``trained_params``).
      compute_dtype: tf.bfloat16 for mixed-precision training (see
        ``loss.tower_loss``); variables, gradients and the update stay float32.
      cluster: a ``distributed.Cluster``: with several scales, each output's
        labelled pixels are counted over all workers' towers (one small
        all-reduce per pass), so that the workers' summed gradients are
        those of one process taking every worker's share.
    Returns:
      (towers, params, grad_sums, denominator, stat_updates): the ``Tower``
      list, the ``trained_params``, per param the gradient of the pass's
      objective summed over towers, what the accumulated gradients are
      divided by (labelled pixels with one scale, 1 per pass with several),
      and the BatchNorm moving-average updates (first tower).
    Raises:
      ValueError: the batch does not split evenly over ``devices``.
    """
    num_towers = len(devices) if devices else 1
    batch = tf.dimension_value(image_batch.get_shape()[0])
    if batch is not None and batch % num_towers:
        raise ValueError("A batch of %d images does not split evenly over %d "
                         "devices; use a --batch-size divisible by %d."
                         % (batch, num_towers, num_towers))
    if devices:
        with tf.device(VARIABLE_DEVICE), tf.name_scope("split_batch"):
            image_shares = tf.split(image_batch, num_towers)
            label_shares = tf.split(label_batch, num_towers)
    else:
        image_shares, label_shares = [image_batch], [label_batch]
    towers, stat_updates = [], None
    for i in range(num_towers):
        updates_before = set(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
        with _tower_scope(devices, i):
            towers.append(tower_loss(image_shares[i], label_shares[i], num_classes,
                                     ignore_label=ignore_label, is_training=is_training,
                                     config=config, scales=scales,
                                     compute_dtype=compute_dtype,
                                     on_gpu=_on_gpu(devices, i)))
        if i == 0:
            stat_updates = [op for op in tf.get_collection(tf.GraphKeys.UPDATE_OPS)
                            if op not in updates_before]
    params = trained_params(towers[0].net, last_only=last_only)
    multi_scale = len(towers[0].outputs) > 1
    if multi_scale:
        with _on_variable_device(devices):
            # Label counts do not depend on the weights: no gradient flows.
            counts = [_total([t.outputs[o].num_valid for t in towers])
                      for o in range(len(towers[0].outputs))]
            if cluster is not None:
                counts = cluster.all_reduce_sum(counts)
            counts = [tf.maximum(count, 1.0) for count in counts]
        objectives = [_total([out.loss_sum / count for out, count in
                              zip(tower.outputs, counts)]) for tower in towers]
        denominator = tf.constant(1.0)
    else:
        objectives = [tower.loss_sum for tower in towers]
        denominator = None
    tower_grads = []
    for i, objective in enumerate(objectives):
        with _tower_scope(devices, i):
            tower_grads.append(tf.gradients(objective, [p.var for p in params],
                                            colocate_gradients_with_ops=bool(devices)))
    with _on_variable_device(devices), tf.name_scope("sum_towers"):
        grad_sums = [None if any(g is None for g in grads) else _total(list(grads))
                     for grads in zip(*tower_grads)]
        if denominator is None:
            denominator = _total([t.num_valid for t in towers])
    return towers, params, grad_sums, denominator, stat_updates


def _on_gpu(devices, i):
    """Whether tower ``i`` runs on a GPU; None (ask TensorFlow) without devices."""
    if not devices:
        return None
    return (tf.DeviceSpec.from_string(devices[i]).device_type or "").upper() == "GPU"


def _tower_scope(devices, i):
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

    Convolution weights and biases only; BatchNorm is frozen (see module doc).

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
        kind = name.rsplit("/", 1)[-1]
        if kind not in ("weights", "biases"):
            continue
        if last_only and not name.startswith(CLASSIFIER_PREFIX):
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
      scales: input scales, several for MSC training (``loss.tower_loss``).
      last_only: train the classifier alone (``trained_params``).
      compute_dtype: tf.bfloat16 for mixed-precision training (see
        ``loss.tower_loss``); variables, gradients and the update stay float32.
      cluster: a ``distributed.Cluster`` to train synchronously with other
        workers, each on its own batch: the gradient sums and labelled
        pixels (and the reported sums) of every worker are added up before
        the one division, so an update is that of one process taking all
        the workers' batches (with frozen BatchNorm). None: one process,
        and no collective op in the graph.

    Attributes:
      towers: the ``Tower`` of each device.
      tower: the first tower; its ``net`` holds the shared variables.
      params: ``trained_params(tower.net)``.
      outputs: per loss term (one, or each scale and the fused output),
        (name, its loss summed over labelled pixels, their count), over all
        towers, for the last batch.
      loss_sum, num_valid: those of the last output; num_correct,
        num_bad_labels, max_bad_label: over all towers, for the last batch.
      gradients: per param, the gradient the optimizer applies (multiplier
        and weight decay included) once the batches of a step are in.
      l2_loss: ``0.5 * weight_decay * sum(w ** 2)`` over the decayed weights,
        read before the update that ``train_op`` applies.
      learning_rate: the base rate at the current global step.
      global_step: updates done.
      weight_statistics: (norm, largest magnitude, all finite) of the
        network's variables (``checkpoints.graph_weight_statistics``);
        momentum_statistics: the same of
        the momentum.
    """

    def __init__(self, image_batch, label_batch, num_classes, *,
                 ignore_label=IGNORE_LABEL, is_training=False, config=None,
                 learning_rate=2.5e-4, momentum=0.9, power=0.9, num_steps=20001,
                 weight_decay=5e-4, grad_update_every=1, devices=None, scales=(1.0,),
                 last_only=False, cluster=None, compute_dtype=tf.float32):
        if grad_update_every < 1:
            raise ValueError("--grad-update-every must be at least 1, got %d."
                             % grad_update_every)
        if last_only and is_training:
            raise ValueError("--train-last-only trains the classifier alone, with the "
                             "body (its BatchNorm statistics included) left as it is; "
                             "leave out --is-training.")
        self.grad_update_every = grad_update_every
        self.global_step = tf.train.get_or_create_global_step()
        self.towers, self.params, grad_sums, denominator, stat_updates = build_towers(
            image_batch, label_batch, num_classes, ignore_label=ignore_label,
            is_training=is_training, config=config, devices=devices, scales=scales,
            last_only=last_only, cluster=cluster, compute_dtype=compute_dtype)
        self.tower = self.towers[0]
        on_variable_device = functools.partial(_on_variable_device, devices)
        with on_variable_device():
            self.num_correct, self.num_bad_labels = [
                _total([getattr(t, name) for t in self.towers])
                for name in ("num_correct", "num_bad_labels")]
            self.max_bad_label = tf.reduce_max([t.max_bad_label for t in self.towers])
            # (name, loss summed over towers, labelled pixels) per output.
            self.outputs = [(out.name, _total([t.outputs[o].loss_sum for t in self.towers]),
                             _total([t.outputs[o].num_valid for t in self.towers]))
                            for o, out in enumerate(self.tower.outputs)]
            self.loss_sum, self.num_valid = self.outputs[-1][1:]
        # What step() reports, summed over towers (and batches, and workers).
        self._sums = [tensor for _, loss_sum, num_valid in self.outputs
                      for tensor in (loss_sum, num_valid)] + [self.num_correct,
                                                              self.num_bad_labels]
        self._synchronous = None
        variables = [p.var for p in self.params]
        self.learning_rate = poly_learning_rate(learning_rate, self.global_step,
                                                num_steps, power)
        optimizer = tf.train.MomentumOptimizer(self.learning_rate, momentum)
        if cluster is not None:
            with on_variable_device():
                self._synchronous_update(cluster, optimizer, variables, grad_sums,
                                         denominator, stat_updates, weight_decay)
            self._add_statistics(optimizer, variables)
            return

        if grad_update_every == 1:
            self.accumulate_op = None
            # BatchNorm's moving averages move with every forward pass.
            with tf.control_dependencies(stat_updates), on_variable_device():
                self.gradients, self.l2_loss = self._update_gradients(
                    grad_sums, denominator, weight_decay)
            self.train_op = optimizer.apply_gradients(
                zip(self.gradients, variables), global_step=self.global_step)
            self._add_statistics(optimizer, variables)
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
            + [tf.assign_add(valid_sum, denominator)] + stat_updates)
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
        self._add_statistics(optimizer, variables)

    def _add_statistics(self, optimizer, variables):
        self.weight_statistics = checkpoints.graph_weight_statistics(
            self.tower.net.variables)
        # Momentum slots, named as their variables, so the same rule applies.
        self.momentum_statistics = checkpoints.graph_weight_statistics(
            {var.op.name: optimizer.get_slot(var, "momentum") for var in variables})

    def _synchronous_update(self, cluster, optimizer, variables, grad_sums, denominator,
                            stat_updates, weight_decay):
        """``train_op`` of a worker: the update of every worker's batches together.

        The local sums (of the step's batches, accumulated here as without a
        cluster) are all-reduced in ``train_op`` only, so one exchange per
        update however many batches it takes: the gradient sums and the
        labelled-pixel count in packed float32 collectives, the reported
        sums and the interrupt flag in one float64 vector (exact counts),
        the largest bad label by 'Max'. Every loop decision is then taken on
        values equal on all workers, so they all take the same branch.
        """
        multi_scale = len(self.outputs) > 1
        self.interrupt = tf.placeholder_with_default(0.0, [], name="interrupt")
        batch_stats = tf.stack([tf.cast(t, tf.float64) for t in self._sums])
        batch_max_bad = tf.cast(self.max_bad_label, tf.float64)
        accumulators, before = [], stat_updates
        if self.grad_update_every == 1:
            self.accumulate_op = None
            local = (grad_sums, denominator, batch_stats, batch_max_bad)
        else:
            with tf.variable_scope("grad_accumulation"):
                sums = [_local_sum("sum_%d" % i, var.get_shape(), tf.float32)
                        for i, var in enumerate(variables)]
                valid_sum = _local_sum("num_valid", [], tf.float32)
                stats_sum = _local_sum("stats", [len(self._sums)], tf.float64)
                max_bad = _local_sum("max_bad_label", [], tf.float64, -1.0)
            self.accumulate_op = tf.group(
                [tf.assign_add(acc, grad) for acc, grad in zip(sums, grad_sums)]
                + [tf.assign_add(valid_sum, denominator),
                   tf.assign_add(stats_sum, batch_stats),
                   tf.assign(max_bad, tf.maximum(max_bad, batch_max_bad))] + stat_updates)
            local = ([acc.read_value() for acc in sums], valid_sum.read_value(),
                     stats_sum.read_value(), max_bad.read_value())
            accumulators = [(v, 0.0) for v in sums + [valid_sum, stats_sum]]
            accumulators.append((max_bad, -1.0))
            before = []
        grads, count, stats, largest = local
        stats = tf.concat([stats, [tf.cast(self.interrupt, tf.float64)]], 0)
        with tf.control_dependencies(before):
            if multi_scale:
                # Each output is already divided by its pixels over all
                # workers; the denominator counts passes, not workers.
                grads = cluster.all_reduce_sum(grads)
            else:
                *grads, count = cluster.all_reduce_sum(grads + [tf.reshape(count, [1])])
                count = tf.reshape(count, [])
            stats = cluster.all_reduce(stats)
            largest = cluster.all_reduce(largest, merge_op="Max")
            self.gradients, self.l2_loss = self._update_gradients(grads, count,
                                                                  weight_decay)
        apply_op = optimizer.apply_gradients(zip(self.gradients, variables),
                                             global_step=self.global_step)
        # Reset only once the update and the sums have read them.
        with tf.control_dependencies([apply_op, stats, largest]):
            self.train_op = tf.group([tf.assign(v, tf.zeros_like(v) + initial)
                                      for v, initial in accumulators] or [tf.no_op()])
        self._synchronous = (stats, largest)

    def _update_gradients(self, grad_sums, denominator, weight_decay):
        """The gradients to apply, and the L2 term of the weights they change."""
        scale = 1.0 / tf.maximum(denominator, 1.0)
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

    def step(self, sess, fetches=(), interrupt=False):
        """Run one update: forward/backward over the step's batches, then SGD.

        Args:
          fetches: extra tensors evaluated with the step's last batch.
          interrupt: (with a cluster) this worker asks every worker to stop
            after this step; ``interrupted`` in the result says if any did.
        Returns:
          dict with ``loss`` (the cross-entropy of each output, averaged over
          the step's labelled pixels, summed over the outputs: with one
          scale, that output's mean), ``losses`` ({output name: its mean},
          e.g. {'1': .., '0.75': .., '0.5': .., 'max': ..} with MSC), ``l2``
          (the weight-decay term before the update), ``accuracy`` (pixel
          accuracy of the last output, the fused one with MSC), ``lr`` (the
          base rate used), ``bad_labels`` (pixels whose label is neither a
          class id nor the ignore label; left out of the loss),
          ``max_bad_label`` (the largest of them, -1 if none) and
          ``fetched`` (the values of ``fetches``).
        """
        if self._synchronous is not None:
            return self._synchronous_step(sess, fetches, interrupt)
        metrics = [self._sums, self.max_bad_label]
        totals, max_bad = np.zeros(len(self._sums)), -1
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
        return self._result(totals, max_bad, lr, l2, fetched)

    def _synchronous_step(self, sess, fetches, interrupt):
        """``step`` with a cluster: the sums reported are over all workers, and
        ``interrupted`` says whether any worker asked to stop (``interrupt``
        is this worker's request)."""
        fetched = []
        if self.accumulate_op is not None:
            for i in range(self.grad_update_every):
                last = i == self.grad_update_every - 1
                fetched, _ = sess.run([fetches if last else (), self.accumulate_op])
        update_fetches = [self.learning_rate, self.l2_loss, list(self._synchronous),
                          self.train_op]
        if self.accumulate_op is None:
            update_fetches.append(fetches)
        values = sess.run(update_fetches, {self.interrupt: float(bool(interrupt))})
        lr, l2, (totals, max_bad) = values[:3]
        if self.accumulate_op is None:
            fetched = values[4]
        result = self._result(totals[:-1], max_bad, lr, l2, fetched)
        result["interrupted"] = bool(totals[-1] > 0)
        return result

    def _result(self, totals, max_bad, lr, l2, fetched):
        num_correct, num_bad = totals[-2:]
        losses = {name: totals[2 * o] / max(totals[2 * o + 1], 1.0)
                  for o, (name, _, _) in enumerate(self.outputs)}
        return {"loss": float(sum(losses.values())), "losses": losses, "l2": float(l2),
                "accuracy": num_correct / max(totals[-3], 1.0), "lr": float(lr),
                "bad_labels": int(num_bad), "max_bad_label": int(max_bad),
                "fetched": fetched}


def _local_sum(name, shape, dtype, initial=0.0):
    """A per-worker accumulator: local, so never checkpointed nor broadcast."""
    return tf.get_variable(name, shape, dtype, tf.constant_initializer(initial),
                           trainable=False, collections=[tf.GraphKeys.LOCAL_VARIABLES])


def _total(values):
    return values[0] if len(values) == 1 else tf.add_n(values)


def _on_variable_device(devices):
    """Towers keep shared ops with the variables; one tower places freely."""
    return tf.device(VARIABLE_DEVICE) if devices else contextlib.nullcontext()
