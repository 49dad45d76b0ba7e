"""Training DeepLab-v2: the loss, Caffe's solver, and the loop train.py runs.

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
  normalises with batch statistics and updates the moving averages;
* loss: softmax cross-entropy averaged over the labelled pixels, with labels
  shrunk to the logits' grid by nearest neighbour (``utils.prepare_label``).

Gradient accumulation (``grad_update_every``, Caffe's ``iter_size``) feeds k
batches into one update. Caffe averages the k batch means; here the summed
pixel losses of all k batches are divided by their total labelled pixels, so
k batches of b images give exactly the update of one batch of k*b (with
frozen BatchNorm), however many pixels each batch ignores.

TensorFlow's CPU kernels cannot back-propagate through dilated convolutions
("Current CPU implementations do not yet support dilation rates larger than
1"), so ``tower_loss`` builds the network under a gradient override that
differentiates each dilated convolution through its space-to-batch form
(``tf.nn.atrous_conv2d``), the same function. The forward pass keeps the
faster native dilated kernel.

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
``tf.nn.l2_loss`` and DrSleep's train.py define it); label values outside
``0..num_classes-1`` that reach the loss are counted, not fed to the
cross-entropy (which fails on CPU and returns NaN on GPU); and the loop
checks the weights before every snapshot so that no snapshot holds
diverged weights.
"""
import collections
import contextlib
import fcntl
import functools
import logging
import os
import signal
import threading
import time

import numpy as np
import tensorflow.compat.v1 as tf

from deeplab_resnet import utils
from deeplab_resnet.image_reader import ImageReader
from deeplab_resnet.model import ModelConfig

log = logging.getLogger(__name__)

# DeepLab-v2's prototxt: the classifier is new, so it learns faster.
CLASSIFIER_WEIGHTS_LR_MULT = 10.0
CLASSIFIER_BIASES_LR_MULT = 20.0
# Labels checked for size, colour and values before the first step.
CHECKED_LABELS = 100
CHECKPOINT_NAME = "model.ckpt"
# Exit status after Ctrl-C, as a shell reports a SIGINT death.
INTERRUPTED_STATUS = 130

# Name of the Conv2D gradient that works for dilated convolutions on CPU.
CONV2D_GRADIENT = "DeepLabConv2DGrad"
# Where the variables live when several towers share them.
VARIABLE_DEVICE = "/cpu:0"
_VARIABLE_OPS = ("Variable", "VariableV2", "VarHandleOp")
# Below this many images per device, batch statistics are noisy estimates of
# the moving averages they update; DeepLab-v2 trained with 10 on one GPU.
MIN_BATCHNORM_BATCH = 8

Tower = collections.namedtuple(
    "Tower", ["net", "images", "labels", "logits", "label", "loss_sum", "num_valid",
              "num_correct", "num_bad_labels", "max_bad_label"])
Param = collections.namedtuple("Param", ["var", "lr_mult", "decay"])


@tf.RegisterGradient(CONV2D_GRADIENT)
def _conv2d_grad(op, grad):
    """Conv2D's gradient from an equivalent op TF can differentiate on CPU.

    Conv2D's gradient needs only the op's inputs, so the rebuilt forward op
    is never run; only its gradient ops are.
    """
    inputs, weights = op.inputs
    strides = op.get_attr("strides")
    dilations = op.get_attr("dilations")
    if op.get_attr("data_format") != b"NHWC":
        raise ValueError("Only NHWC convolutions are supported, got %s."
                         % op.get_attr("data_format"))
    padding = op.get_attr("padding").decode()
    if padding == "EXPLICIT":
        pads = op.get_attr("explicit_paddings")
        padding = [pads[i:i + 2] for i in range(0, 8, 2)]
    rate = dilations[1]
    if max(dilations) == 1 and isinstance(padding, list):
        # TF's CPU gradients of an EXPLICIT-padded Conv2D are Eigen's kernels;
        # padding first gets oneDNN's (VALID), and a ResNet-101 step at
        # 321x321 takes 8% less time. The pad's gradient is a slice.
        padded = tf.pad(inputs, padding) if any(sum(padding, [])) else inputs
        output = tf.nn.conv2d(padded, weights, strides, "VALID")
    elif max(dilations) == 1:
        output = tf.nn.conv2d(inputs, weights, strides, padding)
    elif dilations[2] == rate and max(strides) == 1 and padding != "SAME":
        padded = inputs if padding == "VALID" else tf.pad(inputs, padding)
        output = tf.nn.atrous_conv2d(padded, weights, rate, "VALID")
    else:
        raise ValueError("Cannot differentiate a Conv2D with strides %s, "
                         "dilations %s and padding %s." % (strides, dilations,
                                                           padding))
    return tf.gradients(output, [inputs, weights], grad_ys=grad)


