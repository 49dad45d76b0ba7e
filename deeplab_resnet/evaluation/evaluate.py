"""The evaluation loop: every listed image at its own size, into one confusion matrix.

Every image is segmented at its own size, without cropping or padding; the
confusion matrix is accumulated over all pixels whose label is not the
ignore label. With the CRF, a pool of worker processes refines earlier
images while the network runs on the next ones, and results keep the list
order. The benchmark, the tests and evaluate.py all call ``evaluate``.

Several workers (TF_CONFIG, ``distributed``) each score rows i::N of the
list and add up their confusion matrices, integers, so the result is exactly
that of one process scoring the whole list.

``evaluate`` takes its settings in parts: the data
(``data.config.EvalDataConfig``), the prediction (``predict.PredictConfig``),
the CRF (``crf.CrfStage``) and the runtime (``EvalRuntime``).
"""
import dataclasses
import logging
import os

import numpy as np

from deeplab_resnet import checkpoints, distributed, files, metrics
from deeplab_resnet.progress import Progress
from deeplab_resnet.crf.pool import CrfPool
from deeplab_resnet.data.lists import read_labeled_image_list
from deeplab_resnet.data.reader import EvaluationReader
from deeplab_resnet.evaluation.predict import PredictConfig
from deeplab_resnet.images import inv_preprocess, label_dtype_for
from deeplab_resnet.runtime import session_config, tf

log = logging.getLogger(__name__)

# Progress is logged every this many images, and after the last.
LOG_EVERY = 100


@dataclasses.dataclass(frozen=True)
class EvalRuntime:
    """The session's threads (``runtime.session_config``), and with several
    workers the seconds to wait for the others to start and for the slowest
    to finish its share."""
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    timeout: float = 1800.0


def check_save_dir(reader, save_dir):
    """Refuse predictions that would overwrite a listed file or each other;
    then make the directory."""
    listed = {os.path.realpath(p) for p in reader.image_list + reader.label_list}
    targets = {}
    for image_path in reader.image_list:
        target = files.output_path(save_dir, image_path, ".png")
        if os.path.realpath(target) in listed:
            raise IOError("--save-dir %s would overwrite the dataset file %s. "
                          "Choose another --save-dir." % (save_dir, target))
        if target in targets:
            raise ValueError("%s and %s would both be saved as %s. Evaluate them "
                             "without --save-dir, or rename one."
                             % (targets[target], image_path, target))
        targets[target] = image_path
    os.makedirs(save_dir, exist_ok=True)


def _predictions(sess, fetches, num_steps, reader, crf_pool=None):
    """Yield (image path, label, pred) for the next ``num_steps`` images.

    Results come in list order. With a pool the network goes on with the
    next images while earlier ones are in the CRF.
    """
    for _ in range(num_steps):
        try:
            values = sess.run(fetches)
        except tf.errors.OpError:
            reader.raise_if_failed()
            raise
        path, label = values["path"].decode(), values["label"][0, ..., 0]
        if crf_pool is None:
            yield path, label, values["pred"][0]
            continue
        image = inv_preprocess(values["image"])[0]
        for tag, pred in crf_pool.submit(image, values["probs"][0], path,
                                         tag=(path, label)):
            yield tag + (pred,)
    for tag, pred in crf_pool.drain() if crf_pool is not None else ():
        yield tag + (pred,)


def evaluate(data, weights, *, predict=None, crf=None, runtime=None, save_dir=None,
             on_image=None, quiet=False, task=None):
    """Score the weights on a list: the confusion matrix of all its images.

    Args:
      data: ``data.config.EvalDataConfig``: the list (see ``data.lists``), its
        classes, ignore label and label map (as for training), and how many
        of its images, from the top (``num_images``; None: all).
      weights: .npz, checkpoint prefix or directory (``checkpoints``).
      predict: ``predict.PredictConfig`` (scales, flip, bf16); None for one
        scale, no flip, float32.
      crf: ``crf.CrfStage`` to refine each prediction, or None.
      runtime: ``EvalRuntime`` (None: its defaults).
      save_dir: write each prediction as ``<save_dir>/<image name>.png``.
      on_image: called as ``on_image(step, path, pred)`` after each image
        (the benchmark times the loop with it).
      quiet: log no progress lines (validation during training, which
        reports the scores itself); otherwise one every ``LOG_EVERY`` images
        and one after the last.
      task: a ``distributed.WorkerTask``: score this worker's share of the
        (first ``num_images`` of the) list, rows i::N, every worker reading
        ``weights`` itself (shared storage), and return the confusion matrix
        summed over the workers, on every worker.
    Returns:
      int64 [num_classes, num_classes]: rows ground truth, columns prediction.
    Raises:
      IOError, ValueError: bad data, weights or arguments; IOError: a worker
        was lost.
    """
    predict, runtime = predict or PredictConfig(), runtime or EvalRuntime()
    threads = (runtime.intra_op_threads, runtime.inter_op_threads)
    path, config = checkpoints.resolve_model(weights, data.num_classes)
    _check_enough_images(task, data.data_dir, data.data_list)
    collectives = _connect(task, session_config(*threads), runtime.timeout)
    reader = EvaluationReader(data, shard=collectives.shard)
    index, count = collectives.shard
    num_steps = len(range(index, _listed_steps(data.num_images, reader.num_listed), count))
    if save_dir:
        check_save_dir(reader, save_dir)
    scorer = _Scorer(data, save_dir, on_image, None if quiet else LOG_EVERY)
    # Before the graph: CRF workers start while it is built.
    crf_pool = CrfPool.for_stage(crf)
    try:
        net, prediction = predict.build(reader.image, data.num_classes, config)
        fetches = _fetches(reader, prediction, with_crf=crf is not None)
        sess = checkpoints.open_session(net, path, *threads)
        log.info("Evaluating %s on %d images of %s (%s%s)", path, num_steps, data.data_list,
                 predict.describe(), ", CRF" if crf else "")
        confusion = scorer.score(sess, fetches, num_steps, reader, crf_pool)
    finally:
        if crf_pool is not None:
            crf_pool.close()
    return _total(collectives, confusion, num_steps)


