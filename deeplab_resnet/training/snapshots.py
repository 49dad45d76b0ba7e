"""Snapshots: only of sound weights, one run per directory, no half-written files left.

A snapshot is written only after ``soundness.soundness_problem`` passes
on the weights, against the last sound ones, so a diverging run never
leaves a snapshot that resuming would diverge from again; a save that fails
(disk full, permission) ends the run with one line, the last snapshot
intact; and what a killed save left behind is removed at the next start.
"""
import fcntl
import logging
import os
import re
import shutil

import numpy as np

from deeplab_resnet import checkpoints, files
from deeplab_resnet.constants import MODEL_CONFIG_FILE
from deeplab_resnet.runtime import first_error_line, tf
from deeplab_resnet.training import soundness

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "model.ckpt"
# The index file of a snapshot train.py wrote: nothing else is ever rotated.
_OWN_INDEX = re.compile(r"^%s-(\d+)\.index$" % re.escape(CHECKPOINT_NAME))


def make_saver(keep_checkpoints):
    """The Saver of the snapshots: the newest ``keep_checkpoints`` kept, 0 for all.

    Raises:
      ValueError: a negative count, which would delete every snapshot, so
        that a rerun silently starts again from step 0.
    """
    if keep_checkpoints < 0:
        raise ValueError("--keep-checkpoints %d would delete every snapshot; give 0 "
                         "to keep all, or how many to keep." % keep_checkpoints)
    return tf.train.Saver(tf.global_variables(), max_to_keep=keep_checkpoints or None,
                          save_relative_paths=True)


def own_snapshots(snapshot_dir):
    """The snapshots train.py wrote in ``snapshot_dir`` (``model.ckpt-N``), oldest first.

    Only these take part in rotation: a user's copy (``my_backup.ckpt``) or
    another tool's checkpoint in the same directory is never deleted.
    """
    steps = sorted(int(match.group(1)) for match in map(_OWN_INDEX.match,
                                                        os.listdir(snapshot_dir)) if match)
    return [os.path.join(snapshot_dir, "%s-%d" % (CHECKPOINT_NAME, step)) for step in steps]


def recover_rotation(saver, snapshot_dir, keep_checkpoints, resume):
    """Hand the Saver's rotation the run's own snapshots, the newest ``keep_checkpoints``.

    The Saver drops one old snapshot per save, so a longer list would keep
    more than asked for ever after; the older own snapshots go now instead
    (never ``resume``, the one the run continues from).
    """
    own = own_snapshots(snapshot_dir)
    if keep_checkpoints and len(own) > keep_checkpoints:
        old = [prefix for prefix in own[:-keep_checkpoints] if prefix != resume]
        for prefix in old:
            tf.train.remove_checkpoint(prefix)
        if old:
            log.info("removed %d snapshot(s) beyond --keep-checkpoints %d: %s", len(old),
                     keep_checkpoints, ", ".join(os.path.basename(p) for p in old))
        own = [prefix for prefix in own if prefix not in old]
    saver.recover_last_checkpoints(own)


def check_snapshot_config(snapshot_dir, num_classes, config, resume=None):
    """Refuse to resume checkpoints of another network.

    Without ``model_config.json`` (deleted, or a directory copied without
    it) the network is read from the shapes of ``resume``'s variables: the
    run resumes if they fit the flags (the file is then written again), and
    otherwise says what the shapes show.

    Raises:
      ValueError: ``snapshot_dir`` records (or its checkpoint shows) another
        architecture.
    """
    if resume and not os.path.isfile(os.path.join(snapshot_dir, MODEL_CONFIG_FILE)):
        _check_shapes(snapshot_dir, resume, num_classes, config)
        return
    saved_classes, saved_config = checkpoints.load_model_config(snapshot_dir)
    if saved_config != config or saved_classes not in (None, num_classes):
        raise ValueError(
            "%s holds checkpoints of another network (num_classes=%s, %s); the "
            "flags ask for num_classes=%d, %s. Rerun with the flags it was "
            "trained with to resume, or pick another --snapshot-dir."
            % (snapshot_dir, saved_classes, saved_config.to_dict(), num_classes,
               config.to_dict()))


def _check_shapes(snapshot_dir, resume, num_classes, config):
    found = checkpoints.architecture_from_shapes(resume)
    wanted = {"blocks": list(config.blocks), "base_depth": config.base_depth,
              "aspp_branches": len(config.aspp_rates), "num_classes": num_classes}
    if found == wanted:
        log.warning("%s has no %s; %s's variable shapes fit the flags' network, so "
                    "the run resumes and writes the file again (ASPP rates %s as "
                    "the flags say: the shapes cannot show them).", snapshot_dir,
                    MODEL_CONFIG_FILE, resume, list(config.aspp_rates))
        return
    raise ValueError(
        "%s has no %s, and the variable shapes of %s show another network than the "
        "flags ask for: %s, against %s. Rerun with --num-classes, --blocks and "
        "--base-depth (and the --aspp-rates it was trained with) matching the "
        "checkpoint to resume, or pick another --snapshot-dir."
        % (snapshot_dir, MODEL_CONFIG_FILE, resume, _describe(found), _describe(wanted)))


def _describe(architecture):
    return ("blocks %s, base depth %s, %s ASPP branches, %s classes"
            % (",".join(map(str, architecture["blocks"])), architecture["base_depth"],
               architecture["aspp_branches"], architecture["num_classes"]))


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