def tower_loss(images, labels, num_classes, ignore_label=utils.IGNORE_LABEL,
               is_training=False, config=None):
    """DeepLab on one batch and its summed pixel loss: what one device computes.

    Args:
      images: float32 [N, H, W, 3], BGR minus ``utils.IMG_MEAN``.
      labels: integer [N, H, W, 1] class ids, ``ignore_label`` where unlabelled.
      num_classes: classifier outputs.
      is_training: BatchNorm uses batch statistics and updates its averages.
      config: ``ModelConfig``; None for ResNet-101.
    Returns:
      ``Tower``: ``net``, the inputs ``images`` and ``labels``, ``logits``
      float32 [N, h, w, C] at 1/8 size, ``label`` int32 [N, h, w] on the
      logits' grid, and the scalars ``loss_sum`` (cross-entropy summed over
      labelled pixels), ``num_valid`` (labelled pixels), ``num_correct``
      (labelled pixels predicted right), ``num_bad_labels`` (pixels whose
      label is neither a class id nor ``ignore_label``; left out of the loss)
      and ``max_bad_label`` (the largest such value, -1 if none).
    """
    with tf.get_default_graph().gradient_override_map({"Conv2D": CONV2D_GRADIENT}):
        net, logits = utils.build_model(images, num_classes, is_training=is_training,
                                        config=config)
    logits = tf.cast(logits, tf.float32)
    label = utils.prepare_label(labels, tf.unstack(tf.shape(logits)[1:3]))
    labelled = tf.not_equal(label, ignore_label)
    valid = tf.logical_and(labelled, tf.logical_and(label >= 0, label < num_classes))
    bad = tf.logical_and(labelled, tf.logical_not(valid))
    # Ignored pixels get class 0 so the op accepts them, then count for nothing.
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(valid, label, tf.zeros_like(label)), logits=logits)
    loss_sum = tf.reduce_sum(tf.where(valid, pixel_loss, tf.zeros_like(pixel_loss)))
    pred = tf.argmax(logits, axis=3, output_type=tf.int32)
    num_correct = tf.reduce_sum(tf.cast(tf.logical_and(valid, tf.equal(pred, label)),
                                        tf.float32))
    num_valid = tf.reduce_sum(tf.cast(valid, tf.float32))
    num_bad = tf.reduce_sum(tf.cast(bad, tf.float32))
    max_bad = tf.reduce_max(tf.where(bad, label, tf.fill(tf.shape(label), -1)))
    return Tower(net, images, labels, logits, label, loss_sum, num_valid, num_correct,
                 num_bad, max_bad)


def _placement(device):
    """Ops on ``device``, variables on ``VARIABLE_DEVICE`` (a device function)."""
    def place(op):
        return VARIABLE_DEVICE if op.type in _VARIABLE_OPS else device
    return place


def build_towers(image_batch, label_batch, num_classes, ignore_label=utils.IGNORE_LABEL,
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
        tower = tower_loss(image_batch, label_batch, num_classes, ignore_label,
                           is_training, config)
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
                               ignore_label, is_training, config)
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
        if name.startswith(utils.CLASSIFIER_PREFIX):
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

    def __init__(self, image_batch, label_batch, num_classes,
                 ignore_label=utils.IGNORE_LABEL, is_training=False, config=None,
                 learning_rate=2.5e-4, momentum=0.9, power=0.9, num_steps=20001,
                 weight_decay=5e-4, grad_update_every=1, devices=None):
        if grad_update_every < 1:
            raise ValueError("--grad-update-every must be at least 1, got %d."
                             % grad_update_every)
        self.grad_update_every = grad_update_every
        self.global_step = tf.train.get_or_create_global_step()
        self.towers, self.params, grad_sums, stat_updates = build_towers(
            image_batch, label_batch, num_classes, ignore_label, is_training, config,
            devices)
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


