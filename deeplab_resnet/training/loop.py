"""The training loop train.py runs: resume, steps with progress and summaries, sound snapshots.

``train(TrainConfig(...))`` (``config``: data, network, solver, snapshots,
validation, runtime parts) checks the data, builds the reader and the
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
from typing import Optional

import numpy as np

from deeplab_resnet import distributed
from deeplab_resnet.progress import Progress
from deeplab_resnet.data.reader import TrainingReader
from deeplab_resnet.images import decode_labels, inv_preprocess
from deeplab_resnet.runtime import session_config, tf
from deeplab_resnet.training import agreement
from deeplab_resnet.training.config import TrainConfig
from deeplab_resnet.training.duties import WorkerDuties, duties_for
from deeplab_resnet.training.snapshots import Snapshots, divergence_message, make_saver
from deeplab_resnet.training.solver import Trainer
from deeplab_resnet.training.towers import (VARIABLE_DEVICE, batchnorm_batch_warning,
                                            check_batch_split, tower_devices)
from deeplab_resnet.training.validation import Validation, scalar_summary

log = logging.getLogger(__name__)

# Pairs checked before the first step: images decoded in full, labels for
# size, colour and values (about 5 ms a VOC pair; the reader threads check
# the rest of a longer list as they read it).
CHECKED_LABELS = 1000
# Exit status after Ctrl-C, as a shell reports a SIGINT death.
INTERRUPTED_STATUS = 130


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

    A second signal stops without a snapshot (KeyboardInterrupt), once the
    step in progress returns: while TensorFlow holds the main thread, Python
    runs the handler once for all signals of a kind that came meanwhile, so
    two within one step count as one (the stop then keeps its snapshot).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s: saving a snapshot after this step (with several workers: "
                    "after the next step, which all of them finish), then stopping "
                    "(a signal after this step's end stops without one).",
                    signal.Signals(signum).name)

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
        other workers of TF_CONFIG (``config.solver.batch_size`` is then the batch
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
    devices = tower_devices(config.solver.num_gpus, config.solver.tower_device)
    session = session_config(config.runtime.intra_op_threads, config.runtime.inter_op_threads)
    if devices and config.solver.tower_device == "cpu":
        # Logical CPU devices for this session: what
        # tf.config.set_logical_device_configuration sets up, but a Session
        # given a ConfigProto (and a server) reads only the ConfigProto.
        session.device_count["CPU"] = len(devices)
    collectives = distributed.connect(task, config=session,
                                      step_timeout=config.runtime.step_timeout,
                                      startup_timeout=config.runtime.startup_timeout,
                                      peer_timeout=config.runtime.peer_timeout)
    return train_with(config, collectives, devices)


def train_with(config, collectives, devices=None):
    """``train`` on a ``distributed.Local`` or ``Cluster`` (``collectives``)."""
    workers = collectives.num_workers
    check_batch_split(config.solver.batch_size, workers * config.solver.num_gpus,
                      "--batch-size %d (all workers together)" % config.solver.batch_size,
                      "%d worker(s) x %d tower(s)" % (workers, config.solver.num_gpus))
    duties = duties_for(collectives, config)
    with tf.Graph().as_default() as graph:
        tf.set_random_seed(config.data.random_seed)
        reader = _reader(config, collectives.shard)
        reader.check(CHECKED_LABELS)
        validation = duties.validation(CHECKED_LABELS)
        # The snapshot directory is the chief's alone (shared storage).
        with duties.lock():
            resume = duties.find_resume()
            # First of the collectives, so its instance key is the same on
            # every worker whatever graph the others' flags build.
            agree = _agreement(config, collectives)
            trainer = _trainer(config, reader, devices, collectives)
            images_op = duties.summary_images(_image_summary(trainer, config))
            saver = make_saver(config.snapshots.keep_checkpoints)
            init_op = tf.group(tf.global_variables_initializer(),
                               tf.local_variables_initializer())
            sync_op = collectives.broadcast(tf.global_variables())
            final_barrier = collectives.barrier("final")
            graph.finalize()
            with collectives.session() as sess:
                sess.run(init_op)
                duties.restore(sess, saver, trainer, resume)
                start_step = _join(sess, agree, sync_op, collectives, trainer)
                if start_step is None:
                    return distributed.EXIT_LOST_WORKER
                duties.save_model_config()
                if start_step >= config.solver.num_steps:
                    log.info("%s is already trained to step %d of --num-steps %d; "
                             "nothing to do.", resume, start_step, config.solver.num_steps)
                    return 0
                snapshots = Snapshots(duties.snapshot_store(saver), network=config.network,
                                      ignore_label=config.data.ignore_label, resume=resume,
                                      start_step=start_step)
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
    return TrainingReader(config.data, num_classes=config.network.num_classes, shard=shard)


def _trainer(config, reader, devices, collectives):
    """The ``Trainer`` on this worker's share of the batch, with the warnings."""
    workers = collectives.num_workers
    image_batch, label_batch = reader.dequeue(config.solver.batch_size // workers)
    trainer = Trainer(image_batch, label_batch, config.network, solver=config.solver,
                      ignore_label=config.data.ignore_label, devices=devices,
                      collectives=collectives)
    if devices:
        log.info("%d towers on %s, %d images each; variables on %s", len(devices),
                 ", ".join(devices), config.solver.batch_size // workers // len(devices),
                 VARIABLE_DEVICE)
    warning = batchnorm_batch_warning(config.network.is_training, config.solver.batch_size,
                                      config.solver.num_gpus * workers)
    if warning:
        log.warning(warning)
    return trainer


def _image_summary(trainer, config):
    if config.snapshots.save_num_images <= 0:
        return None
    return image_summary(trainer.tower.images, trainer.tower.labels,
                         trainer.tower.logits, config.snapshots.save_num_images)


def _agreement(config, collectives):
    """(this worker's settings, their agreement op): see ``agreement``."""
    pairs = agreement.settings(config)
    return pairs, collectives.agreement(tf.constant(agreement.encode(pairs)))


def _join(sess, agree, sync_op, collectives, trainer):
    """Wait for every worker, check they share the settings, and take the
    chief's variables: the start step.

    The agreement is the first collective, so it also waits for the others
    (up to --startup-timeout). None if a worker was lost.

    Raises:
      ValueError: the workers were started with different settings.
    """
    pairs, agree_op = agree
    try:
        agreement.check(pairs, sess.run(agree_op))
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
    sess: tf.Session
    trainer: Trainer
    reader: TrainingReader
    snapshots: Snapshots
    duties: WorkerDuties
    collectives: distributed.Collectives
    config: TrainConfig
    validation: Optional[Validation] = None
    images_op: Optional[tf.Tensor] = None
    start_step: int = 0

    def run(self):
        threads = self.reader.start(self.sess)
        self.writer = self.duties.writer()
        self.progress = Progress(self.config.solver.num_steps)
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
        for done in range(self.start_step + 1, config.solver.num_steps + 1):
            with_images = self.images_op is not None and (
                done % config.snapshots.save_pred_every == 0 or done == self.start_step + 1)
            result = self._step(done, with_images, interrupt.requested)
            if result is None:
                return distributed.EXIT_LOST_WORKER
            self.lr = result["lr"]
            # Every worker stops after the same step: the one whose reduced
            # flag says some worker asked (see collectives.stop_after_step).
            stop = self.collectives.stop_after_step(interrupt.requested,
                                                    result["interrupted"])
            self._check(result, done)
            self._summarise(result, done, with_images)
            self._log(result, done, stop)
            validate = self.validation is not None and (
                done % config.validation.val_every == 0 or done == config.solver.num_steps)
            if validate or done % config.snapshots.save_pred_every == 0 or \
                    done == config.solver.num_steps or stop:
                self.snapshots.save(self.sess, self.trainer, done, self.lr)
            if validate and not stop:
                self.validation.run(self.snapshots.last, done, self.writer)
            if stop:
                log.info("interrupted at step %d; rerun the same command to resume.",
                         done)
                return INTERRUPTED_STATUS
        return 0

    def _step(self, done, with_images, interrupt):
        """``trainer.step``; None when a peer was lost. A reader failure keeps
        the steps before the bad file where the duties say, then raises."""
        try:
            return self.trainer.step(self.sess, [self.images_op] if with_images else [],
                                     interrupt=interrupt)
        except tf.errors.OpError as err:
            reader, snapshots = self.reader, self.snapshots
            lost = self.collectives.lost_peer(err) if reader.failure is None else None
            if lost:
                log.error(lost)
                return None
            if reader.failure is not None:
                lr = self.lr if self.lr is not None else self.sess.run(
                    self.trainer.learning_rate)
                self.duties.save_before_failure(snapshots, self.sess, self.trainer,
                                                done - 1, lr)
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
                    "%s became %s" % (what, value), done, self.lr, self.snapshots.last,
                    network=self.config.network,
                    ignore_label=self.config.data.ignore_label))

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
        if (done % config.snapshots.log_every == 0 or done == config.solver.num_steps or
                done == self.start_step + 1 or interrupted):
            self.duties.log_progress(
                "step %d/%d loss=%.4f%s l2=%.4g acc=%.3f lr=%.3e %s %s",
                done, config.solver.num_steps, result["loss"], _branch_losses(result["losses"]),
                result["l2"], result["accuracy"], self.lr,
                _images_per_second(self.progress, done,
                                   config.solver.batch_size * config.solver.grad_update_every),
                self.progress.line(done))


def _bad_label_message(result, step, config, last_snapshot):
    return ("Step %d met %d labelled pixel(s) with values up to %d, outside "
            "0..%d and not --ignore-label %d; they would make the loss NaN on a "
            "GPU. Check --num-classes and --label-map, and run "
            "dataset/check_labels.py on the data. Nothing was saved from this "
            "run after %s." % (step, result["bad_labels"], result["max_bad_label"],
                               config.network.num_classes - 1, config.data.ignore_label,
                               last_snapshot or "its start"))


def _branch_losses(losses):
    """' (1=0.71 0.75=0.74 0.5=0.83 max=0.69)' with MSC, '' with one scale."""
    if len(losses) == 1:
        return ""
    return " (%s)" % " ".join("%s=%.4f" % item for item in losses.items())


def _images_per_second(progress, done, images_per_step):
    rate = progress.rate(done, images_per_step)
    return "-- img/s" if rate is None else "%.3g img/s" % rate

