"""The onnx part: export.py's frozen graph against onnxruntime on its model.onnx, same weights.

``serving.export(..., onnx=True)`` writes both forms from the random
weights, as ``export.py --onnx`` does; each is timed end to end (uint8 photo
in, labels and probabilities out, preprocessing and the resize to the photo
included) at every --sizes, median of --repeats after one warm-up run, on
the same photo-like input, and their labels are compared.
"""
import logging
import os
import statistics
import time

import numpy as np
from PIL import Image

from deeplab_resnet import onnx_export, serving
from deeplab_resnet.runtime import tf
from misc.benchmarks.common import size_name

log = logging.getLogger("benchmark")


def photo(size):
    """A uint8 RGB photo [H, W, 3] (smooth blobs, so labels vary by region)."""
    rng = np.random.RandomState(0)
    small = rng.randint(0, 256, (max(size[0] // 16, 2), max(size[1] // 16, 2), 3))
    return np.asarray(Image.fromarray(small.astype(np.uint8)).resize(
        (size[1], size[0]), Image.BILINEAR))


class FrozenGraph(object):
    """export.py's frozen_graph.pb in a session of its own."""

    def __init__(self, path, config):
        graph_def = tf.GraphDef()
        with open(path, "rb") as f:
            graph_def.ParseFromString(f.read())
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.import_graph_def(graph_def, name="")
        self.sess = tf.Session(graph=self.graph, config=config)

    def run(self, image):
        label, _ = self.sess.run(["%s:0" % serving.LABEL_NAME, "%s:0" % serving.PROBS_NAME],
                                 {"%s:0" % serving.INPUT_NAME: image[None]})
        return label[0]

    def close(self):
        self.sess.close()


def _times(run, image, repeats):
    run(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(run):
    """s/image of each engine per size, and the share of labels they agree on."""
    settings = run.settings
    try:
        onnx_export.check_options()
    except ValueError as err:
        log.info("onnx part skipped: %s", err)
        return {"onnx": None}
    output_dir = os.path.join(run.directory, "exported")
    log.info("export.py --onnx of the random weights")
    serving.export(run.weights()["npz"], output_dir, settings.num_classes, onnx=True,
                   overwrite=True)
    frozen = FrozenGraph(os.path.join(output_dir, serving.FROZEN_GRAPH_FILE), run.config)
    session = onnx_export.open_session(os.path.join(output_dir, onnx_export.ONNX_FILE),
                                       *run.threads)
    report = {}
    try:
        for size in settings.sizes:
            image = photo(size)
            agree = float(np.mean(frozen.run(image) ==
                                  onnx_export.run_onnx(session, image)[0]))
            report[size_name(size)] = {
                "frozen_graph_s": _times(frozen.run, image, settings.repeats),
                "onnxruntime_s": _times(lambda x: onnx_export.run_onnx(session, x),
                                        image, settings.repeats),
                "label_agreement": agree}
    finally:
        frozen.close()
    return {"onnx": report}


def lines(report):
    if "onnx" not in report:
        return []
    if report["onnx"] is None:
        return ["", "onnxruntime: not measured (pip install -r requirements-onnx.txt)"]
    out = ["", "export.py --onnx, end to end (uint8 photo in, labels out, median)",
           "%-9s %-22s %8s %10s" % ("size", "engine", "s/image", "labels =")]
    for size, row in report["onnx"].items():
        out.append("%-9s %-22s %8.3f %10s" % (size, "TF frozen graph fp32",
                                              row["frozen_graph_s"], ""))
        out.append("%-9s %-22s %8.3f %9.3f%%" % (size, "onnxruntime fp32",
                                                 row["onnxruntime_s"],
                                                 100 * row["label_agreement"]))
    return out


def targets(report):
    return []
