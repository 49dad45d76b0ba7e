"""ONNX export: the frozen serving graph as ``model.onnx``, for onnxruntime.

``export.py --onnx`` converts the graph of ``serving.freeze`` with tf2onnx
(opset 17). The ONNX model has the same input and outputs as the SavedModel
(uint8 image [1, height, width, 3] in, label and probabilities at that size
out), dynamic height and width included, and ``--scales`` and ``--flip``
baked in the same way.

One TensorFlow op needs its own conversion. Caffe's ceil-mode pooling size
(``network.caffe_pool_output_size``) is ``-(-n // stride)``: an integer
``FloorDiv`` of a negative number. tf2onnx turns integer ``FloorDiv`` into
ONNX ``Div``, which truncates towards zero, so ``pool1`` rounded down
wherever ``conv1``'s output was even (inputs of 4k + 3 and 4k + 4 pixels: 320,
500, 375, 51, but not 321 or 513) and every later map was one row or column
short. The logits then sat on another grid, stretched to the image by the
upsampling, and disagreed with TensorFlow's (tiny model: labels 90-98%
equal at 320x320 and 500x375, probabilities up to 0.19 apart), whatever the
ASPP dilations; sizes of 4k + 1 and 4k + 2 pixels (321, 513) were exact.
``_floor_div`` converts it as ``(x - Mod(x, y)) / y`` with ONNX's
floor-mode ``Mod``, which is exact for either sign; with it the ONNX model
equals TensorFlow at every size (tests/test_export_onnx.py).

Refused, because ONNX cannot express them here:

* ``--bf16``: opset 17's ``Conv`` has no bfloat16 type, so the model
  tf2onnx writes does not load in onnxruntime.
* ``--crf``: the graph CRF's ``SparseTensorDenseMatMul`` and
  ``LowerBound`` have no tf2onnx conversion.

Only numpy is imported here; tf2onnx (and with it TensorFlow) when
converting, onnxruntime when running.
"""
import logging

import numpy as np

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 17
# Dynamic dimensions, named so that a reader sees the outputs follow the input.
HEIGHT, WIDTH = "height", "width"
INSTALL = ("pip install -r requirements-onnx.txt (or pip install "
           "'deeplab-resnet[onnx]')")
REFUSED = {
    "bf16": "--bf16 cannot be exported to ONNX: opset %d's Conv has no bfloat16 "
            "type and onnxruntime cannot load the result; export without --bf16 "
            "(onnxruntime runs the float32 model)." % OPSET,
    "crf": "--crf cannot be exported to ONNX: tf2onnx has no conversion for the "
           "graph CRF's SparseTensorDenseMatMul and LowerBound; export without "
           "--crf and run the CRF on the model's probabilities "
           "(deeplab_resnet.crf.crf_labels).",
}


class MissingOnnxPackages(ImportError, ValueError):
    """tf2onnx or onnxruntime is not installed.

    A ValueError as well, so that scripts report it in one line as they do
    other user errors.
    """


def _require(module):
    """Import ``module`` (tf2onnx, onnxruntime) or say what to install."""
    try:
        return __import__(module)
    except ImportError as err:
        raise MissingOnnxPackages("The ONNX export needs %s, which is not "
                                  "installed (%s): %s." % (module, err, INSTALL))


def check_options(*, bf16=False, crf=None):
    """Raise before any work if this export cannot be written as ONNX.

    Raises:
      ValueError: ``bf16`` or ``crf`` asked for (``REFUSED`` says why);
      MissingOnnxPackages: tf2onnx or onnxruntime missing.
    """
    if bf16:
        raise ValueError(REFUSED["bf16"])
    if crf is not None:
        raise ValueError(REFUSED["crf"])
    for module in ("tf2onnx", "onnxruntime"):
        _require(module)


