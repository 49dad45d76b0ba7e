"""The training loop train.py runs: resume, steps with progress and summaries, sound snapshots.

``train(TrainConfig(...))`` checks the data, builds the reader and the
``solver.Trainer``, resumes from the last snapshot in ``snapshot_dir`` or
restores ``restore_from``, trains to ``num_steps`` with progress lines and
TensorBoard summaries, and snapshots every ``save_pred_every`` steps, at the
end and on Ctrl-C or SIGTERM. The loop checks the weights before every
snapshot so that no snapshot holds diverged weights.
"""
import dataclasses
import logging
import signal
import threading
from typing import Optional, Tuple

import numpy as np

from deeplab_resnet import checkpoints, distributed
from deeplab_resnet.cli import Progress
from deeplab_resnet.constants import IGNORE_LABEL, NUM_CLASSES
from deeplab_resnet.data.reader import ImageReader
from deeplab_resnet.images import decode_labels, inv_preprocess
from deeplab_resnet.model import ModelConfig
from deeplab_resnet.runtime import session_config, tf
from deeplab_resnet.training import gradients
from deeplab_resnet.training.duties import duties_for
from deeplab_resnet.training.snapshots import (SnapshotLock, Snapshots,  # noqa: F401
                                               divergence_message, make_saver)
from deeplab_resnet.training.solver import Trainer
from deeplab_resnet.training.towers import (VARIABLE_DEVICE, batchnorm_batch_warning,
                                            check_batch_split, tower_devices)
from deeplab_resnet.training.validation import scalar_summary

log = logging.getLogger(__name__)

