"""The peak part: the fp32 and bf16 matmul GFLOP/s TensorFlow reaches, the yardstick."""
import logging

import numpy as np

from deeplab_resnet.runtime import tf
from misc.benchmarks.common import DTYPES, median_seconds

log = logging.getLogger("benchmark")


def matmul_peak(dtype, config, n=4096, repeats=5):
    """GFLOP/s of an n x n matmul; operands live in variables so only the
    multiplication is timed."""
    with tf.Graph().as_default():
        rng = np.random.RandomState(0)
        a = tf.Variable(rng.randn(n, n).astype(np.float32))
        b = tf.Variable(rng.randn(n, n).astype(np.float32))
        if dtype != tf.float32:
            a, b = (tf.Variable(tf.cast(v, dtype)) for v in (a, b))
        product = tf.matmul(a, b)
        with tf.Session(config=config) as sess:
            sess.run(tf.global_variables_initializer())
            seconds = median_seconds(lambda: sess.run(product.op), repeats)
    return 2.0 * n ** 3 / seconds / 1e9


def measure(run):
    """Each dtype's peak; with the inference part chosen too, that part
    measures each right before its network instead (see inference.measure)."""
    if "inference" in run.settings.parts:
        return {}
    peaks = {}
    for name in run.settings.dtypes:
        dtype = DTYPES[name]
        log.info("%s matmul peak", name)
        peaks[name] = matmul_peak(dtype, run.config)
    return {"peak_gflops": peaks}


def lines(report):
    peak = report.get("peak_gflops")
    if not peak:
        return []
    return ["matmul peak (4096x4096): " + ", ".join(
        "%s %.0f GFLOP/s" % item for item in peak.items())]


def targets(report):
    return []
