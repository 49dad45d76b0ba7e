"""The inference part: the bare network's s/image in fp32 and bf16, and its share of the peak.

The bare network is the inference form predict.build_prediction uses
(BatchNorm folded, weights stored in the compute dtype), one graph with a
dynamic input shape, batch 1, warm-up excluded, median of --repeats. With
the peak part chosen too, each dtype's matmul peak is measured right before
its network, so that the fraction of the peak compares figures taken under
the same load.
"""
import logging
import statistics
import time

import numpy as np

from deeplab_resnet import machine
from deeplab_resnet.checkpoints import restore
from deeplab_resnet.model import build_model
from deeplab_resnet.runtime import tf
from misc.benchmarks.common import DTYPES, size_name, traced_run
from misc.benchmarks.peak import matmul_peak

log = logging.getLogger("benchmark")

PEAK_FRACTION_TARGET = 0.85
BF16_SPEEDUP_TARGET = 1.7
# The size the targets are checked at.
TARGET_SIZE = (513, 513)


def benchmark_input(size):
    """The image every engine is timed on: [1, H, W, 3], BGR minus mean."""
    rng = np.random.RandomState(0)
    return rng.uniform(-120, 130, (1,) + tuple(size) + (3,)).astype(np.float32)


class BareNetwork(object):
    """The bare network on a [1, None, None, 3] input, in a graph and session
    of its own."""

    def __init__(self, dtype, num_classes, config, weights=None):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = tf.placeholder(tf.float32, [1, None, None, 3])
            net, logits = build_model(tf.cast(self.images, dtype), num_classes,
                                      fold_batchnorm=True, compute_dtype=dtype,
                                      variable_dtype=dtype)
            self.logits = tf.cast(logits, tf.float32)
            self.sess = tf.Session(config=config)
            self.sess.run(tf.global_variables_initializer())
            if weights:
                restore(self.sess, weights, net)

    def feed(self, size):
        return {self.images: benchmark_input(size)}

    def run(self, size):
        """The logits [1, h, w, C] for ``benchmark_input(size)``."""
        return self.sess.run(self.logits, self.feed(size))

    def times(self, size, repeats, warmup=1):
        """``repeats`` wall times of one image of ``size``, after warm-up."""
        feed = self.feed(size)
        for _ in range(warmup):
            self.sess.run(self.logits, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.sess.run(self.logits, feed)
            times.append(time.perf_counter() - start)
        return times

    def trace(self, size, path=None):
        """Op time shares of one traced run; a Chrome trace to ``path``."""
        return traced_run(self.sess, self.logits, self.feed(size), path)

    def close(self):
        self.sess.close()


def measure(run):
    """s/image and op time shares per dtype and size (and the peaks, see above)."""
    settings, report = run.settings, {"inference_s": {}, "op_time_shares": {}}
    for name in settings.dtypes:
        dtype = DTYPES[name]
        if "peak" in settings.parts:
            log.info("%s matmul peak", name)
            report.setdefault("peak_gflops", {})[name] = matmul_peak(dtype, run.config)
        log.info("%s inference", name)
        bare = BareNetwork(dtype, settings.num_classes, run.config, run.weights()["npz"])
        try:
            for size in settings.sizes:
                key = size_name(size)
                report["inference_s"].setdefault(name, {})[key] = statistics.median(
                    bare.times(size, settings.repeats))
                report["op_time_shares"].setdefault(name, {})[key] = bare.trace(
                    size, run.trace_path("inference_%s_%s" % (name, key)))
        finally:
            bare.close()
    return report


ROW = "%-9s %-7s %7s %9s %8s %8s %10s"


def lines(report):
    """The inference table, with OpenCV's rows when it ran."""
    inference = report.get("inference_s")
    if not inference:
        return []
    peak, opencv = report.get("peak_gflops"), report.get("opencv_s") or {}
    gflops = report.get("model_gflop", {})
    out = ["", "inference, bare network (batch 1, BatchNorm folded, median)",
           ROW % ("size", "engine", "GFLOP", "s/image", "GFLOP/s", "of peak", "vs OpenCV")]
    for size in next(iter(inference.values())):
        gflop = gflops.get(size)
        for name in inference:
            seconds = inference[name][size]
            rate = gflop / seconds if gflop else None
            out.append(ROW % (
                size, "TF " + name, "%.1f" % gflop if gflop else "-", "%.3f" % seconds,
                "%.0f" % rate if rate else "-",
                "%.0f%%" % (100 * rate / peak[name]) if rate and peak else "-",
                "%.2fx" % (opencv[size] / seconds) if size in opencv else "-"))
        if size in opencv:
            out.append(ROW % (
                size, "OpenCV", "", "%.3f" % opencv[size],
                "%.0f" % (gflop / opencv[size]) if gflop else "-", "", ""))
        if len(inference) < 2:
            continue
        out.append("%-9s bf16 speed-up over fp32: %.2fx%s" % (
            "", inference["fp32"][size] / inference["bf16"][size],
            "" if machine.cpu_info()["bf16"] != "none" else
            " (no bfloat16 arithmetic on this CPU: TensorFlow emulates it)"))
    for name, shares in report.get("op_time_shares", {}).items():
        for size, ops in shares.items():
            out.append("time by op, %s %s: %s" % (name, size, ", ".join(
                "%s %.1f%%" % (k, 100 * v) for k, v in ops.items())))
    return out


def targets(report):
    """fp32's share of the matmul peak and the bf16 speed-up, at TARGET_SIZE."""
    size = size_name(TARGET_SIZE)
    inference = report.get("inference_s", {})
    fp32 = inference.get("fp32", {}).get(size)
    bf16 = inference.get("bf16", {}).get(size)
    peak = report.get("peak_gflops")
    gflop = report.get("model_gflop", {}).get(size)
    found = []
    if peak and "fp32" in peak and gflop and fp32:
        fraction = gflop / fp32 / peak["fp32"]
        found.append(("%s fp32 inference >= %.0f%% of the fp32 matmul peak"
                      % (size, 100 * PEAK_FRACTION_TARGET),
                      "%.0f%%" % (100 * fraction), fraction >= PEAK_FRACTION_TARGET))
    if fp32 and bf16:
        # Where the CPU has no bfloat16 arithmetic TensorFlow emulates it, and
        # the ratio says only how slow fp32 is: no target to meet or miss.
        native = machine.cpu_info()["bf16"] != "none"
        found.append(("%s bf16 >= %.1fx faster than fp32" % (size, BF16_SPEEDUP_TARGET),
                      "%.2fx%s" % (fp32 / bf16, "" if native else ", bfloat16 emulated here"),
                      fp32 / bf16 >= BF16_SPEEDUP_TARGET if native else None))
    return found
