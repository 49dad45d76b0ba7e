"""Caffe's DeepLab-v2 solver: one update path (accumulate sums -> reduce -> divide -> apply).

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

One update path serves every case: (1) the step's passes add up local
sums (gradient sums, labelled pixels, the reported sums, the largest bad
label) over ``grad_update_every`` batches and over the towers
(``towers``), (2) the sums are reduced through the collectives object
(``distributed.Local``: the sums themselves, no op; ``Cluster``: added up
over the workers in one exchange per update), (3) divided once by the total
labelled pixels, (4) applied. Plain training, accumulation, towers and
workers are parameters of that path: k batches, N towers or W workers of b
images give the update of one batch of k*N*W*b (with frozen BatchNorm).

Diagnostics: the weight-decay term is reported beside the segmentation loss
(``0.5 * weight_decay * sum(w ** 2)`` over convolution weights, the loss
whose gradient is the ``weight_decay * w`` added to the update, as
``tf.nn.l2_loss`` and DrSleep's train.py define it).
"""
from deeplab_resnet import kernels
from deeplab_resnet.constants import IGNORE_LABEL
from deeplab_resnet.distributed.collectives import Local
from deeplab_resnet.runtime import tf
from deeplab_resnet.training import soundness
from deeplab_resnet.training.config import SolverConfig
from deeplab_resnet.training.towers import build_towers, on_variable_device, total


def poly_learning_rate(base_lr, step, num_steps, power):
    """``base_lr * (1 - step / num_steps) ** power``, 0 from ``num_steps`` on."""
    progress = tf.minimum(tf.cast(step, tf.float32) / float(num_steps), 1.0)
    return base_lr * tf.pow(1.0 - progress, power)