def remove_interrupted_saves(snapshot_dir):
    """Delete what a save killed half-way left behind (kill -9, power loss).

    TensorFlow writes a snapshot's data under ``<name>.tempstate<n>`` and
    renames it when complete; ``files.atomic_write`` uses hidden ``.tmp<pid>``
    names. Under the snapshot lock no other run is writing here, so any such
    file is an orphan, often the size of a whole snapshot.
    """
    removed = []
    for name in os.listdir(snapshot_dir):
        path = os.path.join(snapshot_dir, name)
        if ".tempstate" in name or (name.startswith(".") and files.is_temporary(name)):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(name)
    if removed:
        log.warning("removed %d file(s) an interrupted save left in %s: %s",
                    len(removed), snapshot_dir, ", ".join(sorted(removed)))


class SnapshotWriter(object):
    """Writes the snapshot of a step into the snapshot directory: what the
    process that owns it (the chief) stores (``duties.ChiefDuties``)."""

    def __init__(self, saver, snapshot_dir):
        self.saver, self.snapshot_dir = saver, snapshot_dir
        self.prefix = os.path.join(snapshot_dir, CHECKPOINT_NAME)

    def name(self, resume, step):
        """How messages name the snapshot the run starts from: its path."""
        return resume

    def write(self, sess, step, last):
        """Write the snapshot of ``step``; its path.

        Saver writes the data and index files under temporary names, renames
        them, and only then rewrites the 'checkpoint' file (atomically), so a
        failure mid-save leaves it on the last good snapshot.

        Raises:
          IOError: the snapshot could not be written (disk full, no
            permission); ``last`` is intact.
        """
        try:
            path = self.saver.save(sess, self.prefix, global_step=step,
                                   write_meta_graph=False)
        except (tf.errors.OpError, OSError) as err:
            raise IOError("Could not write the snapshot of step %d to %s (%s). %s "
                          "Free some space or fix the permissions, then rerun the "
                          "same command to resume." % (
                              step, self.snapshot_dir, first_error_line(err),
                              "%s is intact." % last if last else
                              "Nothing was saved from this run."))
        log.info("saved %s", path)
        return path


class ChiefWrites(object):
    """What a worker that is not the chief stores: nothing. The chief writes
    the snapshot of the same step (every worker saves after the same steps,
    and a chief that cannot stops them all), so its messages name that one,
    by its step, never by a path of their own making."""

    def name(self, resume, step):
        return self.write(None, step, None) if step else None

    def write(self, sess, step, last):
        return "the chief's snapshot of step %d" % step


class Snapshots(object):
    """Snapshots of sound weights only, and the one message for a failed save.

    Before every save the weights are checked with
    ``soundness.soundness_problem`` against the last sound ones: those of
    the last snapshot, or of the run's start. So a diverging run never
    leaves a snapshot that resuming would diverge from again. Every worker
    checks (the weights are bitwise equal on all, so all stop together on a
    diverged run); ``store`` writes (``SnapshotWriter``) or leaves it to the
    chief (``ChiefWrites``), as the duties chose.

    Attributes:
      last: the last sound snapshot (this run's, or the one it resumed), as
        messages name it.
      last_step: its step.
    """

    def __init__(self, store, *, network, ignore_label, resume=None, start_step=0):
        self.store = store
        self.network, self.ignore_label = network, ignore_label
        self.last = store.name(resume, start_step)
        self.last_step = start_step
        self.reference_norm = None

    def start(self, sess, trainer):
        """Take the weights the run starts from as the reference."""
        statistics = sess.run(trainer.weight_statistics)
        if soundness.soundness_problem(*statistics) is None:
            self.reference_norm = statistics[0]

    def check(self, sess, trainer, step, lr):
        """Raise the divergence error unless the weights are sound now.

        Returns:
          The norm of the trained weights.
        """
        weights, momentum = sess.run([trainer.weight_statistics,
                                      trainer.momentum_statistics])
        problem = (soundness.soundness_problem(*weights,
                                                 reference_norm=self.reference_norm)
                   or (None if momentum[2] and np.isfinite(momentum[0]) else
                       "momentum became non-finite"))
        if problem is not None:
            raise ValueError(divergence_message(problem, step, lr, self.last,
                                                network=self.network,
                                                ignore_label=self.ignore_label))
        return weights[0]

    def save(self, sess, trainer, step, lr):
        """Check the weights, then store the snapshot of ``step``; how it is named.

        Raises:
          ValueError: the weights diverged (nothing is written).
          IOError: the snapshot could not be written (``SnapshotWriter``).
        """
        norm = self.check(sess, trainer, step, lr)
        self.last = self.store.write(sess, step, self.last)
        self.last_step, self.reference_norm = step, norm
        return self.last


def divergence_message(what, step, lr, last_snapshot, *, network, ignore_label):
    """What to check when training diverges: labels first, then the rate.

    Args:
      network: the run's ``config.NetworkConfig`` (classes, starting point).
    """
    scratch = ""
    if not network.restore_from:
        scratch = (" Training from random weights (no --restore-from) diverges "
                   "easily: start from converted weights (convert.py)%s."
                   % ("" if network.is_training else
                      " or add --is-training so that BatchNorm normalises"))
    return ("The %s at step %d (lr=%.3g). First check the labels: every label "
            "value must be a class id below --num-classes %d or --ignore-label "
            "%d (dataset/check_labels.py lists the files with other values). "
            "Then try a lower --learning-rate, e.g. a tenth.%s Nothing was "
            "saved from this run after %s"
            % (what, step, lr, network.num_classes, ignore_label, scratch,
               "%s. That is the last sound snapshot: rerunning resumes from it."
               % last_snapshot if last_snapshot else "its start."))