def image_summary(images, labels, logits, max_outputs):
    """TensorBoard triplets: input, ground truth, prediction side by side."""
    size = tf.shape(images)[1:3]
    pred = tf.argmax(tf.image.resize_bilinear(logits, size), axis=3)

    def triplets(images, labels, pred):
        return np.concatenate([utils.inv_preprocess(images, max_outputs),
                               utils.decode_labels(labels, max_outputs),
                               utils.decode_labels(pred, max_outputs)], axis=2)

    picture = tf.numpy_function(triplets, [images, labels, pred], tf.uint8)
    return tf.summary.image("images", picture, max_outputs=max_outputs)


def scalar_summary(values):
    """A Summary of Python numbers, e.g. metrics summed over several runs."""
    return tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=value)
                             for tag, value in sorted(values.items())])


# ---------------------------------------------------------------- the loop
class InterruptRequest(object):
    """Ctrl-C (or SIGTERM, as a scheduler stops a job) asks the loop to
    snapshot after the current step and stop.

    A second signal stops at once (KeyboardInterrupt), without a snapshot.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: saving a snapshot after this step, then stopping "
                    "(again to stop without one).", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def check_snapshot_config(snapshot_dir, num_classes, config):
    """Refuse to resume checkpoints of another network.

    Raises:
      ValueError: ``snapshot_dir`` records another architecture.
    """
    saved_classes, saved_config = utils.load_model_config(snapshot_dir)
    if saved_config != config or saved_classes not in (None, num_classes):
        raise ValueError(
            "%s holds checkpoints of another network (num_classes=%s, %s); the "
            "flags ask for num_classes=%d, %s. Rerun with the flags it was "
            "trained with to resume, or pick another --snapshot-dir."
            % (snapshot_dir, saved_classes, saved_config.to_dict(), num_classes,
               config.to_dict()))


class SnapshotLock(object):
    """One training run per snapshot directory.

    Two runs writing the same directory would interleave their checkpoints
    and the 'checkpoint' index; the second one fails instead. The lock is an
    ``flock`` on ``<dir>/.train.lock``, released when the process ends however
    it ends.
    """

    def __init__(self, snapshot_dir):
        self.path = os.path.join(snapshot_dir, ".train.lock")
        self._file = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._file = open(self.path, "a")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise IOError("Another train.py is writing to %s. Wait for it to "
                          "finish or use another --snapshot-dir."
                          % os.path.dirname(self.path))
        return self

    def __exit__(self, *exc):
        self._file.close()


def train(args):
    """Everything ``train.py`` does after parsing its flags.

    Checks the data, builds the reader and the ``Trainer``, resumes from the
    last snapshot in ``args.snapshot_dir`` or restores ``args.restore_from``,
    trains to ``args.num_steps`` with progress lines and TensorBoard
    summaries, and snapshots every ``args.save_pred_every`` steps, at the end
    and on Ctrl-C or SIGTERM.

    Args:
      args: the parsed flags of train.py (an ``argparse.Namespace``).
    Returns:
      0 when done, ``INTERRUPTED_STATUS`` after a Ctrl-C/SIGTERM snapshot.
    Raises:
      IOError, ValueError: bad data, weights or flags, or a non-finite loss.
        Problems with the data, the flags or the weights are found before the
        first step, with nothing written.
    """
    config = ModelConfig(args.blocks, args.base_depth, args.aspp_rates)
    devices = tower_devices(args.num_gpus, args.tower_device)
    with tf.Graph().as_default() as graph:
        tf.set_random_seed(args.random_seed)
        reader = ImageReader(args.data_dir, args.data_list, args.input_size,
                             args.random_scale, args.random_mirror, args.ignore_label,
                             utils.IMG_MEAN, tf.train.Coordinator(),
                             num_classes=args.num_classes, label_map=args.label_map)
        reader.check(CHECKED_LABELS)
        with SnapshotLock(args.snapshot_dir):
            resume = tf.train.latest_checkpoint(args.snapshot_dir)
            if resume:
                check_snapshot_config(args.snapshot_dir, args.num_classes, config)
            elif args.restore_from:
                utils.resolve_checkpoint(args.restore_from)
            image_batch, label_batch = reader.dequeue(args.batch_size)
            trainer = Trainer(image_batch, label_batch, args.num_classes,
                              args.ignore_label, args.is_training, config,
                              args.learning_rate, args.momentum, args.power,
                              args.num_steps, args.weight_decay,
                              args.grad_update_every, devices)
            if devices:
                log.info("%d towers on %s, %d images each; variables on %s",
                         len(devices), ", ".join(devices),
                         args.batch_size // len(devices), VARIABLE_DEVICE)
            warning = batchnorm_batch_warning(args.is_training, args.batch_size,
                                              args.num_gpus)
            if warning:
                log.warning(warning)
            images_op = None
            if args.save_num_images > 0:
                images_op = image_summary(trainer.tower.images, trainer.tower.labels,
                                          trainer.tower.logits, args.save_num_images)
            saver = tf.train.Saver(tf.global_variables(),
                                   max_to_keep=args.keep_checkpoints or None,
                                   save_relative_paths=True)
            init_op = tf.group(tf.global_variables_initializer(),
                               tf.local_variables_initializer())
            graph.finalize()
            session_config = utils.session_config(args.intra_op_threads,
                                                  args.inter_op_threads)
            if devices and args.tower_device == "cpu":
                # Logical CPU devices for this session: what
                # tf.config.set_logical_device_configuration sets up, but
                # a Session given a ConfigProto reads only the ConfigProto.
                session_config.device_count["CPU"] = len(devices)
            with tf.Session(config=session_config) as sess:
                sess.run(init_op)
                start_step = _restore(sess, saver, trainer, args, resume)
                utils.save_model_config(args.snapshot_dir, args.num_classes, config)
                if start_step >= args.num_steps:
                    log.info("%s is already trained to step %d of --num-steps %d; "
                             "nothing to do.", resume, start_step, args.num_steps)
                    return 0
                return _run(sess, trainer, reader, saver, images_op, args, start_step)


def _restore(sess, saver, trainer, args, resume):
    """Resume a snapshot, restore weights, or start from scratch; the start step."""
    if resume:
        saver.restore(sess, resume)
        saver.recover_last_checkpoints(
            tf.train.get_checkpoint_state(args.snapshot_dir).all_model_checkpoint_paths)
        step = int(sess.run(trainer.global_step))
        if args.restore_from:
            log.info("--restore-from %s ignored: resuming the snapshot in %s.",
                     args.restore_from, args.snapshot_dir)
        log.info("resuming from %s at step %d", resume, step)
        return step
    if args.restore_from:
        path = utils.restore(sess, args.restore_from, trainer.tower.net,
                             skip_classifier=args.not_restore_last,
                             skip_mismatched_classifier=True)
        log.info("restored weights from %s%s", path,
                 " (classifier left initialised)" if args.not_restore_last else "")
    else:
        log.warning("No --restore-from: training from random weights. Real "
                    "training starts from converted ImageNet or DeepLab weights "
                    "(convert.py).%s", "" if args.is_training else
                    " BatchNorm is frozen at its initial statistics, so nothing "
                    "normalises the activations; add --is-training.")
    return 0


def _run(sess, trainer, reader, saver, images_op, args, start_step):
    """Train with the reader's threads running; stop them however it ends."""
    threads = reader.start(sess)
    writer = tf.summary.FileWriter(args.snapshot_dir)
    try:
        return _loop(sess, trainer, reader, saver, writer, images_op, args,
                     start_step)
    finally:
        writer.close()
        reader.coord.request_stop()
        try:
            reader.coord.join(threads, stop_grace_period_secs=10)
        except tf.errors.OpError as err:
            # A reader error; the loop has raised it by now if it mattered.
            log.debug("reader stopped with %s", err)


