"""What a training process does besides training: the chief's duties, chosen in one place.

Every worker trains; the chief (worker 0, or the one process of a run) also
owns the snapshot directory: its lock, the resume, model_config.json, the
snapshot files, TensorBoard, validation and the progress lines.
``duties_for(collectives, config)`` picks ``ChiefDuties`` or ``WorkerDuties``
once; the loop calls the same methods on either and never asks who it is.
"""
import contextlib
import logging

from deeplab_resnet import checkpoints
from deeplab_resnet.runtime import first_error_line, tf
from deeplab_resnet.training import soundness
from deeplab_resnet.training.snapshots import (ChiefWrites, SnapshotLock, SnapshotWriter,
                                               check_snapshot_config, recover_rotation,
                                               remove_interrupted_saves)
from deeplab_resnet.training.validation import Validation

log = logging.getLogger(__name__)


class WorkerDuties(object):
    """A worker that is not the chief: it trains, and takes the chief's weights."""

    def __init__(self, config):
        self.config = config

    def lock(self):
        return contextlib.nullcontext()

    def find_resume(self):
        return None

    def restore(self, sess, saver, trainer, resume):
        """Nothing of its own: the chief's broadcast brings the weights and the step."""

    def snapshot_store(self, saver):
        """The chief writes the snapshots (``snapshots.ChiefWrites``)."""
        return ChiefWrites()

    def save_before_failure(self, snapshots, sess, trainer, step, lr):
        """Nothing: the chief, which has not met this worker's bad file, keeps
        its own last snapshot (a snapshot named here would not exist)."""

    def save_model_config(self):
        pass

    def writer(self):
        return _NoWriter()

    def validation(self, sample_size):
        return None

    def summary_images(self, images_op):
        return None

    def log_progress(self, line, *args):
        pass


class ChiefDuties(WorkerDuties):
    """The chief: the snapshot directory, TensorBoard, validation, progress lines."""

    def lock(self):
        """One training run per snapshot directory (``SnapshotLock``)."""
        return SnapshotLock(self.config.snapshots.snapshot_dir)

    def find_resume(self):
        """The snapshot to resume (after clearing interrupted saves), or None;
        checks --restore-from otherwise."""
        config = self.config
        remove_interrupted_saves(config.snapshots.snapshot_dir)
        resume, _ = soundness.newest_sound_snapshot(config.snapshots.snapshot_dir)
        if resume:
            check_snapshot_config(config.snapshots.snapshot_dir,
                                  config.network.num_classes, config.network.model,
                                  resume)
        elif config.network.restore_from:
            checkpoints.resolve_checkpoint(config.network.restore_from)
        return resume

    def restore(self, sess, saver, trainer, resume):
        """Resume a snapshot, restore weights, or start from scratch (the
        broadcast then gives every worker these weights and the step)."""
        config = self.config
        if resume:
            _resume(sess, saver, trainer, config, resume)
            return
        if config.network.restore_from:
            path = checkpoints.restore(sess, config.network.restore_from, trainer.tower.net,
                                       skip_classifier=config.network.not_restore_last,
                                       skip_mismatched_classifier=True)
            log.info("restored weights from %s%s", path,
                     " (classifier left initialised)" if config.network.not_restore_last else "")
        else:
            log.warning("No --restore-from: training from random weights. Real "
                        "training starts from converted ImageNet or DeepLab weights "
                        "(convert.py).%s", "" if config.network.is_training else
                        " BatchNorm is frozen at its initial statistics, so nothing "
                        "normalises the activations; add --is-training.")

    def snapshot_store(self, saver):
        """The snapshot directory is the chief's: it writes (``SnapshotWriter``)."""
        return SnapshotWriter(saver, self.config.snapshots.snapshot_dir)

    def save_before_failure(self, snapshots, sess, trainer, step, lr):
        """A bad file of the chief's own: keep the steps before it (``step``)."""
        if step > snapshots.last_step:
            snapshots.save(sess, trainer, step, lr)

    def save_model_config(self):
        checkpoints.save_model_config(self.config.snapshots.snapshot_dir, self.config.network.num_classes,
                                      self.config.network.model)

    def writer(self):
        return tf.summary.FileWriter(self.config.snapshots.snapshot_dir)

    def validation(self, sample_size):
        """``Validation`` with its list checked (``sample_size`` pairs), or None."""
        if not self.config.validation.val_list:
            return None
        config = self.config
        validation = Validation(config.validation, snapshot_dir=config.snapshots.snapshot_dir,
                                data=config.data, num_classes=config.network.num_classes,
                                runtime=config.runtime)
        validation.check(sample_size)
        return validation

    def summary_images(self, images_op):
        return images_op

    def log_progress(self, line, *args):
        log.info(line, *args)


def duties_for(collectives, config):
    """``ChiefDuties`` for the chief (or a lone process), else ``WorkerDuties``."""
    return {True: ChiefDuties, False: WorkerDuties}[bool(collectives.is_chief)](config)


def _resume(sess, saver, trainer, config, resume):
    try:
        saver.restore(sess, resume)
    except tf.errors.OpError as err:
        raise IOError("Cannot restore %s (%s). Move it away to resume from the "
                      "snapshot before it." % (resume, first_error_line(err)))
    recover_rotation(saver, config.snapshots.snapshot_dir,
                     config.snapshots.keep_checkpoints, resume)
    step = int(sess.run(trainer.global_step))
    if config.network.restore_from:
        log.info("--restore-from %s ignored: resuming the snapshot in %s.",
                 config.network.restore_from, config.snapshots.snapshot_dir)
    log.info("resuming from %s at step %d", resume, step)


class _NoWriter(object):
    """The FileWriter of a worker that is not the chief: TensorBoard is the chief's."""

    def add_summary(self, *args):
        pass

    def flush(self):
        pass

    def close(self):
        pass
