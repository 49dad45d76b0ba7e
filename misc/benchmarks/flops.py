"""The flops part: the model's forward FLOPs, and the graph FLOP count the train part shares.

FLOPs are counted by TensorFlow's per-op FLOP registry, the one
``tf.profiler``'s ``float_operation`` sums: a convolution is 2 x its
multiply-adds (2 * H_out * W_out * C_in * C_out * k * k per image), its two
backprops (Conv2DBackpropInput, Conv2DBackpropFilter) as much each, element-
wise ops one per element, reductions one per input element. Ops the registry
does not know (casts, pads, copies, space-to-batch) count zero, so the total
is the arithmetic, not the data movement.
"""
import logging

from deeplab_resnet.model import build_model
from deeplab_resnet.runtime import tf
from misc.benchmarks.common import size_name

log = logging.getLogger("benchmark")


def graph_flops(graph, fetches=None):
    """(total FLOPs, {op type: FLOPs}) of ``graph``, or of the ops that
    computing ``fetches`` (tensors or ops) runs: its subgraph, cut out with
    ``extract_sub_graph``, so that initialisers and other branches of the
    graph do not count. Every counted op needs static shapes."""
    if fetches is not None:
        names = sorted({getattr(f, "op", f).name for f in fetches})
        graph_def = tf.graph_util.extract_sub_graph(graph.as_graph_def(), names)
        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
    options = tf.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.profiler.profile(graph, cmd="op", options=options)
    by_type, nodes = {}, list(profile.children)
    # The op view nests each op type under the one listed before it.
    while nodes:
        node = nodes.pop()
        by_type[node.name] = node.float_ops
        nodes.extend(node.children)
    return profile.total_float_ops, by_type


def model_gflops(size, num_classes):
    """GFLOPs of one forward pass (batch 1, BatchNorm folded)."""
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, (1,) + tuple(size) + (3,))
        build_model(images, num_classes, fold_batchnorm=True)
        return graph_flops(graph)[0] / 1e9


def measure(run):
    log.info("counting FLOPs")
    return {"model_gflop": {size_name(s): model_gflops(s, run.settings.num_classes)
                            for s in run.settings.sizes}}


def lines(report):
    """The model's GFLOPs, unless the inference table shows them."""
    if "model_gflop" not in report or "inference_s" in report:
        return []
    return ["model forward pass (batch 1, from the graph): %s" % ", ".join(
        "%s %.1f GFLOP" % item for item in report["model_gflop"].items())]


def targets(report):
    return []