# Pairs checked before the first step: images decoded in full, labels for
# size, colour and values (about 5 ms a VOC pair; the reader threads check
# the rest of a longer list as they read it).
CHECKED_LABELS = 1000
# Exit status after Ctrl-C, as a shell reports a SIGINT death.
INTERRUPTED_STATUS = 130


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are DeepLab-v2's recipe.

    train.py's flags map one to one onto these fields (``--batch-size`` ->
    ``batch_size``), and show these defaults.
    """
    # Data.
    data_dir: str = "."
    data_list: str = "dataset/train.txt"
    ignore_label: int = IGNORE_LABEL
    label_map: Optional[str] = None
    input_size: Tuple[int, int] = (321, 321)
    random_scale: bool = False
    scale_set: Optional[Tuple[float, ...]] = None
    random_mirror: bool = False
    random_seed: int = 1234
    skip_bad_images: bool = False
    shuffle: bool = True
    # Model and its starting point.
    num_classes: int = NUM_CLASSES
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    restore_from: Optional[str] = None
    not_restore_last: bool = False
    is_training: bool = False
    train_scales: Tuple[float, ...] = (1.0,)
    train_last_only: bool = False
    bf16: bool = False
    # Solver.
    batch_size: int = 10
    learning_rate: float = 2.5e-4
    momentum: float = 0.9
    power: float = 0.9
    num_steps: int = 20001
    weight_decay: float = 0.0005
    grad_update_every: int = 1
    num_gpus: int = 1
    tower_device: str = "gpu"
    # Snapshots, logs, threads.
    snapshot_dir: str = "snapshots"
    save_pred_every: int = 1000
    save_num_images: int = 2
    keep_checkpoints: int = 5
    log_every: int = 1
    # Validation during training.
    val_list: Optional[str] = None
    val_data_dir: Optional[str] = None
    val_every: int = 1000
    val_images: Optional[int] = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    # Several workers (TF_CONFIG; see ``distributed``).
    step_timeout: float = 1800.0
    startup_timeout: float = 300.0
    peer_timeout: float = 45.0


def image_summary(images, labels, logits, max_outputs):
    """TensorBoard triplets: input, ground truth, prediction side by side."""
    size = tf.shape(images)[1:3]
    pred = tf.argmax(tf.image.resize_bilinear(logits, size), axis=3)

    def triplets(images, labels, pred):
        return np.concatenate([inv_preprocess(images, max_outputs),
                               decode_labels(labels, max_outputs),
                               decode_labels(pred, max_outputs)], axis=2)

    picture = tf.numpy_function(triplets, [images, labels, pred], tf.uint8)
    return tf.summary.image("images", picture, max_outputs=max_outputs)


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


def train(config, task=None):
    """Everything ``train.py`` does after parsing its flags (see the module doc).

    Args:
      config: ``TrainConfig``.
      task: a ``distributed.WorkerTask`` to train synchronously with the
        other workers of TF_CONFIG (``config.batch_size`` is then the batch
        of all workers together; worker i reads rows i::N of the list);
        worker 0, the chief, alone resumes, writes the snapshot directory
        and validates. None: this process alone.
    Returns:
      0 when done, ``INTERRUPTED_STATUS`` after a Ctrl-C/SIGTERM snapshot,
      ``distributed.EXIT_LOST_WORKER`` when a worker was lost.
    Raises:
      IOError, ValueError: bad data, weights or flags, a non-finite loss, or
        a snapshot that cannot be written. Problems with the data, the flags
        or the weights are found before the first step, with nothing written.
    """
    devices = tower_devices(config.num_gpus, config.tower_device)
    session = session_config(config.intra_op_threads, config.inter_op_threads)
    if devices and config.tower_device == "cpu":
        # Logical CPU devices for this session: what
        # tf.config.set_logical_device_configuration sets up, but a Session
        # given a ConfigProto (and a server) reads only the ConfigProto.
        session.device_count["CPU"] = len(devices)
    collectives = distributed.connect(task, config=session,
                                      step_timeout=config.step_timeout,
                                      startup_timeout=config.startup_timeout,
                                      peer_timeout=config.peer_timeout)
    return train_with(config, collectives, devices)


def train_with(config, collectives, devices=None):
    """``train`` on a ``distributed.Local`` or ``Cluster`` (``collectives``)."""
    workers = collectives.num_workers
    check_batch_split(config.batch_size, workers * config.num_gpus,
                      "--batch-size %d (all workers together)" % config.batch_size,
                      "%d worker(s) x %d tower(s)" % (workers, config.num_gpus))
    duties = duties_for(collectives, config)
    with tf.Graph().as_default() as graph:
        tf.set_random_seed(config.random_seed)
        reader = _reader(config, collectives.shard)
        reader.check(CHECKED_LABELS)
        validation = duties.validation(CHECKED_LABELS)
        # The snapshot directory is the chief's alone (shared storage).
        with duties.lock():
            resume = duties.find_resume()
            trainer = _trainer(config, reader, devices, collectives)
            images_op = duties.summary_images(_image_summary(trainer, config))
            saver = make_saver(config.keep_checkpoints)
            init_op = tf.group(tf.global_variables_initializer(),
                               tf.local_variables_initializer())
            sync_op = collectives.broadcast(tf.global_variables())
            final_barrier = collectives.barrier("final")
            graph.finalize()
            with collectives.session() as sess:
                sess.run(init_op)
                duties.restore(sess, saver, trainer, resume)
                start_step = _join(sess, sync_op, collectives, trainer)
                if start_step is None:
                    return distributed.EXIT_LOST_WORKER
                duties.save_model_config()
                if start_step >= config.num_steps:
                    log.info("%s is already trained to step %d of --num-steps %d; "
                             "nothing to do.", resume, start_step, config.num_steps)
                    return 0
                snapshots = Snapshots(saver, config, resume, start_step,
                                      write=duties.writes_snapshots)
                snapshots.start(sess, trainer)
                run = Run(sess=sess, trainer=trainer, reader=reader, snapshots=snapshots,
                          duties=duties, collectives=collectives, config=config,
                          validation=validation, images_op=images_op,
                          start_step=start_step)
                status = run.run()
                if status != distributed.EXIT_LOST_WORKER:
                    status = _leave(sess, final_barrier, collectives, status)
                return status


def _reader(config, shard):
    return ImageReader(config.data_dir, config.data_list, input_size=config.input_size,
                       random_scale=config.random_scale, scale_set=config.scale_set,
                       random_mirror=config.random_mirror,
                       ignore_label=config.ignore_label, num_classes=config.num_classes,
                       label_map=config.label_map,
                       skip_bad_images=config.skip_bad_images, shuffle=config.shuffle,
                       shard=shard)


def _trainer(config, reader, devices, collectives):
    """The ``Trainer`` on this worker's share of the batch, with the warnings."""
    workers = collectives.num_workers
    image_batch, label_batch = reader.dequeue(config.batch_size // workers)
    trainer = Trainer(image_batch, label_batch, config.num_classes,
                      ignore_label=config.ignore_label, is_training=config.is_training,
                      config=config.model, learning_rate=config.learning_rate,
                      momentum=config.momentum, power=config.power,
                      num_steps=config.num_steps, weight_decay=config.weight_decay,
                      grad_update_every=config.grad_update_every, devices=devices,
                      scales=config.train_scales, last_only=config.train_last_only,
                      collectives=collectives, compute_dtype=_compute_dtype(config.bf16))
    if devices:
        log.info("%d towers on %s, %d images each; variables on %s", len(devices),
                 ", ".join(devices), config.batch_size // workers // len(devices),
                 VARIABLE_DEVICE)
    warning = batchnorm_batch_warning(config.is_training, config.batch_size,
                                      config.num_gpus * workers)
    if warning:
        log.warning(warning)
    return trainer


def _image_summary(trainer, config):
    if config.save_num_images <= 0:
        return None
    return image_summary(trainer.tower.images, trainer.tower.labels,
                         trainer.tower.logits, config.save_num_images)


def _join(sess, sync_op, collectives, trainer):
    """Wait for every worker and take the chief's variables: the start step.

    The broadcast is the first collective, so it also waits for the others
    (up to --startup-timeout). None if a worker was lost.
    """
    try:
        sess.run(sync_op)
    except tf.errors.OpError as err:
        log.error(collectives.describe_failure(err))
        return None
    collectives.watch_peers()
    step = int(sess.run(trainer.global_step))
    log.info("worker %d of %d: starting at global step %d", collectives.index,
             collectives.num_workers, step)
    return step


def _leave(sess, final_barrier, collectives, status):
    """Nobody leaves before the chief's last snapshot is written."""
    try:
        sess.run(final_barrier)
    except tf.errors.OpError as err:
        log.error(collectives.describe_failure(err))
        return distributed.EXIT_LOST_WORKER
    collectives.stop_watching()
    return status


@dataclasses.dataclass
class Run(object):
    """One training run in its session: the state the steps share.

    Trains with the reader's threads running and stops them however it
    ends; every step is the same on every worker, the chief's duties aside.
    """
    sess: object
    trainer: Trainer
    reader: ImageReader
    snapshots: Snapshots
    duties: object
    collectives: object
    config: TrainConfig
    validation: object = None
    images_op: object = None
    start_step: int = 0

    def run(self):
        threads = self.reader.start(self.sess)
        self.writer = self.duties.writer()
        self.progress = Progress(self.config.num_steps)
        self.lr = None
        try:
            with InterruptRequest() as interrupt:
                return self._loop(interrupt)
        finally:
            self.writer.close()
            self.reader.coord.request_stop()
            try:
                self.reader.coord.join(threads, stop_grace_period_secs=10)
            except tf.errors.OpError as err:
                # A reader error; the loop has raised it by now if it mattered.
                log.debug("reader stopped with %s", err)

    def _loop(self, interrupt):
        config = self.config
        for done in range(self.start_step + 1, config.num_steps + 1):
            with_images = self.images_op is not None and (
                done % config.save_pred_every == 0 or done == self.start_step + 1)
            result = self._step(done, with_images, interrupt.requested)
            if result is None:
                return distributed.EXIT_LOST_WORKER
            self.lr = result["lr"]
            # Some worker was asked to stop: all stop after this step.
            interrupt.requested = interrupt.requested or result["interrupted"]
            self._check(result, done)
            self._summarise(result, done, with_images)
            self._log(result, done, interrupt.requested)
            validate = self.validation is not None and (
                done % config.val_every == 0 or done == config.num_steps)
            if validate or done % config.save_pred_every == 0 or \
                    done == config.num_steps or interrupt.requested:
                self.snapshots.save(self.sess, self.trainer, done, self.lr)
            if validate and not interrupt.requested:
                self.validation.run(self.snapshots.last, done, self.writer)
            if interrupt.requested:
                log.info("interrupted at step %d; rerun the same command to resume.",
                         done)
                return INTERRUPTED_STATUS
        return 0

    def _step(self, done, with_images, interrupt):
        """``trainer.step``; None when a peer was lost. A reader failure saves
        the steps before the bad file, then raises."""
        try:
            return self.trainer.step(self.sess, [self.images_op] if with_images else [],
                                     interrupt=interrupt)
        except tf.errors.OpError as err:
            reader, snapshots = self.reader, self.snapshots
            lost = self.collectives.lost_peer(err) if reader.failure is None else None
            if lost:
                log.error(lost)
                return None
            if reader.failure is not None and done - 1 > snapshots.last_step:
                # The steps before the bad file are kept.
                snapshots.save(self.sess, self.trainer, done - 1, self.lr
                               if self.lr is not None else
                               self.sess.run(self.trainer.learning_rate))
            reader.raise_if_failed(" Fix it, then rerun the same command to resume "
                                   "from %s." % (snapshots.last or "the start"))
            raise

    def _check(self, result, done):
        """Bad labels and a non-finite loss end the run, with what to check."""
        if result["bad_labels"]:
            raise ValueError(_bad_label_message(result, done, self.config,
                                                self.snapshots.last))
        for what, value in (("loss", result["loss"]),
                            ("weight-decay loss (l2)", result["l2"])):
            if not np.isfinite(value):
                raise ValueError(divergence_message(
                    "%s became %s" % (what, value), done, self.lr, self.config,
                    self.snapshots.last))

    def _summarise(self, result, done, with_images):
        scalars = {"loss": result["loss"], "l2_loss": result["l2"],
                   "total_loss": result["loss"] + result["l2"],
                   "accuracy": result["accuracy"], "learning_rate": self.lr}
        if len(result["losses"]) > 1:
            scalars.update(("loss_%s" % name, value)
                           for name, value in result["losses"].items())
        self.writer.add_summary(scalar_summary(scalars), done)
        if with_images:
            self.writer.add_summary(result["fetched"][0], done)

    def _log(self, result, done, interrupted):
        config = self.config
        if (done % config.log_every == 0 or done == config.num_steps or
                done == self.start_step + 1 or interrupted):
            self.duties.log_progress(
                "step %d/%d loss=%.4f%s l2=%.4g acc=%.3f lr=%.3e %s %s",
                done, config.num_steps, result["loss"], _branch_losses(result["losses"]),
                result["l2"], result["accuracy"], self.lr,
                _images_per_second(self.progress, done,
                                   config.batch_size * config.grad_update_every),
                self.progress.line(done))


def _bad_label_message(result, step, config, last_snapshot):
    return ("Step %d met %d labelled pixel(s) with values up to %d, outside "
            "0..%d and not --ignore-label %d; they would make the loss NaN on a "
            "GPU. Check --num-classes and --label-map, and run "
            "dataset/check_labels.py on the data. Nothing was saved from this "
            "run after %s." % (step, result["bad_labels"], result["max_bad_label"],
                               config.num_classes - 1, config.ignore_label,
                               last_snapshot or "its start"))


def _branch_losses(losses):
    """' (1=0.71 0.75=0.74 0.5=0.83 max=0.69)' with MSC, '' with one scale."""
    if len(losses) == 1:
        return ""
    return " (%s)" % " ".join("%s=%.4f" % item for item in losses.items())


def _images_per_second(progress, done, images_per_step):
    rate = progress.rate(done, images_per_step)
    return "-- img/s" if rate is None else "%.3g img/s" % rate


def _compute_dtype(bf16):
    """bfloat16 for --bf16, with a warning where the CPU would emulate it."""
    if not bf16:
        return tf.float32
    if not tf.config.list_physical_devices("GPU") and not gradients.onednn_handles(
            "bfloat16"):
        log.warning("--bf16 on a CPU without native bfloat16 (AVX512_BF16 or AMX): "
                    "training stays correct (backprops run in float32) but will be "
                    "slower than float32.")
    return tf.bfloat16
