"""What the parts share: timing, fresh processes, traces, the machine, random weights."""
import collections
import logging
import multiprocessing
import os
import queue
import resource
import statistics
import time

from deeplab_resnet import cli, files, kernels, testing
from deeplab_resnet.machine import cpu_info, cpu_name  # noqa: F401 (the parts' CPU)
from deeplab_resnet.caffe import convert, prototxt
from deeplab_resnet.runtime import session_config, tf

log = logging.getLogger("benchmark")

# The repository's root (the CRF's fresh processes import deeplab_resnet from it).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DTYPES = collections.OrderedDict([("fp32", tf.float32), ("bf16", tf.bfloat16)])
GIB = 2.0 ** 30
# VOC photos are mostly 500x375.
EVAL_SIZE = (375, 500)


def size_name(size):
    return "%dx%d" % tuple(size)


def format_bytes(count):
    return "%.0f MiB" % (count / 2.0 ** 20) if count < GIB else "%.2f GiB" % (count / GIB)


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


def process_failure(exitcode, stderr=None):
    """{'error': ...} for a process that ended with ``exitcode``; ``stderr``,
    the error output of one run by ``subprocess``, gives its last line."""
    if exitcode == -9:
        why = ", killed: out of memory?"
    elif stderr is not None:
        why = ": " + (stderr.strip().splitlines() or [""])[-1]
    else:
        why = ""
    return {"error": "the process %s (exit code %s)%s" % (
        "died" if stderr is None else "failed", exitcode, why)}


def in_fresh_process(target, *args, job=kernels.DEFAULT_JOB):
    """``target(*args, results)`` in a spawned process (no memory shared with
    this one) that runs ``job``'s kernels (kernels.family): the dict it puts
    on ``results``, or {'error': ...} if it died."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=target, args=args + (results,))
    saved = dict(os.environ)
    # All of it, not an update: a variable the job must not have (the
    # inference job's frozen weights, for a training child) is left out.
    wanted = kernels.environment(job, saved)
    os.environ.clear()
    os.environ.update(wanted)
    try:
        worker.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    result = None
    while result is None:
        try:
            result = results.get(timeout=5)
        except queue.Empty:
            if not worker.is_alive():
                break
    worker.join()
    return process_failure(worker.exitcode) if result is None else result


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


def traced_run(sess, fetches, feed_dict=None, path=None, top=5):
    """Op time shares of one traced ``sess.run``; with ``path``, its Chrome
    trace (chrome://tracing) written there."""
    metadata = tf.RunMetadata()
    sess.run(fetches, feed_dict, run_metadata=metadata,
             options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE))
    if path:
        from tensorflow.python.client import timeline
        files.write_bytes(path, timeline.Timeline(
            metadata.step_stats).generate_chrome_trace_format(), mode="w")
    return op_time_shares(metadata, top)


def machine_description(cv_version=None):
    """CPU, cores, library versions, and the kernels each job runs."""
    text = "%s, %d cores, TensorFlow %s" % (cpu_name(cpu_info()), cli.available_cores(),
                                            tf.__version__)
    text += ", OpenCV %s" % cv_version if cv_version else ""
    return text + "; kernels: " + ", ".join(
        "%s %s" % (job, kernels.describe(kernels.environment(job).get(kernels.ENV)))
        for job in kernels.JOBS)


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


class Run(object):
    """One benchmark run: its ``Settings``, a scratch ``directory``, and the
    random weights, written once by the first part that needs them (with the
    Caffe files too when ``caffe``, for OpenCV)."""

    def __init__(self, settings, directory, caffe=False):
        self.settings = settings
        self.directory = directory
        self.caffe = caffe
        self.threads = (settings.intra_op_threads, settings.inter_op_threads)
        self.config = session_config(*self.threads)
        self._weights = None

    def weights(self):
        """{'npz': path} (and 'caffemodel', 'prototxt' with ``caffe``)."""
        if self._weights is None:
            log.info("writing random ResNet-101 weights")
            self._weights = write_weights(self.directory, self.settings.num_classes,
                                          self.caffe)
        return self._weights

    def trace_path(self, name):
        """Where a Chrome trace called ``name`` goes, or None without --trace-dir."""
        if not self.settings.trace_dir:
            return None
        return os.path.join(self.settings.trace_dir, name + ".json")