class Trainer(object):
    """One SGD update from ``grad_update_every`` batches; see the module doc.

    Args:
      image_batch, label_batch: the batch tensors (a reader's ``dequeue``, or
        placeholders); each forward pass takes a new batch.
      network: ``training.config.NetworkConfig``, the network trained (see
        ``towers.build_towers``): its classes and ``model``; ``is_training``;
        ``train_scales``, several for MSC training (``loss.tower_loss``);
        ``train_last_only``, the classifier alone (``towers.trained_params``);
        ``bf16``, mixed precision (``loss.tower_loss``: variables, gradients
        and the update stay float32).
      solver: ``training.config.SolverConfig`` (default: DeepLab-v2's): the
        poly SGD schedule (``learning_rate``, ``momentum``, ``power``,
        ``num_steps``), ``weight_decay`` (the L2 factor on convolution
        weights) and ``grad_update_every`` (batches accumulated per update).
        Its batch and device fields are the caller's: the batch comes as
        tensors, the devices as ``devices``.
      ignore_label: see ``tower_loss``.
      devices: one tower per device on an equal share of each batch (see
        ``towers.build_towers``); None for one tower.
      collectives: ``distributed.Cluster`` to train synchronously with other
        workers, each on its own batch: the sums of every worker are added
        up before the one division, so an update is that of one process
        taking all the workers' batches (with frozen BatchNorm). None or
        ``distributed.Local``: one process, no collective op in the graph.

    Attributes:
      towers: the ``Tower`` of each device.
      tower: the first tower; its ``net`` holds the shared variables.
      params: ``trained_params(tower.net)``.
      outputs: per loss term (one, or each scale and the fused output),
        (name, its loss summed over labelled pixels, their count), over all
        towers, for the last batch.
      loss_sum, num_valid: those of the last output; num_correct,
        num_bad_labels, max_bad_label: over all towers, for the last batch.
      accumulate_op: adds one pass to the step's sums (None when a step is
        one pass: ``train_op`` then runs the pass itself).
      train_op: reduces the sums, applies the update, and starts the next
        step's sums afresh.
      gradients: per param, the gradient the optimizer applies (multiplier
        and weight decay included) once the batches of a step are in.
      l2_loss: ``0.5 * weight_decay * sum(w ** 2)`` over the decayed weights,
        read before the update that ``train_op`` applies.
      learning_rate: the base rate at the current global step.
      global_step: updates done.
      weight_statistics: (norm, largest magnitude, all finite) of the
        network's variables (``soundness.graph_weight_statistics``);
        momentum_statistics: the same of the momentum.
    """

    def __init__(self, image_batch, label_batch, network, *, solver=None,
                 ignore_label=IGNORE_LABEL, devices=None, collectives=None):
        solver = solver or SolverConfig()
        if solver.grad_update_every < 1:
            raise ValueError("--grad-update-every must be at least 1, got %d."
                             % solver.grad_update_every)
        if kernels.frozen_weights():
            # oneDNN would keep convolving with the first step's filters.
            raise RuntimeError(
                "This process assumes frozen weights (%s=1, set for inference jobs), "
                "so its convolutions would not see the updates. Declare the job "
                "before TensorFlow is imported (deeplab_resnet.kernels.choose('train')), "
                "or unset %s." % (kernels.FROZEN_ENV, kernels.FROZEN_ENV))
        if network.train_last_only and network.is_training:
            raise ValueError("--train-last-only trains the classifier alone, with the "
                             "body (its BatchNorm statistics included) left as it is; "
                             "leave out --is-training.")
        collectives = collectives or Local()
        self.grad_update_every = solver.grad_update_every
        self.global_step = tf.train.get_or_create_global_step()
        sums = build_towers(image_batch, label_batch, network, ignore_label=ignore_label,
                            devices=devices, collectives=collectives)
        self.towers, self.params = sums.towers, sums.params
        self.tower = self.towers[0]
        with on_variable_device(devices):
            self._add_reported_sums()
        variables = [p.var for p in self.params]
        self.learning_rate = poly_learning_rate(solver.learning_rate, self.global_step,
                                                solver.num_steps, solver.power)
        optimizer = tf.train.MomentumOptimizer(self.learning_rate, solver.momentum)
        with on_variable_device(devices):
            local, resets, before = self._accumulate(sums)
            grads, count, stats, largest = _reduce(collectives, local, before,
                                                   sum_count=not sums.per_pass)
            with tf.control_dependencies(before):
                self.gradients, self.l2_loss = self._update_gradients(
                    grads, count, solver.weight_decay)
            apply_op = optimizer.apply_gradients(zip(self.gradients, variables),
                                                 global_step=self.global_step)
            # Reset only once the update and the reported sums have read them.
            with tf.control_dependencies([apply_op, stats, largest]):
                self.train_op = tf.group([tf.assign(v, tf.zeros_like(v) + initial)
                                          for v, initial in resets] or [tf.no_op()])
        self._reduced = [stats, largest]
        self.weight_statistics = soundness.graph_weight_statistics(
            self.tower.net.variables)
        # Momentum slots, named as their variables, so the same rule applies.
        self.momentum_statistics = soundness.graph_weight_statistics(
            {var.op.name: optimizer.get_slot(var, "momentum") for var in variables})

    def _add_reported_sums(self):
        """What ``step`` reports, summed over the towers, for the last batch."""
        self.num_correct, self.num_bad_labels = [
            total([getattr(t, name) for t in self.towers])
            for name in ("num_correct", "num_bad_labels")]
        self.max_bad_label = tf.reduce_max([t.max_bad_label for t in self.towers])
        # (name, loss summed over towers, labelled pixels) per output.
        self.outputs = [(out.name, total([t.outputs[o].loss_sum for t in self.towers]),
                         total([t.outputs[o].num_valid for t in self.towers]))
                        for o, out in enumerate(self.tower.outputs)]
        self.loss_sum, self.num_valid = self.outputs[-1][1:]
        # Summed over batches and workers too; float64, so counts stay exact.
        # The interrupt flag travels with them (see ``step``).
        self.interrupt = tf.placeholder_with_default(0.0, [], name="interrupt")
        self.layout = ReportedSums([name for name, _, _ in self.outputs])
        values = {"num_correct": self.num_correct, "num_bad_labels": self.num_bad_labels,
                  "interrupt": self.interrupt}
        for name, loss_sum, num_valid in self.outputs:
            values.update({self.layout.loss_sum(name): loss_sum,
                           self.layout.num_valid(name): num_valid})
        self._stats = self.layout.pack(values)

    def _accumulate(self, sums):
        """The step's local sums, the accumulators to reset, and the ops the
        update waits for.

        One pass per step: the pass's own tensors, no accumulator, and the
        update waits for BatchNorm's moving averages. Several: local
        variables (never checkpointed nor broadcast) that ``accumulate_op``
        adds each pass to.
        """
        batch_max_bad = tf.cast(self.max_bad_label, tf.float64)
        if self.grad_update_every == 1:
            self.accumulate_op = None
            return ((sums.grad_sums, sums.denominator, self._stats, batch_max_bad),
                    [], sums.stat_updates)
        with tf.variable_scope("grad_accumulation"):
            grads = [_local_sum("sum_%d" % i, p.var.get_shape(), tf.float32)
                     for i, p in enumerate(self.params)]
            count = _local_sum("num_valid", [], tf.float32)
            stats = _local_sum("stats", [len(self.layout.slots)], tf.float64)
            max_bad = _local_sum("max_bad_label", [], tf.float64, -1.0)
        self.accumulate_op = tf.group(
            [tf.assign_add(acc, grad) for acc, grad in zip(grads, sums.grad_sums)]
            + [tf.assign_add(count, sums.denominator), tf.assign_add(stats, self._stats),
               tf.assign(max_bad, tf.maximum(max_bad, batch_max_bad))]
            + sums.stat_updates)
        local = ([acc.read_value() for acc in grads], count.read_value(),
                 stats.read_value(), max_bad.read_value())
        resets = [(v, 0.0) for v in grads + [count, stats]] + [(max_bad, -1.0)]
        return local, resets, []

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
        l2_loss = 0.5 * weight_decay * total(decayed) if decayed else tf.constant(0.0)
        # Released together, so that no update starts while back-propagation
        # or the L2 term still reads the weights it would change (GATE_GRAPH).
        gated = tf.tuple(gradients + [l2_loss])
        return gated[:-1], gated[-1]

    def step(self, sess, fetches=(), interrupt=False):
        """Run one update: forward/backward over the step's batches, then SGD.

        Args:
          fetches: extra tensors evaluated with the step's last batch.
          interrupt: this process asks every worker to stop after this step
            (the flag travels in the reduced sums); ``interrupted`` in the
            result says if any did.
        Returns:
          dict with ``loss`` (the cross-entropy of each output, averaged over
          the step's labelled pixels, summed over the outputs: with one
          scale, that output's mean), ``losses`` ({output name: its mean},
          e.g. {'1': .., '0.75': .., '0.5': .., 'max': ..} with MSC), ``l2``
          (the weight-decay term before the update), ``accuracy`` (pixel
          accuracy of the last output, the fused one with MSC), ``lr`` (the
          base rate used), ``bad_labels`` (pixels whose label is neither a
          class id nor the ignore label; left out of the loss),
          ``max_bad_label`` (the largest of them, -1 if none),
          ``interrupted`` and ``fetched`` (the values of ``fetches``).
          Sums are over all towers, batches and workers.
        """
        passes = self.grad_update_every if self.accumulate_op is not None else 0
        fetched = ()
        for i in range(passes):
            fetched, _ = sess.run([fetches if i == passes - 1 else (),
                                   self.accumulate_op])
        lr, l2, (totals, max_bad), _, update_fetched = sess.run(
            [self.learning_rate, self.l2_loss, self._reduced, self.train_op,
             fetches if not passes else ()], {self.interrupt: float(bool(interrupt))})
        if not passes:
            fetched = update_fetched
        reported, layout = self.layout.read(totals), self.layout
        losses = {name: reported[layout.loss_sum(name)]
                  / max(reported[layout.num_valid(name)], 1.0) for name in layout.outputs}
        last_valid = reported[layout.num_valid(layout.outputs[-1])]
        return {"loss": float(sum(losses.values())), "losses": losses, "l2": float(l2),
                "accuracy": reported["num_correct"] / max(last_valid, 1.0), "lr": float(lr),
                "bad_labels": int(reported["num_bad_labels"]),
                "max_bad_label": int(max_bad), "interrupted": bool(reported["interrupt"] > 0),
                "fetched": fetched}


