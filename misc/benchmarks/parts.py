"""The table of the benchmark's parts: name -> module, and what each measures.

The table replaces the if-chains that once picked the parts: the runner,
the table of results and the targets all walk it. Modules are named here
and imported only when used, so this module (and --help) stays free of
TensorFlow.
"""
import argparse
import collections
import importlib

Part = collections.namedtuple("Part", "name module description")

PARTS = (
    Part("peak", "peak", "TensorFlow's fp32 and bf16 matmul peak (GFLOP/s), the yardstick"),
    Part("flops", "flops", "the model's forward FLOPs at each --sizes, counted from the "
                           "graph by tf.profiler"),
    Part("inference", "inference", "s/image of the bare network (BatchNorm folded, batch 1) "
                                   "in fp32 and bf16, and its fraction of the matmul peak"),
    Part("opencv", "opencv", "OpenCV DNN on the same Caffe model and weights, and how "
                             "much faster TensorFlow is"),
    Part("onnx", "ort", "export.py --onnx: the frozen graph against onnxruntime on its "
                        "model.onnx, end to end, s/image and label agreement"),
    Part("evaluate", "evaluate", "evaluate.py's loop per image on generated 500x375 pairs, "
                                 "against the bare network"),
    Part("train", "train", "a training step per --train-variants: s/step, s/image, "
                           "GFLOP/s, peak memory, the bf16 speed-up and the CPU's "
                           "bf16 support"),
    Part("peer", "peer", "DeepLab-v2 in PyTorch (../shared/peers) timed in the same run: "
                         "inference at 513x513 and the training step at --train-batch"),
    Part("crf", "crf", "the dense CRF's two backends, pruned and unpruned, side by side "
                       "and beside the network; their memory in a fresh process; what "
                       "pruning does to labels and mIoU; evaluate.py with and without "
                       "the CRF"),
)
NAMES = tuple(part.name for part in PARTS)


def parse_choices(text, choices, what):
    """'a,b' -> ['a', 'b'], each one of ``choices`` (``what`` names them)."""
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(choices))
    if unknown:
        raise argparse.ArgumentTypeError("unknown %s %s; choose from %s"
                                         % (what, ", ".join(unknown), ",".join(choices)))
    return chosen


def parse_parts(text):
    """--parts: names from the table, in the table's order."""
    chosen = set(parse_choices(text, NAMES, "parts"))
    return [name for name in NAMES if name in chosen]


def module(part):
    """The module of a part (a ``Part`` or its name): misc.benchmarks.<module>."""
    if not isinstance(part, Part):
        part = PARTS[NAMES.index(part)]
    return importlib.import_module("%s.%s" % (__package__, part.module))


def help_text():
    """The parts and what each measures, for --help."""
    return "\n".join("  %-10s %s" % (part.name, part.description) for part in PARTS)
