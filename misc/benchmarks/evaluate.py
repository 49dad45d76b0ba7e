"""The evaluate part: evaluation.evaluate's time per image, against the bare network's.

Evaluation is timed through ``evaluation.evaluate``'s ``on_image`` callback
(``ImageClock``), which it calls after each image's result has entered the
confusion matrix, never from its log lines. Generated 500x375 JPEG/PNG
pairs (``inputs.write_eval_data``) are decoded, run through the network,
upsampled, argmaxed and scored as evaluate.py does.
"""
import logging
import os
import statistics
import time

import numpy as np

from deeplab_resnet.data.config import EvalDataConfig
from deeplab_resnet.evaluation.evaluate import EvalRuntime, evaluate
from deeplab_resnet.evaluation.predict import PredictConfig
from deeplab_resnet.runtime import tf
from misc.benchmarks.common import DTYPES, EVAL_SIZE, size_name
from misc.benchmarks.inference import BareNetwork
from misc.benchmarks.inputs import write_eval_data

log = logging.getLogger("benchmark")

EVALUATE_FRACTION_TARGET = 0.90


class ImageClock(object):
    """``on_image`` for ``evaluation.evaluate``: when each result arrived.

    Without CRF workers results arrive one per loop iteration, so the
    intervals between callbacks are whole iterations (reading, network,
    prediction, confusion matrix). With CRF workers they come back in
    bursts: the pool hands a result back only when the network's next image
    is submitted or at the final drain, so one interval may hold several
    images and the next none. ``seconds_per_image`` spans them all, so
    bursts do not matter; its docstring bounds its error.
    """

    def __init__(self):
        self.times = []

    def __call__(self, step, path, pred):
        self.times.append(time.perf_counter())

    def median_interval(self):
        """The median interval between results: one iteration's time with
        the first image's warm-up left out (no CRF workers)."""
        return statistics.median(np.diff(self.times))

    def seconds_per_image(self):
        """(last result - first result) / (images - 1): the rate at which
        the loop turns images out once it runs, what a long evaluation
        approaches. The one-time costs before the first result (the graph,
        the weights, the first image's warm-up, CRF workers' start and the
        pipeline's filling) are left out, and bursts in between do not
        matter. The last result is exact: the final drain waits for it. The
        first may be handed back up to one network step after its CRF ended
        (the pool is polled when the next image is submitted), which
        shortens the span by at most that step: over N images the figure is
        low by at most one network step / (N - 1), so more images
        (--crf-eval-images) come closer. Without CRF workers it is exact.

        Raises:
          ValueError: fewer than two results.
        """
        if len(self.times) < 2:
            raise ValueError("timing the evaluation loop needs at least 2 images, got "
                             "%d." % len(self.times))
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def timed_evaluate(weights, data_dir, list_path, run, bf16, crf=None):
    """Run ``evaluation.evaluate`` in a graph of its own; its ``ImageClock``.
    ``crf``: a ``crf.CrfStage``, or None."""
    clock = ImageClock()
    settings = run.settings
    with tf.Graph().as_default():
        evaluate(EvalDataConfig(data_dir, list_path, num_classes=settings.num_classes),
                 weights, predict=PredictConfig(bf16=bf16), crf=crf,
                 runtime=EvalRuntime(settings.intra_op_threads, settings.inter_op_threads),
                 on_image=clock)
    return clock


def evaluate_against_bare(run, data_dir, list_path, dtype_name):
    """(evaluation s/image, bare network s/image) at EVAL_SIZE.

    The bare network is timed just before and just after the evaluation,
    and the median of both taken, so that the two see the same load.
    """
    weights = run.weights()["npz"]
    bare = BareNetwork(DTYPES[dtype_name], run.settings.num_classes, run.config, weights)
    try:
        half = max(run.settings.repeats // 2, 1)
        times = bare.times(EVAL_SIZE, half)
        seconds = timed_evaluate(weights, data_dir, list_path, run,
                                 dtype_name == "bf16").median_interval()
        times += bare.times(EVAL_SIZE, half)
    finally:
        bare.close()
    return seconds, statistics.median(times)


def measure(run):
    images = run.settings.eval_images
    data_dir = os.path.join(run.directory, "data")
    list_path = write_eval_data(data_dir, images, EVAL_SIZE, run.settings.num_classes)
    report = {"images": images, "size": size_name(EVAL_SIZE)}
    for name in DTYPES:
        log.info("evaluate.py (%s) on %d images", name, images)
        report[name + "_s"], report[name + "_bare_s"] = evaluate_against_bare(
            run, data_dir, list_path, name)
    return {"evaluate": report}


def lines(report):
    evaluate_report = report.get("evaluate")
    if not evaluate_report:
        return []
    out = ["", "evaluate.py end to end (%d generated %s JPEG/PNG pairs, median s/image)"
           % (evaluate_report["images"], evaluate_report["size"]),
           "%-7s %9s %13s %9s" % ("dtype", "s/image", "bare network", "of bare")]
    for name in DTYPES:
        seconds, bare = evaluate_report[name + "_s"], evaluate_report[name + "_bare_s"]
        out.append("%-7s %9.3f %13.3f %8.0f%%" % (name, seconds, bare, 100 * bare / seconds))
    return out


def targets(report):
    evaluate_report = report.get("evaluate")
    found = []
    for name in DTYPES if evaluate_report else ():
        fraction = evaluate_report[name + "_bare_s"] / evaluate_report[name + "_s"]
        found.append(("evaluate.py %s end to end >= %.0f%% of the bare network"
                      % (name, 100 * EVALUATE_FRACTION_TARGET),
                      "%.0f%%" % (100 * fraction), fraction >= EVALUATE_FRACTION_TARGET))
    return found