class ReportedSums(object):
    """The named slots of the float64 vector that carries what ``step``
    reports (and the interrupt flag) through the workers' sum.

    Built once from the outputs' names; packed and read by slot name, so an
    added entry cannot shift another.
    """

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.slots = [slot for name in self.outputs
                      for slot in (self.loss_sum(name), self.num_valid(name))]
        self.slots += ["num_correct", "num_bad_labels", "interrupt"]
        if len(set(self.slots)) != len(self.slots):
            raise ValueError("outputs named twice: %s" % self.outputs)
        self._index = {slot: i for i, slot in enumerate(self.slots)}

    @staticmethod
    def loss_sum(output):
        return "loss_sum/%s" % output

    @staticmethod
    def num_valid(output):
        return "num_valid/%s" % output

    def pack(self, values):
        """The float64 vector of ``values`` ({slot: scalar tensor}), every slot once."""
        if sorted(values) != sorted(self.slots):
            raise ValueError("slots %s given for %s" % (sorted(values), sorted(self.slots)))
        return tf.stack([tf.cast(values[slot], tf.float64) for slot in self.slots])

    def read(self, totals):
        """{slot: value} of a vector ``pack`` built (after the reduction)."""
        if len(totals) != len(self.slots):
            raise ValueError("%d values for %d slots" % (len(totals), len(self.slots)))
        return {slot: totals[i] for slot, i in self._index.items()}


def _reduce(collectives, local, before, sum_count=True):
    """The step's sums over every worker: one exchange per update.

    The gradient sums and the labelled-pixel count go in packed float32
    sums, the reported sums and the interrupt flag in one float64 vector
    (exact counts), the largest bad label by max. Every loop decision is then
    taken on values equal on all workers, so they all take the same branch.
    With several scales the count counts passes, not pixels: each output is
    already divided by its pixels over all workers (``sum_count`` False).
    """
    grads, count, stats, largest = local
    with tf.control_dependencies(before):
        if sum_count:
            *grads, count = collectives.all_reduce_sum(
                list(grads) + [tf.reshape(count, [1])])
            count = tf.reshape(count, [])
        else:
            grads = collectives.all_reduce_sum(list(grads))
        stats, = collectives.all_reduce_sum([stats])
        largest, = collectives.all_reduce_max([largest])
    return grads, count, stats, largest


def _local_sum(name, shape, dtype, initial=0.0):
    """A per-worker accumulator: local, so never checkpointed nor broadcast."""
    return tf.get_variable(name, shape, dtype, tf.constant_initializer(initial),
                           trainable=False, collections=[tf.GraphKeys.LOCAL_VARIABLES])
