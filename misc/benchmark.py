"""Measure DeepLab-v2's speed and memory on this machine, in one run.

Prints a table (or JSON with --json) of:
  * peak: the TensorFlow fp32 and bf16 matmul peak (GFLOP/s), the yardstick;
  * flops: the model's FLOPs at each size, counted from the graph by
    tf.profiler (2 x multiply-adds of the convolutions, plus bias/ReLU adds);
  * inference: seconds per image of the bare network (BatchNorm folded, one
    graph with a dynamic input shape, batch 1, warm-up excluded, median of
    --repeats) in fp32 and bf16, and the fraction of the matching peak
    (measured right before, so both see the same load);
  * opencv: OpenCV DNN running the same network and weights from the Caffe
    files deeplab_resnet.caffe writes, at the same sizes, and how much faster
    TensorFlow is (needs opencv-python(-headless) < 5, which reads Caffe);
  * evaluate: evaluate.py's end-to-end time per image (JPEG/PNG decoding,
    network, upsampling, argmax, confusion matrix) on generated 500x375
    image/label pairs, as a fraction of the bare network's speed at that
    size (timed just before and after, under the same load);
  * train: a training step (train.py's graph: ResNet-101, frozen BatchNorm)
    at --train-batch for each of --train-variants (fp32, bf16 mixed
    precision, MSC, classifier only), fp32 also split by --grad-update-every,
    each in its own process, with the forward pass's share, the ratio of
    backward to forward time, the bf16 speed-up and the process's peak
    memory (VmHWM);
  * crf: the dense CRF's two backends, pydensecrf and TensorFlow
    (crf.lattice), with DeepLab's parameters on a 500x375 photo (the VOC
    sample ../shared/data/voc_sample/2007_000129 turned and resized when it is
    there, else a synthetic scene) and 21-class probabilities like a
    network's (its label pooled to 1/8, blurred, upsampled): each backend's
    s/image and the TensorFlow speed-up, how often their labels agree, their
    largest marginal difference and the share of labels the CRF changes;
    each backend's peak memory (VmHWM, the peak resident set, of a fresh
    process running one CRF) at 500x375 and at --crf-large-size; and
    evaluate.py --crf's s/image on --crf-eval-images generated pairs with each
    backend and its default --crf-workers, fp32 and bf16 (bf16 also
    pydensecrf on one worker, the baseline of its target).
and checks the project's speed and memory targets against the figures.

Weights are random (He-initialised): speed does not depend on their values.
Ratios are only meaningful within one run: machines are shared, so compare
figures printed together, not across runs. --trace-dir writes a Chrome
trace (chrome://tracing) of one inference run per size and dtype and of one
training step per variant, and the report lists where the time goes by op
type.

Example (quick): python misc/benchmark.py --parts peak,inference --sizes 321
"""
import argparse
import collections
import json
import logging
import multiprocessing
import os
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy.ndimage
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as `python misc/benchmark.py` without installing the package.
sys.path.insert(0, ROOT)

from deeplab_resnet import cli, crf, files, testing  # noqa: E402
from deeplab_resnet.caffe import convert, prototxt  # noqa: E402
from deeplab_resnet.checkpoints import restore  # noqa: E402
from deeplab_resnet.constants import CLASSIFIER_PREFIX, IGNORE_LABEL  # noqa: E402
from deeplab_resnet.data import lists  # noqa: E402
from deeplab_resnet.evaluation.evaluate import evaluate  # noqa: E402
from deeplab_resnet.evaluation.predict import PredictConfig  # noqa: E402
from deeplab_resnet.model import build_model  # noqa: E402
from deeplab_resnet.runtime import session_config, tf  # noqa: E402
from deeplab_resnet.training import Trainer  # noqa: E402

log = logging.getLogger("benchmark")

DTYPES = collections.OrderedDict([("fp32", tf.float32), ("bf16", tf.bfloat16)])
PARTS = ("peak", "flops", "inference", "opencv", "evaluate", "train", "crf")
GIB = 2.0 ** 30
# The project's speed and memory targets.
PEAK_FRACTION_TARGET = 0.85
BF16_SPEEDUP_TARGET = 1.7
OPENCV_SPEEDUP_TARGET = 2.0
TRAIN_MEMORY_TARGET_GIB = 24.0
EVALUATE_FRACTION_TARGET = 0.90
CRF_SPEEDUP_TARGET = 3.0
EVALUATE_CRF_SPEEDUP_TARGET = 2.0
TARGET_SIZE = (513, 513)
# VOC photos are mostly 500x375.
EVAL_SIZE = (375, 500)


def size_name(size):
    return "%dx%d" % size


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


# ------------------------------------------------------------------- peak
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
        images = tf.placeholder(tf.float32, (1,) + size + (3,))
        build_model(images, num_classes, fold_batchnorm=True)
        options = tf.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        return tf.profiler.profile(graph, options=options).total_float_ops / 1e9


# -------------------------------------------------------------- weights
def write_weights(directory, num_classes, with_caffe):
    """Random ResNet-101 weights as a .npz (for the scripts) and, with
    ``with_caffe``, as a .caffemodel + deploy .prototxt.

    Returns:
      dict with ``npz`` and, with ``with_caffe``, ``caffemodel`` and ``prototxt``.
    """
    _, net = convert.build_network(num_classes)
    # Near-identity BatchNorm keeps ResNet-101's activations finite.
    weights = testing.random_weights(net, spread=0.1, variance_range=(0.8, 1.2),
                                     scale_range=(0.8, 1.2))
    paths = {"npz": os.path.join(directory, "random.npz")}
    files.save_npz(paths["npz"], weights)
    if with_caffe:
        paths["caffemodel"] = os.path.join(directory, "random.caffemodel")
        paths["prototxt"] = os.path.join(directory, "random.prototxt")
        convert.write_caffemodel(paths["caffemodel"], net.layer_specs, weights)
        files.write_bytes(paths["prototxt"], prototxt.deploy_prototxt(net.layer_specs),
                          mode="w")
    return paths