def _loop(sess, trainer, reader, saver, writer, images_op, args, start_step):
    progress = utils.Progress(args.num_steps)
    images_per_step = args.batch_size * args.grad_update_every
    prefix = os.path.join(args.snapshot_dir, CHECKPOINT_NAME)
    last_snapshot = tf.train.latest_checkpoint(args.snapshot_dir)
    with InterruptRequest() as interrupt:
        for done in range(start_step + 1, args.num_steps + 1):
            with_images = done % args.save_pred_every == 0 or done == start_step + 1
            try:
                result = trainer.step(sess, [images_op] if with_images and images_op
                                      is not None else [])
            except tf.errors.OpError:
                reader.raise_if_failed()
                raise
            if result["bad_labels"]:
                raise ValueError(_bad_label_message(result, done, args,
                                                    last_snapshot))
            for what, value in (("loss", result["loss"]),
                                ("weight-decay loss (l2)", result["l2"])):
                if not np.isfinite(value):
                    raise ValueError(divergence_message(
                        "%s became %s" % (what, value), done, result["lr"], args,
                        last_snapshot))
            writer.add_summary(scalar_summary({
                "loss": result["loss"], "l2_loss": result["l2"],
                "total_loss": result["loss"] + result["l2"],
                "accuracy": result["accuracy"], "learning_rate": result["lr"]}), done)
            if with_images and images_op is not None:
                writer.add_summary(result["fetched"][0], done)
            if done % args.log_every == 0 or done == args.num_steps or \
                    done == start_step + 1 or interrupt.requested:
                log.info("step %d/%d loss=%.4f l2=%.4g acc=%.3f lr=%.3e %s %s",
                         done, args.num_steps, result["loss"], result["l2"],
                         result["accuracy"], result["lr"],
                         _images_per_second(progress, done, images_per_step),
                         progress.line(done))
            if done % args.save_pred_every == 0 or done == args.num_steps or \
                    interrupt.requested:
                if not sess.run(trainer.weights_finite):
                    raise ValueError(divergence_message(
                        "weights became non-finite or too large (> 1e19)", done,
                        result["lr"], args, last_snapshot))
                # Saver writes the data and index files under temporary names,
                # renames them, and only then rewrites the 'checkpoint' file
                # (atomically), so a crash mid-save leaves it on the last good one.
                last_snapshot = saver.save(sess, prefix, global_step=done,
                                           write_meta_graph=False)
                log.info("saved %s", last_snapshot)
            if interrupt.requested:
                log.info("interrupted at step %d; rerun the same command to resume.",
                         done)
                return INTERRUPTED_STATUS
    return 0


