"""Validation during training: snapshots scored as evaluate.py scores them, the best kept."""
import json
import logging
import os
import shutil

import numpy as np

from deeplab_resnet import files, metrics
from deeplab_resnet.constants import MODEL_CONFIG_FILE
from deeplab_resnet.data.config import EvalDataConfig
from deeplab_resnet.data.reader import EvaluationReader
from deeplab_resnet.evaluation.evaluate import EvalRuntime, evaluate
from deeplab_resnet.runtime import tf

log = logging.getLogger(__name__)


def scalar_summary(values):
    """A Summary of Python numbers, e.g. metrics summed over several runs."""
    return tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=value)
                             for tag, value in sorted(values.items())])


class Validation(object):
    """The last snapshot scored on --val-list every --val-every steps.

    Scored with the very code evaluate.py runs (``evaluation.evaluate``, in a
    graph of its own, each image at its full size). mIoU and per-class IoU go
    to the log and to TensorBoard; the best-mIoU snapshot is copied into
    ``<snapshot_dir>/best/`` (atomically, with ``best.json``), where
    ``--keep-checkpoints`` never deletes it.
    """

    BEST_DIR = "best"
    BEST_FILE = "best.json"

    def __init__(self, config, *, snapshot_dir, data, num_classes, runtime):
        self.config, self.snapshot_dir = config, snapshot_dir
        self.data_dir = config.val_data_dir or data.data_dir
        # What evaluate.py would be given: the training run's labels, the
        # validation list.
        self.eval_data = EvalDataConfig(self.data_dir, config.val_list,
                                        num_classes=num_classes,
                                        ignore_label=data.ignore_label,
                                        label_map=data.label_map,
                                        num_images=config.val_images)
        self.runtime = EvalRuntime(runtime.intra_op_threads, runtime.inter_op_threads)
        self.best_dir = os.path.join(snapshot_dir, self.BEST_DIR)
        self.best_miou = self._recorded_best()

    def check(self, sample_size):
        """Read --val-list and scan its first pairs now, as the training list is
        checked, so that a bad validation list fails before step 1, not at the
        first validation --val-every steps later.

        Raises:
          IOError, ValueError: the problem, naming --val-list and --val-data-dir.
        """
        try:
            with tf.Graph().as_default():
                EvaluationReader(self.eval_data).check(sample_size)
        except (IOError, ValueError) as err:
            message = ("--val-list: %s" % err).replace("--data-list", "--val-list")
            message = message.replace("--data-dir", "--val-data-dir")
            raise type(err)(message) from err

    def _recorded_best(self):
        path = os.path.join(self.best_dir, self.BEST_FILE)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f).get("miou")

    def run(self, snapshot, step, writer):
        """Score ``snapshot`` (of ``step``); log, summarise, keep it if best."""
        config = self.config
        with tf.Graph().as_default():
            confusion = evaluate(self.eval_data, snapshot, runtime=self.runtime, quiet=True)
        scores = metrics.segmentation_scores(confusion)
        values = {"val/miou": scores["miou"],
                  "val/pixel_accuracy": scores["pixel_accuracy"]}
        values.update(("val/iou_%d" % c, iou) for c, iou in enumerate(scores["iou"])
                      if np.isfinite(iou))
        writer.add_summary(scalar_summary(values), step)
        writer.flush()
        best = self.best_miou is None or scores["miou"] > self.best_miou
        log.info("validation at step %d: mIoU=%.4f on %d images of %s; IoU %s%s",
                 step, scores["miou"], _listed_images(config.val_list, config.val_images),
                 config.val_list,
                 " ".join("%d:%.3f" % (c, v) for c, v in enumerate(scores["iou"])
                          if np.isfinite(v)),
                 " (best so far, kept in %s)" % self.best_dir if best else "")
        if best:
            self.keep_best(snapshot, step, scores)
        return scores

    def keep_best(self, snapshot, step, scores):
        """Copy ``snapshot`` into best/ (atomically) with its scores."""
        parent = self.snapshot_dir
        staging = files.new_hidden_dir(parent, self.BEST_DIR, "tmp")
        try:
            name = os.path.basename(snapshot)
            for source in os.listdir(parent):
                if source.startswith(name + ".") or source == MODEL_CONFIG_FILE:
                    shutil.copy2(os.path.join(parent, source),
                                 os.path.join(staging, source))
            tf.train.update_checkpoint_state(staging, name)
            files.write_json(os.path.join(staging, self.BEST_FILE), {
                "step": step, "snapshot": name, "miou": scores["miou"],
                "iou": [None if not np.isfinite(v) else float(v) for v in scores["iou"]],
                "val_list": self.config.val_list})
            files.replace_directory(staging, self.best_dir)
        finally:
            if os.path.isdir(staging):
                shutil.rmtree(staging)
        self.best_miou = scores["miou"]


def _listed_images(val_list, val_images):
    with open(val_list) as f:
        listed = sum(1 for line in f if line.strip())
    return min(listed, val_images) if val_images else listed