# ------------------------------------------------------------- inference
def op_time_shares(run_metadata, top=5):
    """The ``top`` op types by summed op time in a traced run, as fractions."""
    times = collections.Counter()
    for device in run_metadata.step_stats.dev_stats:
        for node in device.node_stats:
            label = node.timeline_label
            kind = label.split(" = ", 1)[1].split("(", 1)[0] if " = " in label \
                else node.node_name
            times[kind] += node.op_end_rel_micros
    total = float(sum(times.values())) or 1.0
    return collections.OrderedDict((k, v / total) for k, v in times.most_common(top))


def write_chrome_trace(run_metadata, path):
    """A traced run as a Chrome trace (chrome://tracing)."""
    from tensorflow.python.client import timeline
    with open(path, "w") as f:
        f.write(timeline.Timeline(run_metadata.step_stats).generate_chrome_trace_format())


class BareNetwork(object):
    """The bare network in the inference form predict.build_prediction uses
    (BatchNorm folded, weights stored in the compute dtype), on a
    [1, None, None, 3] input, in a graph and session of its own."""

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
        metadata = tf.RunMetadata()
        self.sess.run(self.logits, self.feed(size), run_metadata=metadata,
                      options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE))
        if path:
            write_chrome_trace(metadata, path)
        return op_time_shares(metadata)

    def close(self):
        self.sess.close()


def benchmark_input(size):
    """The image every engine is timed on: [1, H, W, 3], BGR minus mean."""
    rng = np.random.RandomState(0)
    return rng.uniform(-120, 130, (1,) + tuple(size) + (3,)).astype(np.float32)


def opencv_seconds(paths, sizes, threads, repeats):
    """OpenCV DNN on the Caffe files: median s/image, and its logits
    [1, h, w, C] on ``benchmark_input``, per size."""
    import cv2
    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromCaffe(paths["prototxt"], paths["caffemodel"])
    seconds, logits = {}, {}
    for size in sizes:
        blob = np.ascontiguousarray(benchmark_input(size).transpose(0, 3, 1, 2))

        def run():
            net.setInput(blob)
            return net.forward(CLASSIFIER_PREFIX)
        seconds[size] = median_seconds(run, repeats)
        logits[size] = run().transpose(0, 2, 3, 1)
    return seconds, logits


def opencv_version():
    """OpenCV's version if it can read Caffe files, else None."""
    try:
        import cv2
    except ImportError:
        return None
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        return None
    return cv2.__version__