def _check_enough_images(task, data_dir, data_list):
    """Every worker needs a row of the list: each refuses alike, before connecting."""
    if task is None:
        return
    listed = len(read_labeled_image_list(data_dir, data_list, check_exists=False)[0])
    if listed < task.num_workers:
        raise ValueError("%s lists %d image(s), fewer than the %d workers of TF_CONFIG. "
                         "Evaluate in one process (no TF_CONFIG) or on at most %d workers."
                         % (data_list, listed, task.num_workers, listed))


def _listed_steps(num_images, num_listed):
    """Images to evaluate: the first ``num_images`` of the list, at most all."""
    if num_images is not None and num_images < 1:
        raise ValueError("num_images must be at least 1, got %d." % num_images)
    if num_images is None:
        return num_listed
    if num_images > num_listed:
        log.warning("Asked for %d images, more than the %d listed; evaluating "
                    "each once.", num_images, num_listed)
    return min(num_images, num_listed)


def _fetches(reader, prediction, with_crf):
    """What each step runs: the label and path, and the prediction (the
    probabilities and the image instead, for the CRF)."""
    fetches = {"label": reader.label, "path": reader.image_path}
    if with_crf:
        fetches["probs"] = prediction.probs
        fetches["image"] = reader.image
    else:
        fetches["pred"] = prediction.pred
    return fetches


def _connect(task, config, timeout):
    """The collectives of this evaluation (``distributed.connect``), every
    worker joined: each scores rows i::N of the list."""
    collectives = distributed.connect(task, config=config, step_timeout=timeout,
                                      startup_timeout=timeout)
    _collective(collectives, collectives.join)
    collectives.watch_peers()
    return collectives


def _total(collectives, confusion, num_steps):
    """The confusion matrix summed over the workers (of one process: its own)."""
    log.info("worker %d of %d: scored %d images", collectives.index,
             collectives.num_workers, num_steps)
    total = _collective(collectives, lambda: collectives.sum_array(confusion))
    collectives.stop_watching()
    return total


def _collective(collectives, run):
    """``run()``; a failed collective becomes an IOError naming the lost worker."""
    try:
        return run()
    except tf.errors.OpError as err:
        raise IOError(collectives.describe_failure(err))


class _Scorer(object):
    """The loop over the predictions: confusion matrix, saved labels, progress."""

    def __init__(self, data, save_dir, on_image, log_every):
        self.num_classes = data.num_classes
        self.ignore_label = data.ignore_label
        self.save_dir = save_dir
        self.on_image = on_image
        self.log_every = log_every

    def score(self, sess, fetches, num_steps, reader, crf_pool):
        """The confusion matrix of ``num_steps`` images; closes ``sess``."""
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        progress = Progress(num_steps, unit="image")
        progress.update(0)
        threads = reader.start(sess)
        try:
            results = _predictions(sess, fetches, num_steps, reader, crf_pool)
            for step, (path, label, pred) in enumerate(results, 1):
                pred = label_dtype_for(pred)
                confusion += metrics.confusion_matrix(label, pred, self.num_classes,
                                                      self.ignore_label)
                self._record(step, path, pred)
                if self.log_every and (step % self.log_every == 0 or step == num_steps):
                    log.info("step %d/%d mIoU=%.4f %s", step, num_steps,
                             metrics.segmentation_scores(confusion)["miou"],
                             progress.line(step))
        finally:
            _stop(reader, threads, sess)
        return confusion

    def _record(self, step, path, pred):
        if self.save_dir:
            files.save_label(pred, files.output_path(self.save_dir, path, ".png"))
        if self.on_image is not None:
            self.on_image(step, path, pred)


def _stop(reader, threads, sess):
    reader.coord.request_stop()
    try:
        reader.coord.join(threads, stop_grace_period_secs=5)
    except Exception as err:
        # A reader thread's error: the loop has raised it already, or it
        # came from prefetching past the last evaluated image.
        log.debug("reader stopped with %s", err)
    sess.close()
