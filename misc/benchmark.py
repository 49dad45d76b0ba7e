"""Measure DeepLab-v2's speed and memory on this machine, in one run.

Prints a table (or JSON with --json) of:
  * the TensorFlow fp32 and bf16 matmul peak (GFLOP/s), the yardstick;
  * the model's FLOPs at each size, counted from the graph by tf.profiler;
  * seconds per image for inference (BatchNorm folded, one graph with a
    dynamic input shape, warm-up excluded, median of --repeats) in fp32 and
    bf16, and the fraction of the matching peak that reaches.

Ratios are only meaningful within one run: the machines are shared, so
compare figures printed together, not across runs.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import deeplab_resnet  # noqa: E402,F401  (graph mode)
import tensorflow.compat.v1 as tf  # noqa: E402
from deeplab_resnet import utils  # noqa: E402

DTYPES = {"fp32": tf.float32, "bf16": tf.bfloat16}


def median_seconds(run, repeats, warmup=1):
    """Median wall time of ``run()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def model_gflops(size, num_classes):
    """Floating point operations of one forward pass, from the graph."""
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [1, size, size, 3])
        utils.build_model(images, num_classes, fold_batchnorm=True)
        options = tf.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return tf.profiler.profile(graph, options=options).total_float_ops / 1e9


def inference_seconds(dtype, sizes, num_classes, config, repeats):
    """{size: median s/image} for one folded graph with a dynamic input shape."""
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [1, None, None, 3])
        _, logits = utils.build_model(tf.cast(images, dtype), num_classes,
                                      fold_batchnorm=True, compute_dtype=dtype)
        logits = tf.cast(logits, tf.float32)
        with tf.Session(config=config) as sess:
            sess.run(tf.global_variables_initializer())
            rng = np.random.RandomState(0)
            result = {}
            for size in sizes:
                feed = {images: rng.randn(1, size, size, 3).astype(np.float32) * 50}
                result[size] = median_seconds(lambda: sess.run(logits, feed), repeats)
    return result


def measure(args):
    config = utils.session_config(args.intra_op_threads, args.inter_op_threads)
    report = {"machine": machine_description(), "sizes": args.sizes}
    report["peak_gflops"] = {name: matmul_peak(dtype, config)
                             for name, dtype in DTYPES.items()}
    report["model_gflop"] = {size: model_gflops(size, args.num_classes)
                             for size in args.sizes}
    report["inference_s"] = {
        name: inference_seconds(dtype, args.sizes, args.num_classes, config,
                                args.repeats)
        for name, dtype in DTYPES.items()}
    return report


def machine_description():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores, TensorFlow %s" % (model, utils.available_cores(),
                                            tf.__version__)


def format_table(report):
    lines = ["machine: %s" % report["machine"],
             "matmul peak: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s"
             % (report["peak_gflops"]["fp32"], report["peak_gflops"]["bf16"]),
             "",
             "%-8s %-6s %10s %10s %12s %10s" % ("size", "dtype", "GFLOP",
                                                 "s/image", "GFLOP/s", "of peak")]
    for size in report["sizes"]:
        gflop = report["model_gflop"][size]
        for name in DTYPES:
            seconds = report["inference_s"][name][size]
            rate = gflop / seconds
            lines.append("%-8s %-6s %10.1f %10.3f %12.0f %9.0f%%" % (
                "%dx%d" % (size, size), name, gflop, seconds, rate,
                100 * rate / report["peak_gflops"][name]))
        lines.append("%-8s bf16 speed-up over fp32: %.2fx" % (
            "", report["inference_s"]["fp32"][size] / report["inference_s"]["bf16"][size]))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="321,513",
                        help="Square input sizes to time (default: %(default)s).")
    parser.add_argument("--num-classes", type=int, default=utils.NUM_CLASSES,
                        help="Classifier width (default: %(default)s).")
    parser.add_argument("--repeats", type=int, default=5,
                        help="Timed runs per figure; the median is reported "
                             "(default: %(default)s).")
    parser.add_argument("--json", action="store_true",
                        help="Print JSON instead of the table.")
    utils.add_runtime_flags(parser)
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    report = measure(args)
    print(json.dumps(report, indent=2) if args.json else format_table(report))


if __name__ == "__main__":
    utils.setup_logging()
    utils.run_main(main)