# -------------------------------------------------------------- evaluate
def synthetic_pair(rng, size, num_classes):
    """A photo-like RGB image and a label of a few rectangles with VOC's 255
    border. Like a photo, it is shading and texture mostly shared by the
    three channels, a colour per object, and grain: its JPEG is as large as
    VOC's and the CRF (whose colour lattice grows with the colours present)
    takes as long as on the VOC sample photo, where plain noise takes twice
    as long and flat colours a third."""
    height, width = size
    shading = scipy.ndimage.zoom(rng.normal(size=(height // 16 + 1, width // 16 + 1)),
                                 16, order=3)[:height, :width, None]
    texture = scipy.ndimage.gaussian_filter(rng.normal(size=(height, width, 1)), 1.0)
    tint = scipy.ndimage.gaussian_filter(rng.normal(size=(height, width, 3)), (4, 4, 0))
    image = rng.uniform(60, 190, 3) + 70 * shading + 90 * texture + 80 * tint
    label = np.zeros(size, np.uint8)
    for _ in range(3):
        y, x = rng.randint(0, height // 2), rng.randint(0, width // 2)
        h, w = rng.randint(20, height // 2), rng.randint(20, width // 2)
        label[y:y + h, x:x + w] = rng.randint(1, num_classes)
        image[y:y + h, x:x + w] += rng.uniform(-90, 90, 3)
    label[0, :] = label[-1, :] = IGNORE_LABEL
    image += rng.normal(0, 2, (height, width, 1))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def write_eval_data(directory, num_images, size, num_classes, seed=0):
    """``num_images`` JPEG/PNG pairs in VOC layout and their list file."""
    rng = np.random.RandomState(seed)
    names = ["bench_%03d" % i for i in range(num_images)]
    for sub in (lists.IMAGE_DIR, lists.LABEL_DIR):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    for name in names:
        image, label = synthetic_pair(rng, size, num_classes)
        files.save_image(image, os.path.join(directory, lists.IMAGE_DIR, name + ".jpg"),
                         quality=90)
        files.save_label(label, os.path.join(directory, lists.LABEL_DIR, name + ".png"))
    list_path = os.path.join(directory, "bench.txt")
    files.write_bytes(list_path, lists.list_text(names), mode="w")
    return list_path


def evaluate_seconds(weights, data_dir, list_path, bf16, args):
    """The evaluation loop's (evaluate.py's) median time per image, in this process.

    ``evaluation.evaluate`` calls back after every image; the intervals
    between callbacks are whole iterations of its loop: reading, network,
    prediction and confusion matrix. The first image (warm-up) has no
    interval.
    """
    times = []
    with tf.Graph().as_default():
        evaluate(data_dir, list_path, weights, num_classes=args.num_classes,
                 predict=PredictConfig(bf16=bf16), intra_op_threads=args.intra_op_threads,
                 inter_op_threads=args.inter_op_threads,
                 on_image=lambda *_: times.append(time.perf_counter()))
    return statistics.median(np.diff(times))


def evaluate_against_bare(weights, data_dir, list_path, dtype_name, config, args):
    """(evaluate.py s/image, bare network s/image) at EVAL_SIZE.

    The bare network is timed just before and just after evaluate.py, and
    the median of both taken, so that the two see the same machine load.
    """
    bare = BareNetwork(DTYPES[dtype_name], args.num_classes, config, weights)
    try:
        half = max(args.repeats // 2, 1)
        times = bare.times(EVAL_SIZE, half)
        seconds = evaluate_seconds(weights, data_dir, list_path,
                                   dtype_name == "bf16", args)
        times += bare.times(EVAL_SIZE, half)
    finally:
        bare.close()
    return seconds, statistics.median(times)


# ----------------------------------------------------------------- train
# Training variants: Trainer keywords.
TRAIN_VARIANTS = collections.OrderedDict([
    ("fp32", {}),
    ("bf16", {"compute_dtype": tf.bfloat16}),
    ("msc", {"scales": (1.0, 0.75, 0.5)}),
    ("last-only", {"last_only": True}),
])


def peak_bytes():
    """This process's peak resident memory: VmHWM on Linux, which counts its
    own address space only (ru_maxrss carries a parent's peak over through
    fork and exec); ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return 1024 * int(line.split()[1])
    except OSError:
        pass
    return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def train_worker(variant, batch, grad_update_every, size, num_classes, steps, threads,
                 trace_path, results):
    """One training configuration, in its own process: median s/step, the
    forward pass's s/step alone, and the process's peak resident memory,
    put on ``results``; with ``trace_path``, one more step traced: its op
    time shares, and a Chrome trace written there."""
    cli.setup_logging()
    try:
        with tf.Graph().as_default():
            tf.set_random_seed(0)
            images = tf.random_uniform((batch,) + size + (3,), -120.0, 130.0)
            labels = tf.cast(tf.random_uniform((batch,) + size + (1,), 0, num_classes,
                                               dtype=tf.int32), tf.uint8)
            trainer = Trainer(images, labels, num_classes,
                              grad_update_every=grad_update_every,
                              **TRAIN_VARIANTS[variant])
            init = tf.group(tf.global_variables_initializer(),
                            tf.local_variables_initializer())
            with tf.Session(config=session_config(*threads)) as sess:
                sess.run(init)
                seconds = median_seconds(lambda: trainer.step(sess), steps)
                forward = grad_update_every * median_seconds(
                    lambda: sess.run(trainer.loss_sum.op), steps)
                result = {"seconds": seconds, "forward_seconds": forward,
                          "peak_bytes": peak_bytes()}
                if trace_path and grad_update_every == 1:
                    metadata = tf.RunMetadata()
                    sess.run(trainer.train_op, run_metadata=metadata,
                             options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE))
                    write_chrome_trace(metadata, trace_path)
                    result["op_shares"] = op_time_shares(metadata, top=6)
        results.put(result)
    except tf.errors.ResourceExhaustedError as err:
        results.put({"error": "out of memory: %s" % err.message.splitlines()[0]})


def train_step(variant, batch, grad_update_every, size, num_classes, steps, threads,
               trace_dir=None):
    """Run ``train_worker`` in a fresh process (spawned, so no memory is
    shared with this one). Returns its result, or {'error': ...}."""
    trace_path = trace_dir and os.path.join(
        trace_dir, "train_%s_batch%d.json" % (variant, batch))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=train_worker, args=(
        variant, batch, grad_update_every, size, num_classes, steps, threads,
        trace_path, results))
    worker.start()
    result = None
    while result is None:
        try:
            result = results.get(timeout=5)
        except queue.Empty:
            if not worker.is_alive():
                break
    worker.join()
    if result is None:
        result = {"error": "the process died (exit code %s)%s" % (
            worker.exitcode, ", killed: out of memory?" if worker.exitcode == -9 else "")}
    result.update(variant=variant, batch=batch, grad_update_every=grad_update_every)
    return result


def train_steps(args, threads):
    """Each --train-variants at --train-batch (fp32 first; if it fails, the
    largest batch that runs), then fp32 split by --grad-update-every."""
    size = (args.train_size, args.train_size)
    runs = []
    for variant in args.train_variants:
        runs.append(train_step(variant, args.train_batch, 1, size, args.num_classes,
                               args.train_steps, threads, args.trace_dir))
        batch = args.train_batch
        while variant == "fp32" and "error" in runs[-1] and batch > 1:
            batch //= 2
            log.info("batch %d failed (%s); trying %d", runs[-1]["batch"],
                     runs[-1]["error"], batch)
            runs.append(train_step(variant, batch, 1, size, args.num_classes,
                                   args.train_steps, threads))
    k = args.grad_update_every
    if k > 1:
        runs.append(train_step("fp32", max(args.train_batch // k, 1), k, size,
                               args.num_classes, args.train_steps, threads))
    return runs


# ------------------------------------------------------------------- crf
VOC_SAMPLE = os.path.join(ROOT, os.pardir, "shared", "data", "voc_sample", "2007_000129")
# One CRF in a fresh interpreter; argv: an .npz of image and probs, the backend.
# It imports numpy and deeplab_resnet.crf alone, TensorFlow only for the
# 'tensorflow' backend, so that its peak memory is what a process running that
# backend needs. An 8x8 crop goes first, untimed: it builds TensorFlow's graph.
# The peak is VmHWM (Linux), that of the process's own address space:
# ru_maxrss would not do, as Linux carries the parent's peak over into it
# through fork and exec (a child of this ~1 GiB process started at 1 GiB).
CRF_PROCESS = """
import json, sys, time
import numpy as np
from deeplab_resnet import crf
inputs = np.load(sys.argv[1])
image, probs = inputs["image"], inputs["probs"]
crf.dense_crf(image[:8, :8], probs[:8, :8], backend=sys.argv[2])
start = time.perf_counter()
crf.dense_crf(image, probs, backend=sys.argv[2])
seconds = time.perf_counter() - start
with open("/proc/self/status") as status:
    kib = [line.split()[1] for line in status if line.startswith("VmHWM:")]
print(json.dumps({"seconds": seconds, "peak_bytes": 1024 * int(kib[0])}))
"""


def crf_inputs(size, num_classes):
    """(image, probs, source): an RGB photo at ``size`` and probabilities
    like a network's, ``testing.network_like_probs`` of its label.

    The photo is the VOC sample (2007_000129, 334x500 portrait) turned to
    the orientation of ``size`` and resized (bicubic; nearest for the label)
    when it is there; else ``synthetic_pair``'s scene of coloured rectangles
    on a shaded, textured, grainy background.
    """
    height, width = size
    if not (os.path.exists(VOC_SAMPLE + ".jpg") and os.path.exists(VOC_SAMPLE + ".png")):
        image, label = synthetic_pair(np.random.RandomState(0), size, num_classes)
        return image, testing.network_like_probs(label, num_classes), "synthetic scene"
    photo = Image.open(VOC_SAMPLE + ".jpg").convert("RGB")
    label = Image.open(VOC_SAMPLE + ".png")
    source = "VOC sample 2007_000129, resized"
    if (photo.height > photo.width) != (height > width):
        photo, label = (im.transpose(Image.Transpose.ROTATE_90) for im in (photo, label))
        source = source.replace("resized", "turned and resized")
    image = np.asarray(photo.resize((width, height), Image.BICUBIC))
    label = np.asarray(label.resize((width, height), Image.NEAREST))
    return image, testing.network_like_probs(label, num_classes), source


def crf_backend_seconds(image, probs, repeats):
    """({backend: median s/image of ``crf.dense_crf``}, {backend: marginals}).

    Each backend first runs once untimed (TensorFlow builds its graph then);
    then they take turns, run by run, so that both see the same load.
    """
    marginals = {b: crf.dense_crf(image, probs, crf.DEFAULTS, b) for b in crf.BACKENDS}
    times = collections.defaultdict(list)
    for _ in range(repeats):
        for backend in crf.BACKENDS:
            start = time.perf_counter()
            crf.dense_crf(image, probs, crf.DEFAULTS, backend)
            times[backend].append(time.perf_counter() - start)
    return {b: statistics.median(t) for b, t in times.items()}, marginals


def crf_agreement(probs, marginals):
    """How alike the backends' marginals are: the share of pixels whose
    labels (argmax) agree and the largest absolute difference; and, so that
    agreement means something, the share of labels each CRF changes."""
    reference, ours = marginals["pydensecrf"], marginals["tensorflow"]
    before = probs.argmax(axis=2)
    return {"label_agreement": float(np.mean(reference.argmax(axis=2) == ours.argmax(axis=2))),
            "max_abs_difference": float(np.abs(reference - ours).max()),
            "changed": {b: float(np.mean(m.argmax(axis=2) != before))
                        for b, m in marginals.items()}}


def crf_processes(size, num_classes, directory):
    """{backend: {peak_bytes, seconds}}: ``CRF_PROCESS`` on ``crf_inputs(size)``,
    one fresh process per backend; {'error': ...} for one that failed."""
    image, probs, _ = crf_inputs(size, num_classes)
    path = os.path.join(directory, "crf_inputs.npz")
    np.savez(path, image=image, probs=probs)
    del image, probs
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    results = {}
    for backend in crf.BACKENDS:
        log.info("CRF peak memory: %s at %s, in a fresh process", backend, size_name(size))
        done = subprocess.run([sys.executable, "-c", CRF_PROCESS, path, backend],
                              env=env, capture_output=True, text=True)
        if done.returncode == 0:
            results[backend] = json.loads(done.stdout.splitlines()[-1])
        else:
            results[backend] = {"error": "the process failed (exit code %d)%s" % (
                done.returncode, ", killed: out of memory?" if done.returncode == -9
                else ": " + (done.stderr.strip().splitlines() or [""])[-1])}
    os.remove(path)
    return results


def default_crf_workers(backend):
    """evaluate.py's --crf-workers default for a CRF backend."""
    return cli.crf_workers(argparse.Namespace(crf_backend=backend, crf_workers=None))


def crf_eval_variants(dtype_name):
    """[(CRF backend, CRF workers)] evaluate.py --crf runs at a dtype: each
    backend with evaluate.py's default --crf-workers and, at bf16, pydensecrf
    on one worker, the baseline of the bf16 CRF target."""
    variants = [(backend, default_crf_workers(backend)) for backend in crf.BACKENDS]
    if dtype_name == "bf16" and ("pydensecrf", 1) not in variants:
        variants.append(("pydensecrf", 1))
    return variants


class LoopStart(logging.Handler):
    """The time ``evaluation.evaluate`` logs 'Evaluating ...', just before
    its loop starts (and its progress line's clock with it)."""

    def __init__(self):
        super(LoopStart, self).__init__(logging.INFO)
        self.time = None

    def emit(self, record):
        if self.time is None and str(record.msg).startswith("Evaluating "):
            self.time = record.created


def evaluate_loop_seconds(weights, data_dir, list_path, bf16, args, **options):
    """evaluate.py's time per image from the start of its loop to the last
    result, every image included: the rate its progress line reports.

    Not the median interval of ``evaluate_seconds``: with the CRF on worker
    processes, results come back in bursts once the workers have started
    (they import the main script, TensorFlow with it, inside the loop), so
    over a handful of images the intervals say little. The first image's
    warm-up and the workers' start count here, as in a short evaluate.py run.
    ``options``: more keyword arguments of ``evaluate`` (the CRF's).
    """
    logger = logging.getLogger(evaluate.__module__)
    start, level = LoopStart(), logger.level
    logger.addHandler(start)
    logger.setLevel(logging.INFO)
    times = []
    try:
        with tf.Graph().as_default():
            evaluate(data_dir, list_path, weights, num_classes=args.num_classes,
                     predict=PredictConfig(bf16=bf16),
                     intra_op_threads=args.intra_op_threads,
                     inter_op_threads=args.inter_op_threads,
                     on_image=lambda *_: times.append(time.time()), **options)
    finally:
        logger.removeHandler(start)
        logger.setLevel(level)
    if start.time is None:
        raise RuntimeError("evaluation.evaluate no longer logs 'Evaluating ...' before "
                           "its loop; the benchmark times the loop from that line.")
    return (times[-1] - start.time) / len(times)


def evaluate_with_crf(weights, directory, args):
    """evaluate.py --crf's s/image (``evaluate_loop_seconds``) for each dtype
    and ``crf_eval_variants``, on --crf-eval-images generated 500x375 pairs.

    The TensorFlow CRF's graph, built by ``crf_backend_seconds`` before, is
    reused, as evaluate.py reuses it after its first image.
    """
    data_dir = os.path.join(directory, "crf_data")
    list_path = write_eval_data(data_dir, args.crf_eval_images, EVAL_SIZE,
                                args.num_classes)
    runs = []
    for name in DTYPES:
        for backend, workers in crf_eval_variants(name):
            log.info("evaluate.py --crf (%s, %s on %d workers) on %d images", name,
                     backend, workers, args.crf_eval_images)
            runs.append({"dtype": name, "backend": backend, "workers": workers,
                         "seconds": evaluate_loop_seconds(
                             weights, data_dir, list_path, name == "bf16", args,
                             crf=crf.DEFAULTS, crf_backend=backend, crf_workers=workers)})
    return {"images": args.crf_eval_images, "size": size_name(EVAL_SIZE), "runs": runs}


def measure_crf(directory, weights, args):
    """The crf part's figures (see the module docstring)."""
    image, probs, source = crf_inputs(EVAL_SIZE, args.num_classes)
    report = {"input": source, "size": size_name(EVAL_SIZE),
              "classes": args.num_classes, "iterations": crf.DEFAULTS.iterations}
    log.info("dense CRF, %s: %s", ", ".join(crf.BACKENDS), source)
    report["seconds"], marginals = crf_backend_seconds(image, probs, args.repeats)
    report.update(crf_agreement(probs, marginals))
    sizes = [EVAL_SIZE] + ([args.crf_large_size] if args.crf_large_size else [])
    report["fresh_process"] = {size_name(s): crf_processes(s, args.num_classes, directory)
                               for s in sizes}
    if args.crf_eval_images:
        report["evaluate"] = evaluate_with_crf(weights["npz"], directory, args)
    return report


def crf_eval_seconds(report, dtype_name, backend, workers):
    """The s/image of one ``evaluate_with_crf`` run in the crf report, or None."""
    for run in report.get("evaluate", {}).get("runs", ()):
        if (run["dtype"], run["backend"], run["workers"]) == (dtype_name, backend, workers):
            return run["seconds"]
    return None


# ----------------------------------------------------------------- run
def measure(args):
    threads = (args.intra_op_threads, args.inter_op_threads)
    config = session_config(*threads)
    parts = args.parts
    cv_version = opencv_version()
    report = collections.OrderedDict(machine=machine_description(cv_version),
                                     sizes=[size_name(s) for s in args.sizes])
    with tempfile.TemporaryDirectory(prefix="deeplab_benchmark_") as tmp:
        weights = None
        if {"inference", "opencv", "evaluate"} & set(parts) or (
                "crf" in parts and args.crf_eval_images):
            log.info("writing random ResNet-101 weights")
            weights = write_weights(tmp, args.num_classes,
                                    "opencv" in parts and cv_version is not None)
        if "flops" in parts:
            log.info("counting FLOPs")
            report["model_gflop"] = {size_name(s): model_gflops(s, args.num_classes)
                                     for s in args.sizes}
        if "peak" in parts or "inference" in parts:
            report.update(peak_and_inference(parts, weights, config, args))
        if "opencv" in parts:
            if cv_version is None:
                report["opencv_s"] = None
                log.info("OpenCV with the Caffe importer is not installed; skipped")
            else:
                log.info("OpenCV DNN inference")
                seconds, logits = opencv_seconds(
                    weights, args.sizes, args.intra_op_threads or cli.available_cores(),
                    args.repeats)
                report["opencv_s"] = {size_name(s): v for s, v in seconds.items()}
                # The same network, or the comparison means nothing.
                reference = BareNetwork(tf.float32, args.num_classes, config,
                                        weights["npz"])
                try:
                    report["opencv_vs_tf_error"] = max(
                        float(np.abs(logits[s] - ours).max() / np.abs(ours).max())
                        for s in args.sizes for ours in [reference.run(s)])
                finally:
                    reference.close()
        if "evaluate" in parts:
            data_dir = os.path.join(tmp, "data")
            list_path = write_eval_data(data_dir, args.eval_images, EVAL_SIZE,
                                        args.num_classes)
            report["evaluate"] = {"images": args.eval_images,
                                  "size": size_name(EVAL_SIZE)}
            for name in DTYPES:
                log.info("evaluate.py (%s) on %d images", name, args.eval_images)
                report["evaluate"][name + "_s"], report["evaluate"][name + "_bare_s"] = \
                    evaluate_against_bare(weights["npz"], data_dir, list_path, name,
                                          config, args)
        if "crf" in parts:
            report["crf"] = measure_crf(tmp, weights, args)
        if "train" in parts:
            log.info("training steps (a process each)")
            report["train"] = {"size": args.train_size,
                               "runs": train_steps(args, threads)}
    report["targets"] = check_targets(report)
    return report


def peak_and_inference(parts, weights, config, args):
    """The matmul peak and the network's s/image, per dtype.

    Each dtype's peak is measured right before its network, so that a
    fraction of the peak compares figures taken under the same load.
    """
    report = {}
    for name, dtype in DTYPES.items():
        if "peak" in parts:
            log.info("%s matmul peak", name)
            report.setdefault("peak_gflops", {})[name] = matmul_peak(dtype, config)
        if "inference" not in parts:
            continue
        log.info("%s inference", name)
        bare = BareNetwork(dtype, args.num_classes, config, weights["npz"])
        try:
            for size in args.sizes:
                report.setdefault("inference_s", {}).setdefault(name, {})[
                    size_name(size)] = statistics.median(bare.times(size, args.repeats))
                path = None
                if args.trace_dir:
                    path = os.path.join(args.trace_dir, "inference_%s_%s.json"
                                        % (name, size_name(size)))
                report.setdefault("op_time_shares", {}).setdefault(name, {})[
                    size_name(size)] = bare.trace(size, path)
        finally:
            bare.close()
    return report


def check_targets(report):
    """[(description, measured text, met or None when not measured)]."""
    targets = []
    size = size_name(TARGET_SIZE)
    inference = report.get("inference_s", {})
    peak = report.get("peak_gflops")
    gflop = report.get("model_gflop", {}).get(size)
    fp32 = inference.get("fp32", {}).get(size)
    bf16 = inference.get("bf16", {}).get(size)
    if peak and gflop and fp32:
        fraction = gflop / fp32 / peak["fp32"]
        targets.append(("%s fp32 inference >= %.0f%% of the fp32 matmul peak"
                        % (size, 100 * PEAK_FRACTION_TARGET),
                        "%.0f%%" % (100 * fraction), fraction >= PEAK_FRACTION_TARGET))
    if fp32 and bf16:
        targets.append(("%s bf16 >= %.1fx faster than fp32" % (size, BF16_SPEEDUP_TARGET),
                        "%.2fx" % (fp32 / bf16), fp32 / bf16 >= BF16_SPEEDUP_TARGET))
    opencv = (report.get("opencv_s") or {}).get(size)
    for name, seconds in (("fp32", fp32), ("bf16", bf16)):
        if opencv and seconds:
            targets.append(("%s %s >= %.0fx faster than OpenCV DNN"
                            % (size, name, OPENCV_SPEEDUP_TARGET),
                            "%.2fx" % (opencv / seconds),
                            opencv / seconds >= OPENCV_SPEEDUP_TARGET))
    train = report.get("train")
    if train:
        full = train["runs"][0]
        fits = [r for r in train["runs"] if "error" not in r and r["grad_update_every"] == 1
                and r["variant"] == full["variant"]]
        if "error" in full:
            text = "batch %d failed (%s); largest that ran: %s" % (
                full["batch"], full["error"], fits[0]["batch"] if fits else "none")
        else:
            text = "%.1f GiB" % (full["peak_bytes"] / GIB)
        targets.append(("batch-%d %dx%d training step fits in %.0f GiB" % (
            full["batch"], train["size"], train["size"], TRAIN_MEMORY_TARGET_GIB), text,
            "error" not in full and full["peak_bytes"] / GIB <= TRAIN_MEMORY_TARGET_GIB))
    evaluate = report.get("evaluate")
    for name in DTYPES:
        if evaluate:
            fraction = evaluate[name + "_bare_s"] / evaluate[name + "_s"]
            targets.append(("evaluate.py %s end to end >= %.0f%% of the bare network"
                            % (name, 100 * EVALUATE_FRACTION_TARGET),
                            "%.0f%%" % (100 * fraction),
                            fraction >= EVALUATE_FRACTION_TARGET))
    dense_crf = report.get("crf")
    if dense_crf:
        seconds = dense_crf["seconds"]
        speedup = seconds["pydensecrf"] / seconds["tensorflow"]
        targets.append(("%s TensorFlow CRF >= %.0fx faster than pydensecrf"
                        % (dense_crf["size"], CRF_SPEEDUP_TARGET),
                        "%.2fx" % speedup, speedup >= CRF_SPEEDUP_TARGET))
        ours = crf_eval_seconds(dense_crf, "bf16", "tensorflow",
                                default_crf_workers("tensorflow"))
        baseline = crf_eval_seconds(dense_crf, "bf16", "pydensecrf", 1)
        if ours and baseline:
            targets.append(("evaluate.py --crf --bf16: tensorflow >= %.0fx faster than "
                            "pydensecrf on 1 worker" % EVALUATE_CRF_SPEEDUP_TARGET,
                            "%.2fx (%.2f vs %.2f s/image)" % (baseline / ours, ours,
                                                              baseline),
                            baseline / ours >= EVALUATE_CRF_SPEEDUP_TARGET))
    return targets


def machine_description(cv_version=None):
    """CPU model (with family/model numbers, which name e.g. Zen 4 where the
    model name is just "AMD EPYC"), cores, and library versions."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name", "unknown CPU")
    if "cpu family" in info and "model" in info:
        cpu += " (family %s, model %s)" % (info["cpu family"], info["model"])
    text = "%s, %d cores, TensorFlow %s" % (cpu, cli.available_cores(), tf.__version__)
    return text + (", OpenCV %s" % cv_version if cv_version else "")


# ---------------------------------------------------------------- report
def format_table(report):
    lines = ["machine: %s" % report["machine"]]
    peak = report.get("peak_gflops")
    if peak:
        lines.append("matmul peak (4096x4096): fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s"
                     % (peak["fp32"], peak["bf16"]))
    inference = report.get("inference_s")
    gflops = report.get("model_gflop", {})
    opencv = report.get("opencv_s") or {}
    if inference:
        lines += ["", "inference, bare network (batch 1, BatchNorm folded, median)",
                  "%-9s %-7s %7s %9s %8s %8s %10s" % (
                      "size", "engine", "GFLOP", "s/image", "GFLOP/s", "of peak",
                      "vs OpenCV")]
        for size in inference["fp32"]:
            gflop = gflops.get(size)
            for name in DTYPES:
                seconds = inference[name][size]
                rate = gflop / seconds if gflop else None
                lines.append("%-9s %-7s %7s %9.3f %8s %8s %10s" % (
                    size, "TF " + name, "%.1f" % gflop if gflop else "-", seconds,
                    "%.0f" % rate if rate else "-",
                    "%.0f%%" % (100 * rate / peak[name]) if rate and peak else "-",
                    "%.2fx" % (opencv[size] / seconds) if size in opencv else "-"))
            if size in opencv:
                lines.append("%-9s %-7s %7s %9.3f %8s %8s %10s" % (
                    size, "OpenCV", "", opencv[size],
                    "%.0f" % (gflop / opencv[size]) if gflop else "-", "", ""))
            lines.append("%-9s bf16 speed-up over fp32: %.2fx" % (
                "", inference["fp32"][size] / inference["bf16"][size]))
        shares = report.get("op_time_shares", {})
        for name in shares:
            for size, ops in shares[name].items():
                lines.append("time by op, %s %s: %s" % (name, size, ", ".join(
                    "%s %.1f%%" % (k, 100 * v) for k, v in ops.items())))
    elif opencv:
        lines.append("OpenCV DNN s/image: %s" % ", ".join(
            "%s %.3f" % kv for kv in opencv.items()))
    if "opencv_s" in report and report["opencv_s"] is None:
        lines.append("OpenCV DNN: not measured (no cv2 with readNetFromCaffe)")
    elif "opencv_vs_tf_error" in report:
        lines.append("OpenCV's logits differ from TF fp32's by %.1e of their largest "
                     "value (same network and weights)" % report["opencv_vs_tf_error"])
    evaluate = report.get("evaluate")
    if evaluate:
        lines += ["", "evaluate.py end to end (%d generated %s JPEG/PNG pairs, median "
                  "s/image)" % (evaluate["images"], evaluate["size"]),
                  "%-7s %9s %13s %9s" % ("dtype", "s/image", "bare network", "of bare")]
        for name in DTYPES:
            bare = evaluate[name + "_bare_s"]
            lines.append("%-7s %9.3f %13.3f %8.0f%%" % (
                name, evaluate[name + "_s"], bare, 100 * bare / evaluate[name + "_s"]))
    if "crf" in report:
        lines += format_crf(report["crf"])
    train = report.get("train")
    if train:
        lines += ["", "training step (ResNet-101 %dx%d, frozen BatchNorm, median; "
                  "backward = step - forward)" % (train["size"], train["size"]),
                  "%-10s %-6s %18s %8s %9s %17s %12s" % (
                      "variant", "batch", "grad-update-every", "s/step", "s/image",
                      "backward/forward", "peak memory")]
        done = {}
        for run in train["runs"]:
            if "error" in run:
                lines.append("%-10s %-6d %18d  %s" % (run["variant"], run["batch"],
                                                      run["grad_update_every"],
                                                      run["error"]))
                continue
            images = run["batch"] * run["grad_update_every"]
            ratio = (run["seconds"] - run["forward_seconds"]) / run["forward_seconds"]
            lines.append("%-10s %-6d %18d %8.2f %9.2f %17.2f %8.1f GiB" % (
                run["variant"], run["batch"], run["grad_update_every"], run["seconds"],
                run["seconds"] / images, ratio, run["peak_bytes"] / GIB))
            if run["grad_update_every"] == 1:
                done.setdefault((run["variant"], run["batch"]), run["seconds"])
        for (variant, batch), seconds in done.items():
            if variant == "bf16" and ("fp32", batch) in done:
                lines.append("training bf16 speed-up over fp32: %.2fx"
                             % (done["fp32", batch] / seconds))
        for run in train["runs"]:
            if run.get("op_shares"):
                lines.append("where the time goes (%s, batch %d, traced step): %s" % (
                    run["variant"], run["batch"], ", ".join(
                        "%s %.0f%%" % (k, 100 * v) for k, v in run["op_shares"].items())))
    if report["targets"]:
        lines += ["", "speed and memory targets"]
        for description, measured, met in report["targets"]:
            lines.append("%-8s %-62s %s" % ("[met]" if met else "[MISSED]",
                                            description, measured))
    return "\n".join(lines)


def format_bytes(count):
    return "%.0f MiB" % (count / 2.0 ** 20) if count < GIB else "%.2f GiB" % (count / GIB)


def format_crf(report):
    """The crf part's lines of the table."""
    lines = ["", "dense CRF (%s, %d classes, %d iterations, median s/image) on %s, with "
             "probabilities from its label pooled to 1/8, blurred, upsampled" % (
                 report["size"], report["classes"], report["iterations"], report["input"]),
             "%-11s %8s %15s" % ("backend", "s/image", "labels changed")]
    for backend, seconds in report["seconds"].items():
        lines.append("%-11s %8.3f %14.2f%%" % (backend, seconds,
                                               100 * report["changed"][backend]))
    lines += ["tensorflow CRF speed-up over pydensecrf: %.2fx" % (
                  report["seconds"]["pydensecrf"] / report["seconds"]["tensorflow"]),
              "labels agree on %.3f%% of pixels; marginals differ by at most %.1e" % (
                  100 * report["label_agreement"], report["max_abs_difference"]),
              "peak memory (VmHWM of a fresh process running one CRF, inputs and, "
              "for tensorflow, TensorFlow's import included) and that run's s/image:",
              "%-11s %s" % ("size", "".join("%-22s" % b for b in crf.BACKENDS))]
    for size, runs in report["fresh_process"].items():
        lines.append("%-11s %s" % (size, "".join(
            "%-22s" % (run["error"] if "error" in run else "%s, %.2f s" % (
                format_bytes(run["peak_bytes"]), run["seconds"]))
            for run in (runs[b] for b in crf.BACKENDS))))
    evaluate = report.get("evaluate")
    if evaluate:
        lines += ["", "evaluate.py --crf end to end (%d generated %s JPEG/PNG pairs; s/image "
                  "from the loop's start to the last result, warm-up and CRF workers' "
                  "start included)" % (evaluate["images"], evaluate["size"]),
                  "%-7s %-11s %12s %9s" % ("dtype", "CRF backend", "CRF workers",
                                           "s/image")]
        for run in evaluate["runs"]:
            lines.append("%-7s %-11s %12s %9.3f" % (
                run["dtype"], run["backend"], run["workers"] or "0 (in loop)",
                run["seconds"]))
        for name in DTYPES:
            ours, theirs = (crf_eval_seconds(report, name, b, default_crf_workers(b))
                            for b in ("tensorflow", "pydensecrf"))
            if ours and theirs:
                lines.append("evaluate.py %s: tensorflow CRF speed-up over pydensecrf "
                             "(default workers): %.2fx" % (name, theirs / ours))
    return lines


def parse_sizes(text):
    """'321,513' -> [(321, 321), (513, 513)]; '375x500' -> [(375, 500)]."""
    sizes = []
    for item in text.split(","):
        height, _, width = item.partition("x")
        try:
            sizes.append((int(height), int(width or height)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                "expected sizes such as 321,513 or 375x500; got %r" % text)
    return sizes


def parse_large_size(text):
    """'1500x2000' -> (1500, 2000); '0' -> None."""
    if text.strip() == "0":
        return None
    sizes = parse_sizes(text)
    if len(sizes) != 1:
        raise argparse.ArgumentTypeError("expected one size such as 1500x2000, or 0; "
                                         "got %r" % text)
    return sizes[0]


def parse_choices(text, choices, what):
    """'a,b' -> ['a', 'b'], each one of ``choices`` (``what`` names them)."""
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(choices))
    if unknown:
        raise argparse.ArgumentTypeError("unknown %s %s; choose from %s"
                                         % (what, ", ".join(unknown), ",".join(choices)))
    return chosen


def parse_variants(text):
    return parse_choices(text, TRAIN_VARIANTS, "variants")


def parse_parts(text):
    return parse_choices(text, PARTS, "parts")


def get_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=parse_parts, default=",".join(PARTS),
                        help="What to measure, comma-separated "
                             "(default: %(default)s).")
    parser.add_argument("--sizes", type=parse_sizes, default="321,513",
                        help="Inference sizes: N for NxN or HxW, comma-separated "
                             "(default: %(default)s).")
    cli.add_num_classes_flag(parser)
    parser.add_argument("--repeats", type=cli.positive_int, default=5,
                        help="Timed runs per inference/CRF figure; the median is "
                             "reported (default: %(default)s).")
    parser.add_argument("--eval-images", type=cli.positive_int, default=10,
                        help="Generated 500x375 images evaluate.py runs on "
                             "(default: %(default)s).")
    parser.add_argument("--train-batch", type=cli.positive_int, default=10,
                        help="Batch of the training step (default: %(default)s, "
                             "train.py's).")
    parser.add_argument("--train-size", type=cli.positive_int, default=321,
                        help="Side of the training crops (default: %(default)s).")
    parser.add_argument("--grad-update-every", type=cli.positive_int, default=2,
                        help="Also time --train-batch split into this many "
                             "accumulated batches; 1 to skip (default: %(default)s).")
    parser.add_argument("--train-variants", type=parse_variants, default="fp32,bf16",
                        help="Training variants to time: %s (default: "
                             "%%(default)s)." % ",".join(TRAIN_VARIANTS))
    parser.add_argument("--train-steps", type=cli.positive_int, default=2,
                        help="Timed training steps after one warm-up step "
                             "(default: %(default)s).")
    parser.add_argument("--crf-large-size", type=parse_large_size, default="1500x2000",
                        help="HxW (or N for NxN) of the large image whose CRF "
                             "peak memory and time are measured besides 500x375's "
                             "(the default is a 2000x1500 photo, where pydensecrf "
                             "takes ~30-60 s); 0 to skip (default: %(default)s).")
    parser.add_argument("--crf-eval-images", type=int, default=3,
                        help="Generated 500x375 images evaluate.py --crf runs on "
                             "for each CRF backend and dtype, warm-up and CRF "
                             "workers' start included (more come closer to a "
                             "long evaluation); 0 to skip (default: %(default)s).")
    parser.add_argument("--trace-dir", default=None,
                        help="Write Chrome traces of one inference run per size "
                             "and dtype, and of one training step per "
                             "--train-variants, here; the table then lists the "
                             "op types the time goes to (default: none).")
    parser.add_argument("--json", action="store_true",
                        help="Print JSON instead of the table (default: off).")
    parser.add_argument("--save-json", default=None,
                        help="Also write the JSON report to this file "
                             "(default: not written).")
    cli.add_runtime_flags(parser)
    args = parser.parse_args(argv)
    if args.eval_images < 2 and "evaluate" in args.parts:
        parser.error("--eval-images must be at least 2 (the first is warm-up).")
    if args.crf_eval_images < 0:
        parser.error("--crf-eval-images must be 0 (skip) or more.")
    return args


def main(argv=None):
    args = get_arguments(argv)
    if args.trace_dir:
        os.makedirs(args.trace_dir, exist_ok=True)
    report = measure(args)
    # numpy scalars (np.float64, np.bool_) as their Python values.
    text = json.dumps(report, indent=2, default=lambda value: value.item())
    if args.save_json:
        files.write_bytes(args.save_json, text + "\n", mode="w")
    print(text if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    cli.setup_logging()
    cli.run_main(main)