def convert(graph_def, path, *, input_name, output_names):
    """Write a frozen serving graph to ``path`` as an ONNX model.

    Args:
      graph_def: the GraphDef of ``serving.freeze`` (float32 network, no CRF).
      path: the .onnx file to write.
      input_name: the image placeholder's name; output_names: the outputs'.
        The ONNX tensors get the same names, without TensorFlow's ``:0``.
    Returns:
      ``describe`` of the model written.
    """
    tf2onnx = _require("tf2onnx")
    import onnx  # tf2onnx's own dependency

    names = [input_name] + list(output_names)
    # tf2onnx logs every constant it folds at INFO; its warnings stay.
    with tf2onnx.verbose_logging.set_scope_level(logging.WARNING,
                                                 logging.getLogger("tf2onnx")):
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def, input_names=[input_name + ":0"],
            output_names=[name + ":0" for name in output_names], opset=OPSET,
            custom_op_handlers={"FloorDiv": (_floor_div, [])},
            tensors_to_rename={name + ":0": name for name in names})
    _name_dimensions(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    log.info("Converted to ONNX with tf2onnx %s (opset %d, %d nodes)",
             tf2onnx.__version__, OPSET, len(model.graph.node))
    return describe(model)


def _floor_div(ctx, node, name, args):
    """tf2onnx handler for ``FloorDiv``: floor division for integers too.

    Floats: ``Floor(x / y)``, as tf2onnx's own handler. Integers: ONNX's
    ``Div`` truncates, so it divides ``x - Mod(x, y)`` instead, which ``y``
    divides exactly (``Mod`` with ``fmod=0`` takes the divisor's sign, as
    Python's ``%`` and TensorFlow's ``FloorMod`` do).
    """
    from onnx import TensorProto

    x, y = node.input
    node.type = "Div"
    if ctx.get_dtype(x) in (TensorProto.FLOAT, TensorProto.DOUBLE,
                            TensorProto.FLOAT16):
        floor = ctx.insert_new_node_on_output("Floor", node.output[0],
                                              name=name + "_floor")
        ctx.copy_dtype(node.output[0], floor.output[0])
        ctx.copy_shape(node.output[0], floor.output[0])
        return
    remainder = ctx.make_node("Mod", [x, y], attr={"fmod": 0},
                              name=name + "_remainder")
    multiple = ctx.make_node("Sub", [x, remainder.output[0]],
                             name=name + "_multiple")
    ctx.replace_inputs(node, [multiple.output[0], y])


def _name_dimensions(graph):
    """Batch 1, then ``height`` and ``width`` on the input and every output.

    tf2onnx names each unknown dimension apart (``unk__12``), which hides
    that the outputs have the input's size; the batch of one is restated
    as in ``serving.graph_tensors``.
    """
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_value = 1
        dims[1].dim_param, dims[2].dim_param = HEIGHT, WIDTH


def describe(model):
    """The inputs and outputs of an ONNX model, for export_info.json.

    Returns:
      ``{'file', 'opset', 'inputs', 'outputs'}``; inputs and outputs map
      names to ``{'dtype', 'shape'}``, dynamic dimensions given by name.
    """
    from onnx import helper

    def tensors(values):
        return {value.name: {
            "dtype": helper.tensor_dtype_to_np_dtype(
                value.type.tensor_type.elem_type).name,
            "shape": [dim.dim_param or dim.dim_value
                      for dim in value.type.tensor_type.shape.dim]}
            for value in values}

    opset = max(entry.version for entry in model.opset_import
                if entry.domain in ("", "ai.onnx"))
    return {"file": ONNX_FILE, "opset": opset,
            "inputs": tensors(model.graph.input),
            "outputs": tensors(model.graph.output)}


def open_session(path, intra_op_threads=0, inter_op_threads=0):
    """An onnxruntime CPU session on ``path``; 0 threads: onnxruntime's choice."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, image):
    """Segment one photo with a session of ``open_session``.

    Args:
      image: RGB uint8 [H, W, 3], any H and W.
    Returns:
      (label [H, W], probabilities float32 [H, W, C]), as the SavedModel
      gives them.
    """
    feed = {session.get_inputs()[0].name: np.asarray(image, np.uint8)[None]}
    label, probs = session.run(None, feed)  # in ``convert``'s output order
    return label[0], probs[0]