def divergence_message(what, step, lr, args, last_snapshot):
    """What to check when training diverges: labels first, then the rate."""
    scratch = ""
    if not args.restore_from:
        scratch = (" Training from random weights (no --restore-from) diverges "
                   "easily: start from converted weights (convert.py)%s."
                   % ("" if args.is_training else
                      " or add --is-training so that BatchNorm normalises"))
    return ("The %s at step %d (lr=%.3g). First check the labels: every label "
            "value must be a class id below --num-classes %d or --ignore-label "
            "%d (dataset/check_labels.py lists the files with other values). "
            "Then try a lower --learning-rate, e.g. a tenth.%s Nothing was "
            "saved from this run after %s."
            % (what, step, lr, args.num_classes, args.ignore_label, scratch,
               last_snapshot or "its start"))


def _bad_label_message(result, step, args, last_snapshot):
    return ("Step %d met %d labelled pixel(s) with values up to %d, outside "
            "0..%d and not --ignore-label %d; they would make the loss NaN on a "
            "GPU. Check --num-classes and --label-map, and run "
            "dataset/check_labels.py on the data. Nothing was saved from this "
            "run after %s." % (step, result["bad_labels"], result["max_bad_label"],
                               args.num_classes - 1, args.ignore_label,
                               last_snapshot or "its start"))


def _images_per_second(progress, done, images_per_step):
    progress.update(done)
    elapsed = time.time() - progress.start_time
    steps = done - progress.start_count
    if steps <= 0 or elapsed <= 0:
        return "-- img/s"
    return "%.3g img/s" % (steps * images_per_step / elapsed)
