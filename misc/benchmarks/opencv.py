"""The opencv part: OpenCV DNN on the same network and weights, from the Caffe files.

deeplab_resnet.caffe writes the .caffemodel and deploy .prototxt; OpenCV's
Caffe importer (opencv-python(-headless) < 5) reads them. Its logits are
compared with TensorFlow's fp32 ones, so that the speed comparison is
between the same networks.
"""
import logging

import numpy as np

from deeplab_resnet import cli
from deeplab_resnet.constants import CLASSIFIER_PREFIX
from deeplab_resnet.runtime import tf
from misc.benchmarks.common import DTYPES, median_seconds, size_name
from misc.benchmarks.inference import TARGET_SIZE, BareNetwork, benchmark_input

log = logging.getLogger("benchmark")

OPENCV_SPEEDUP_TARGET = 2.0


def opencv_version():
    """OpenCV's version if it can read Caffe files, else None."""
    try:
        import cv2
    except ImportError:
        return None
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        return None
    return cv2.__version__


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


def measure(run):
    """s/image per size, and the largest logit difference from TF fp32's."""
    settings = run.settings
    if opencv_version() is None:
        log.info("OpenCV with the Caffe importer is not installed; skipped")
        return {"opencv_s": None}
    log.info("OpenCV DNN inference")
    seconds, logits = opencv_seconds(
        run.weights(), settings.sizes, settings.intra_op_threads or cli.available_cores(),
        settings.repeats)
    reference = BareNetwork(tf.float32, settings.num_classes, run.config,
                            run.weights()["npz"])
    try:
        error = max(float(np.abs(logits[s] - ours).max() / np.abs(ours).max())
                    for s in settings.sizes for ours in [reference.run(s)])
    finally:
        reference.close()
    return {"opencv_s": {size_name(s): v for s, v in seconds.items()},
            "opencv_vs_tf_error": error}


def lines(report):
    """OpenCV's s/image (when the inference table does not show them) and
    how far its logits are from TensorFlow's."""
    if "opencv_s" not in report:
        return []
    opencv = report["opencv_s"]
    if opencv is None:
        return ["OpenCV DNN: not measured (no cv2 with readNetFromCaffe)"]
    out = [] if "inference_s" in report else ["OpenCV DNN s/image: %s" % ", ".join(
        "%s %.3f" % item for item in opencv.items())]
    return out + ["OpenCV's logits differ from TF fp32's by %.1e of their largest value "
                  "(same network and weights)" % report["opencv_vs_tf_error"]]


def targets(report):
    size = size_name(TARGET_SIZE)
    opencv = (report.get("opencv_s") or {}).get(size)
    found = []
    for name in DTYPES:
        seconds = report.get("inference_s", {}).get(name, {}).get(size)
        if opencv and seconds:
            found.append(("%s %s >= %.0fx faster than OpenCV DNN"
                          % (size, name, OPENCV_SPEEDUP_TARGET),
                          "%.2fx" % (opencv / seconds),
                          opencv / seconds >= OPENCV_SPEEDUP_TARGET))
    return found
