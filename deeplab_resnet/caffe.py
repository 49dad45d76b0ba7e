"""Caffe's file formats without Caffe or protoc: .caffemodel in and out, prototxt.

DeepLab-v2 was released as Caffe models (``train_iter_20000.caffemodel``, the
ImageNet/COCO ``init.caffemodel``). Installing Caffe, or compiling
``caffe.proto``, to read them once is a poor trade, so this module speaks the
protobuf wire format directly, for the few messages that carry weights:

* ``NetParameter``: name = 1, layers = 2 (legacy ``V1LayerParameter``),
  layer = 100 (``LayerParameter``).
* ``LayerParameter``: name = 1, type = 2 (string), bottom = 3, top = 4,
  blobs = 7. ``V1LayerParameter``: bottom = 2, top = 3, name = 4, type = 5
  (enum), blobs = 6.
* ``BlobProto``: num/channels/height/width = 1..4 (legacy 4-D shape),
  data = 5 (float), diff = 6, shape = 7 (``BlobShape``: dim = 1), double_data
  = 8, double_diff = 9. Repeated numbers are accepted packed and unpacked.

(Field numbers as in BVLC Caffe's ``src/caffe/proto/caffe.proto``.) Every other
field is skipped by its wire type, so layer parameters, solver leftovers and
fork-specific fields never get in the way.

Conversion is a name lookup because ``model.py`` keeps Caffe's layer names:
``Convolution`` X gives ``X/weights`` (Caffe OIHW -> TF HWIO) and
``X/biases``; ``BatchNorm`` bnX gives ``bnX/mean`` and ``bnX/variance``
(Caffe stores ``[mean * sf, var * sf, sf]``, divided back here); the ``Scale``
layer after it (scaleX) gives ``bnX/scale`` and ``bnX/offset``.

The other direction, used by the tests and ``misc/deploy.prototxt``: the
``layer_specs`` that ``Network`` records while building become a deploy
prototxt in DeepLab's style (in-place BatchNorm + Scale + ReLU, blob names as
in the released prototxt) and, with a weight dict, a .caffemodel in either
format, so OpenCV's independent Caffe importer can check our numerics.
"""
import collections
import logging
import os
import re
import time

import numpy as np
import tensorflow.compat.v1 as tf

from deeplab_resnet import utils
from deeplab_resnet.model import DeepLabResNetModel, ModelConfig
from deeplab_resnet.network import abbreviate, compare_shapes

log = logging.getLogger(__name__)

# Wire types.
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

# NetParameter.
NET_NAME, NET_LAYERS_V1, NET_INPUT, NET_INPUT_DIM, NET_LAYER = 1, 2, 3, 4, 100
# LayerParameter and V1LayerParameter: (name, type, bottom, top, blobs).
LAYER_FIELDS = (1, 2, 3, 4, 7)
V1_LAYER_FIELDS = (4, 5, 2, 3, 6)
# BlobProto.
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF = 5, 6, 7, 8, 9
BLOB_SHAPE_DIM = 1

# V1LayerParameter.LayerType values and the type strings Caffe upgrades them to.
# There is no BatchNorm or Scale: those layers came after the V1 format.
V1_LAYER_TYPES = {
    0: "", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data",
    6: "Dropout", 7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data",
    10: "HDF5Output", 11: "Im2col", 12: "ImageData", 13: "InfogainLoss",
    14: "InnerProduct", 15: "LRN", 16: "MultinomialLogisticLoss", 17: "Pooling",
    18: "ReLU", 19: "Sigmoid", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split",
    23: "TanH", 24: "WindowData", 25: "Eltwise", 26: "Power",
    27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData",
    30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN",
    35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp",
    39: "Deconvolution"}
V1_TYPE_ENUMS = {v: k for k, v in V1_LAYER_TYPES.items() if v}
# The enum spellings a V1 prototxt uses (``type: CONVOLUTION``).
V1_ENUM_NAMES = {
    "NONE": "", "ACCURACY": "Accuracy", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONVOLUTION": "Convolution", "DATA": "Data", "DROPOUT": "Dropout",
    "ELTWISE": "Eltwise", "FLATTEN": "Flatten", "IMAGE_DATA": "ImageData",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "POOLING": "Pooling",
    "RELU": "ReLU", "SIGMOID": "Sigmoid", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SILENCE": "Silence",
    "ARGMAX": "ArgMax", "DECONVOLUTION": "Deconvolution", "TANH": "TanH",
    "POWER": "Power", "ABSVAL": "AbsVal", "THRESHOLD": "Threshold",
    "WINDOW_DATA": "WindowData", "MEMORY_DATA": "MemoryData",
    "DUMMY_DATA": "DummyData", "SLICE": "Slice", "MVN": "MVN", "EXP": "Exp",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output"}

# The input size written into deploy prototxts: DeepLab-v2's test crop.
DEPLOY_INPUT_SIZE = (513, 513)
DEPLOY_NAME = "DeepLab-v2 ResNet-101"


class CaffeFormatError(ValueError):
    """A file that is not (or no longer) a readable Caffe model or prototxt."""


CaffeLayer = collections.namedtuple("CaffeLayer", "name type bottoms tops blobs")
CaffeLayer.__doc__ = """One layer of a .caffemodel.

``type`` is the LayerParameter type string (V1 enums are translated; '' when a
V1 layer has none); ``blobs`` is a list of float32 arrays in Caffe's layout."""

CaffeNet = collections.namedtuple("CaffeNet", "name layers legacy")


# ============================================================ wire format in
def _read_varint(buf, pos, end):
    result = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffeFormatError("a number at byte %d is longer than 10 bytes"
                                   % pos)
    raise CaffeFormatError("the data ends inside a number at byte %d" % pos)


def _next_field(buf, pos, end):
    """Decode the field at ``pos``.

    Returns:
      (field_number, wire_type, value, next_pos): ``value`` is the integer for
      varints, the start offset for fixed 32/64-bit values and a
      ``(start, stop)`` pair for length-delimited ones.
    Raises:
      CaffeFormatError: an invalid key or a field running past ``end`` (the
        usual sign of a truncated file, or of a file that is not protobuf).
    """
    key_pos = pos
    key, pos = _read_varint(buf, pos, end)
    field, wire = key >> 3, key & 7
    if field == 0:
        raise CaffeFormatError("field number 0 at byte %d" % key_pos)
    if wire == VARINT:
        value, pos = _read_varint(buf, pos, end)
    elif wire == FIXED64:
        value, pos = pos, pos + 8
    elif wire == LENGTH_DELIMITED:
        length, pos = _read_varint(buf, pos, end)
        value, pos = (pos, pos + length), pos + length
    elif wire == FIXED32:
        value, pos = pos, pos + 4
    else:
        raise CaffeFormatError("invalid wire type %d at byte %d" % (wire, key_pos))
    if pos > end:
        raise CaffeFormatError("field %d at byte %d runs %d bytes past the end of "
                               "its message" % (field, key_pos, pos - end))
    return field, wire, value, pos


def _fields(buf, start, end):
    pos = start
    while pos < end:
        field, wire, value, pos = _next_field(buf, pos, end)
        yield field, wire, value


def _expect(wire, expected, what):
    if wire != expected:
        raise CaffeFormatError("%s has wire type %d instead of %d" % (what, wire, expected))


def _string(buf, span):
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise CaffeFormatError("a layer name or type is not valid text")


def _unpacked_run(buf, pos, end, width):
    """Decode a run of unpacked fixed-width values sharing one 1-byte key.

    Writing a key before every number is legal protobuf; decoding 44 million
    of them one by one would take minutes, so the run is cut out with numpy:
    records of ``1 + width`` bytes, up to the first key that differs.

    Returns:
      (uint8 array [n, width] of the values' bytes, position after the run).
    """
    tag = buf[pos]
    record = 1 + width
    count = (end - pos) // record
    records = np.frombuffer(buf, np.uint8, count * record, pos).reshape(count, record)
    different = np.flatnonzero(records[:, 0] != tag)
    n = int(different[0]) if different.size else count
    return records[:n, 1:], pos + n * record


def _parse_blob(buf, start, end):
    """A BlobProto as a float32 array in Caffe's layout (e.g. OIHW)."""
    legacy = {}
    shape = None
    chunks = []
    pos = start
    while pos < end:
        key_pos = pos
        field, wire, value, pos = _next_field(buf, pos, end)
        if field in (BLOB_DATA, BLOB_DOUBLE_DATA, BLOB_DIFF, BLOB_DOUBLE_DIFF):
            width = 4 if field in (BLOB_DATA, BLOB_DIFF) else 8
            dtype = "<f4" if width == 4 else "<f8"
            if wire == LENGTH_DELIMITED:
                span_start, span_end = value
                if (span_end - span_start) % width:
                    raise CaffeFormatError("a packed blob holds %d bytes, not a "
                                           "multiple of %d" % (span_end - span_start, width))
                values = np.frombuffer(buf, dtype, (span_end - span_start) // width,
                                       span_start)
            else:
                _expect(wire, FIXED32 if width == 4 else FIXED64, "blob data")
                raw, pos = _unpacked_run(buf, key_pos, end, width)
                values = raw.copy().view(dtype).ravel()
            if field in (BLOB_DATA, BLOB_DOUBLE_DATA):
                chunks.append(values)
        elif field == BLOB_SHAPE:
            _expect(wire, LENGTH_DELIMITED, "blob shape")
            shape = []
            for dim_field, dim_wire, dim_value in _fields(buf, *value):
                if dim_field != BLOB_SHAPE_DIM:
                    continue
                if dim_wire == VARINT:
                    shape.append(dim_value)
                else:
                    _expect(dim_wire, LENGTH_DELIMITED, "blob shape dims")
                    packed_pos, packed_end = dim_value
                    while packed_pos < packed_end:
                        dim, packed_pos = _read_varint(buf, packed_pos, packed_end)
                        shape.append(dim)
        elif field in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH):
            _expect(wire, VARINT, "blob dimension")
            legacy[field] = value
    data = (np.concatenate(chunks) if len(chunks) > 1 else
            chunks[0] if chunks else np.zeros(0, np.float32)).astype(np.float32)
    if shape is None:
        if legacy:
            # Caffe's Blob::FromProto reads the legacy fields as a 4-D shape.
            shape = [legacy.get(f, 0) for f in
                     (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)]
        else:
            shape = [data.size]
    if int(np.prod(shape)) != data.size:
        raise CaffeFormatError("a blob of shape %s holds %d values"
                               % (tuple(shape), data.size))
    return data.reshape(shape)


def _parse_layer(buf, start, end, legacy):
    f_name, f_type, f_bottom, f_top, f_blobs = V1_LAYER_FIELDS if legacy else LAYER_FIELDS
    name, kind, bottoms, tops, blobs = "", "", [], [], []
    for field, wire, value in _fields(buf, start, end):
        if field == f_name:
            _expect(wire, LENGTH_DELIMITED, "layer name")
            name = _string(buf, value)
        elif field == f_type:
            if legacy:
                _expect(wire, VARINT, "V1 layer type")
                kind = V1_LAYER_TYPES.get(value, "V1Type%d" % value)
            else:
                _expect(wire, LENGTH_DELIMITED, "layer type")
                kind = _string(buf, value)
        elif field in (f_bottom, f_top):
            _expect(wire, LENGTH_DELIMITED, "layer bottom/top")
            (bottoms if field == f_bottom else tops).append(_string(buf, value))
        elif field == f_blobs:
            _expect(wire, LENGTH_DELIMITED, "layer blob")
            try:
                blobs.append(_parse_blob(buf, *value))
            except CaffeFormatError as err:
                raise CaffeFormatError("layer %r: %s" % (name, err))
    return CaffeLayer(name, kind, bottoms, tops, blobs)


def parse_net(buf, progress=None):
    """Decode a serialized NetParameter.

    Args:
      buf: the file's bytes.
      progress: optional ``progress(bytes_done, bytes_total, layers_done)``,
        called after each layer.
    Returns:
      CaffeNet(name, layers, legacy): ``layers`` in file order from both the
      ``layer`` and the legacy ``layers`` field; ``legacy`` is True when any
      V1 layer was found.
    Raises:
      CaffeFormatError: the bytes are not a NetParameter, or are cut short.
    """
    name = ""
    layers = []
    legacy = False
    total = len(buf)
    for field, wire, value in _fields(buf, 0, total):
        if field == NET_NAME:
            _expect(wire, LENGTH_DELIMITED, "the net name")
            name = _string(buf, value)
        elif field in (NET_LAYER, NET_LAYERS_V1):
            _expect(wire, LENGTH_DELIMITED, "a layer")
            legacy |= field == NET_LAYERS_V1
            layers.append(_parse_layer(buf, value[0], value[1], field == NET_LAYERS_V1))
            if progress is not None:
                progress(value[1], total, len(layers))
    return CaffeNet(name, layers, legacy)


def read_caffemodel(path):
    """Read a .caffemodel (``layer`` or legacy V1 ``layers`` format).

    Logs progress every 10% of the file: the released models are 170+ MB.

    Raises:
      IOError: no such file.
      CaffeFormatError: truncated, or not a Caffe model at all.
    """
    if not os.path.isfile(path):
        raise IOError("Caffe model %r does not exist. Pass the path of a "
                      ".caffemodel file, e.g. train_iter_20000.caffemodel." % path)
    with open(path, "rb") as f:
        buf = f.read()
    megabytes = len(buf) / 2.0 ** 20
    log.info("reading %s (%.1f MB)", path, megabytes)
    next_report = [0.1]

    def report(done, total, count):
        if done >= next_report[0] * total:
            log.info("parsed %3d%% (%.1f/%.1f MB, %d layers)", 100 * done // total,
                     done / 2.0 ** 20, megabytes, count)
            next_report[0] = (10 * done // total + 1) / 10.0

    try:
        net = parse_net(buf, report)
    except CaffeFormatError as err:
        raise CaffeFormatError(
            "%r is not a complete Caffe model (%s). The file may be truncated "
            "(an interrupted download?) or not a .caffemodel at all; download it "
            "again." % (path, err))
    if not net.layers:
        raise CaffeFormatError("%r holds no Caffe layers; it is not a .caffemodel."
                               % path)
    log.info("read %d layers (%s format) from %s", len(net.layers),
             "legacy V1 'layers'" if net.legacy else "'layer'", path)
    return net


# =========================================================== wire format out
def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field, wire):
    return _varint(field << 3 | wire)


def _bytes_field(field, payload):
    return _key(field, LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _string_field(field, text):
    return _bytes_field(field, text.encode("utf-8"))


def _varint_field(field, value):
    return _key(field, VARINT) + _varint(value)


def encode_blob(array, legacy=False, packed=True):
    """Serialize a float array as a BlobProto.

    Args:
      array: values in Caffe's layout.
      legacy: write the deprecated num/channels/height/width (vectors as
        1x1x1xC, as old Caffe did) instead of ``shape``.
      packed: packed floats, or a key before every float (also legal).
    """
    array = np.asarray(array, dtype="<f4")
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        if len(dims) != 4:
            raise ValueError("legacy blobs have at most 4 axes, got %s" % (array.shape,))
        out = b"".join(_varint_field(f, d) for f, d in zip(
            (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH), dims))
    else:
        out = _bytes_field(BLOB_SHAPE, _bytes_field(
            BLOB_SHAPE_DIM, b"".join(_varint(d) for d in array.shape)))
    if packed:
        return out + _bytes_field(BLOB_DATA, array.tobytes())
    records = np.empty((array.size, 5), np.uint8)
    records[:, 0] = BLOB_DATA << 3 | FIXED32
    records[:, 1:] = array.reshape(-1, 1).view(np.uint8)
    return out + records.tobytes()


def encode_layer(name, kind, bottoms, tops, blobs=(), legacy=False, packed=True):
    """Serialize one LayerParameter, or V1LayerParameter if ``legacy``.

    V1 has no enum for types newer than the format (BatchNorm, Scale, Input):
    such layers are written without a type, and the reader recognises them
    by their blobs (see ``layer_kind``).
    """
    f_name, f_type, f_bottom, f_top, f_blobs = V1_LAYER_FIELDS if legacy else LAYER_FIELDS
    parts = [_string_field(f_name, name)]
    if legacy:
        if kind in V1_TYPE_ENUMS:
            parts.append(_varint_field(f_type, V1_TYPE_ENUMS[kind]))
    else:
        parts.append(_string_field(f_type, kind))
    parts += [_string_field(f_bottom, b) for b in bottoms]
    parts += [_string_field(f_top, t) for t in tops]
    parts += [_bytes_field(f_blobs, encode_blob(b, legacy, packed)) for b in blobs]
    return b"".join(parts)


def caffe_blobs(layer_def, weights, bn_scale_factor=1.0):
    """The blobs Caffe stores for one ``deploy_layers`` entry, from our weights.

    ``bn_scale_factor`` is Caffe's BatchNorm moving-average normaliser
    (stored statistics are ``mean * sf, var * sf``; trained models have
    sf ~ 999.98, so tests use a value != 1 to exercise the division).
    """
    if layer_def["source"] is None:
        return []
    layer, role = layer_def["source"]
    if role == "conv":
        blobs = [np.transpose(weights[layer + "/weights"], (3, 2, 0, 1))]
        if layer + "/biases" in weights:
            blobs.append(weights[layer + "/biases"])
        return blobs
    if role == "bn":
        sf = np.float32(bn_scale_factor)
        return [np.asarray(weights[layer + "/mean"], np.float32) * sf,
                np.asarray(weights[layer + "/variance"], np.float32) * sf,
                np.array([sf], np.float32)]
    return [weights[layer + "/scale"], weights[layer + "/offset"]]


def write_caffemodel(path, specs, weights, legacy=False, packed=True,
                     bn_scale_factor=1.0, name=DEPLOY_NAME):
    """Write a .caffemodel for a network from its ``layer_specs`` and weights.

    Used by the tests to make DeepLab-style models of any size, and to feed
    OpenCV's Caffe importer. The file is written atomically.

    Args:
      specs: ``Network.layer_specs``.
      weights: ``{'layer/param': array}`` in TF layout (as ``convert`` returns).
      legacy: the deprecated V1 ``layers`` format (input declared with
        NetParameter's ``input``/``input_dim``).
      packed, bn_scale_factor: see ``encode_blob`` and ``caffe_blobs``.
    """
    parts = [_string_field(NET_NAME, name)]
    for layer_def in deploy_layers(specs):
        if legacy and layer_def["type"] == "Input":
            parts.append(_string_field(NET_INPUT, layer_def["name"]))
            parts += [_varint_field(NET_INPUT_DIM, d)
                      for d in (1, 3) + DEPLOY_INPUT_SIZE]
            continue
        payload = encode_layer(layer_def["name"], layer_def["type"],
                               layer_def["bottoms"], layer_def["tops"],
                               caffe_blobs(layer_def, weights, bn_scale_factor),
                               legacy, packed)
        parts.append(_bytes_field(NET_LAYERS_V1 if legacy else NET_LAYER, payload))
    with _atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)


# ================================================================ prototxt
class _Enum(str):
    """A prototxt enum value: written bare (``pool: MAX``), not quoted."""


def _conv_params(spec):
    (k_h, k_w), (s_h, s_w) = spec["kernel"], spec["stride"]
    params = [("num_output", spec["num_output"])]
    if not spec["bias"]:
        params.append(("bias_term", False))
    params.append(("pad", spec["pad"]))
    params += [("kernel_size", k_h)] if k_h == k_w else [("kernel_h", k_h), ("kernel_w", k_w)]
    params += [("stride", s_h)] if s_h == s_w else [("stride_h", s_h), ("stride_w", s_w)]
    if spec["dilation"] != 1:
        params.append(("dilation", spec["dilation"]))
    return params


def scale_layer_name(bn_name):
    """Caffe's Scale layer after BatchNorm bnX is scaleX (bn_conv1 -> scale_conv1)."""
    return "scale" + bn_name[2:] if bn_name.startswith("bn") else "scale_" + bn_name


def _def(name, kind, bottoms, tops, params=(), source=None):
    return dict(name=name, type=kind, bottoms=list(bottoms), tops=list(tops),
                params=list(params), source=source)


def deploy_layers(specs, input_name="data", input_size=DEPLOY_INPUT_SIZE):
    """Translate ``Network.layer_specs`` into Caffe layers, DeepLab style.

    Our ``batch_normalization`` is Caffe's BatchNorm + Scale (+ ReLU), all
    in place on the convolution's blob, named bnX, scaleX and <conv>_relu;
    sums are Eltwise layers whose blob the following ReLU overwrites, so the
    blob names are those of the released DeepLab-v2 prototxt.

    Returns:
      A list of dicts: name, type, bottoms, tops, params (nested (key, value)
      pairs for the prototxt) and source ((our layer, 'conv'|'bn'|'scale') for
      layers with weights, else None).
    Raises:
      ValueError: a layer type with no Caffe equivalent here.
    """
    height, width = input_size
    layers = [_def(input_name, "Input", [], [input_name], [
        ("input_param", [("shape", [("dim", 1), ("dim", 3), ("dim", height),
                                    ("dim", width)])])])]
    blob_of = {input_name: input_name}
    for spec in specs:
        name, kind = spec["name"], spec["type"]
        bottoms = [blob_of[i] for i in spec["inputs"]]
        if kind == "Convolution":
            layers.append(_def(name, kind, bottoms, [name],
                               [("convolution_param", _conv_params(spec))],
                               (name, "conv")))
            blob_of[name] = name
        elif kind == "BatchNorm":
            blob_of[name] = bottoms[0]
            layers.append(_def(name, kind, bottoms, bottoms,
                               [("batch_norm_param", [("use_global_stats", True)])],
                               (name, "bn")))
            layers.append(_def(scale_layer_name(name), "Scale", bottoms, bottoms,
                               [("scale_param", [("bias_term", True)])],
                               (name, "scale")))
        elif kind == "ReLU":
            layers.append(_def(name, kind, bottoms, bottoms))
            blob_of[name] = bottoms[0]
        elif kind == "Pooling":
            (k_h, k_w), (s_h, s_w) = spec["kernel"], spec["stride"]
            if (k_h, s_h) != (k_w, s_w):
                raise ValueError("non-square pooling %s is not supported" % name)
            layers.append(_def(name, kind, bottoms, [name], [("pooling_param", [
                ("pool", _Enum("MAX")), ("kernel_size", k_h), ("stride", s_h),
                ("pad", spec["pad"])])]))
            blob_of[name] = name
        elif kind == "Eltwise":
            layers.append(_def(name, kind, bottoms, [name],
                               [("eltwise_param", [("operation", _Enum("SUM"))])]))
            blob_of[name] = name
        elif kind == "Concat":
            # NHWC axis -> NCHW axis.
            axis = {3: 1, -1: 1, 1: 2, 2: 3}[spec["axis"]]
            layers.append(_def(name, kind, bottoms, [name],
                               [("concat_param", [("axis", axis)])]))
            blob_of[name] = name
        elif kind == "Dropout":
            layers.append(_def(name, kind, bottoms, bottoms, [
                ("dropout_param", [("dropout_ratio", 1.0 - spec["keep_prob"])])]))
            blob_of[name] = bottoms[0]
        else:
            raise ValueError("layer %s: no Caffe equivalent for type %r" % (name, kind))
        if spec.get("relu"):
            blob = blob_of[name]
            layers.append(_def(blob + "_relu", "ReLU", [blob], [blob]))
    return layers


def _format_value(value):
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _format_fields(items, depth):
    pad = "  " * depth
    lines = []
    for key, value in items:
        if isinstance(value, list):
            lines.append("%s%s {" % (pad, key))
            lines += _format_fields(value, depth + 1)
            lines.append("%s}" % pad)
        else:
            lines.append("%s%s: %s" % (pad, key, _format_value(value)))
    return lines


def deploy_prototxt(specs, input_size=DEPLOY_INPUT_SIZE, name=DEPLOY_NAME,
                    header=None):
    """A Caffe deploy prototxt (text) for a network's ``layer_specs``."""
    lines = ["# %s" % line for line in (header or "").splitlines()]
    lines.append('name: %s' % _format_value(name))
    for layer_def in deploy_layers(specs, input_size=input_size):
        fields = [("name", layer_def["name"]), ("type", layer_def["type"])]
        fields += [("bottom", b) for b in layer_def["bottoms"]]
        fields += [("top", t) for t in layer_def["tops"]]
        lines += _format_fields([("layer", fields + layer_def["params"])], 0)
    return "\n".join(lines) + "\n"


_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<punct>[{}:<>\[\],;])
  | (?P<word>[^\s{}:<>\[\],;"'\#]+)
""", re.VERBOSE)


def _tokens(text, source):
    """Yield (token, line number); quoted strings come as ``_QuotedString``."""
    pos = 0
    line = 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise CaffeFormatError("%s line %d: cannot read %r"
                                   % (source, line, text[pos:pos + 20]))
        pos = match.end()
        if match.lastgroup != "space":
            token = match.group(match.lastgroup)
            if match.lastgroup == "string":
                token = _QuotedString(re.sub(r"\\(.)", r"\1", token[1:-1]))
            yield token, line
        line += match.group(0).count("\n")


class _QuotedString(str):
    pass


def parse_prototxt(text, source="prototxt"):
    """Parse protobuf text format into nested ``[(key, value), ...]`` lists.

    Scalars stay strings (numbers and enums as written); messages are lists.
    Enough of the format for Caffe prototxts: comments, ``key: value``,
    ``key { ... }`` / ``key < ... >``, optional ``:`` before a message and
    ``[a, b]`` lists.

    Raises:
      CaffeFormatError: text that is not in protobuf text format.
    """
    tokens = list(_tokens(text, source))
    pos = [0]

    def fail(message):
        line = tokens[min(pos[0], len(tokens) - 1)][1] if tokens else 1
        raise CaffeFormatError("%s line %d: %s; is it a Caffe prototxt?"
                               % (source, line, message))

    def take():
        if pos[0] >= len(tokens):
            fail("unexpected end of file")
        token = tokens[pos[0]][0]
        pos[0] += 1
        return token

    def message(closing):
        items = []
        while True:
            if pos[0] >= len(tokens):
                if closing is None:
                    return items
                fail("missing %r" % closing)
            key = take()
            if key == closing and not isinstance(key, _QuotedString):
                return items
            if isinstance(key, _QuotedString) or not re.match(r"^[A-Za-z_]\w*$", key):
                fail("expected a field name, got %r" % key)
            token = take()
            if token == ":":
                token = take()
            if token in ("{", "<") and not isinstance(token, _QuotedString):
                items.append((key, message("}" if token == "{" else ">")))
            elif token == "[" and not isinstance(token, _QuotedString):
                while True:
                    value = take()
                    if value == "]":
                        break
                    if value != ",":
                        items.append((key, str(value)))
            elif token in ("{", "}", "<", ">", ":", "[", "]", ",", ";"):
                fail("unexpected %r after %r" % (token, key))
            else:
                items.append((key, str(token)))
            if pos[0] < len(tokens) and tokens[pos[0]][0] in (",", ";"):
                pos[0] += 1

    return message(None)


def _get(items, key, default=None):
    for k, v in items:
        if k == key:
            return v
    return default


def read_prototxt_layers(path):
    """The layers of a prototxt: dicts with name, type, bottoms, tops and
    num_output (Convolution/InnerProduct, else None).

    Raises:
      IOError: no such file. CaffeFormatError: not a Caffe net prototxt.
    """
    if not os.path.isfile(path):
        raise IOError("prototxt %r does not exist." % path)
    with open(path, encoding="utf-8", errors="replace") as f:
        items = parse_prototxt(f.read(), path)
    layers = []
    for key, value in items:
        if key not in ("layer", "layers") or not isinstance(value, list):
            continue
        kind = _get(value, "type", "")
        if key == "layers" and not isinstance(kind, _QuotedString):
            kind = V1_ENUM_NAMES.get(kind, kind)
        num_output = None
        for param in ("convolution_param", "inner_product_param"):
            block = _get(value, param)
            if isinstance(block, list) and _get(block, "num_output") is not None:
                num_output = int(_get(block, "num_output"))
        layers.append(dict(name=str(_get(value, "name", "")), type=str(kind),
                           bottoms=[v for k, v in value if k == "bottom"],
                           tops=[v for k, v in value if k == "top"],
                           num_output=num_output))
    if not layers:
        raise CaffeFormatError("%r has no layers; it is not a Caffe net prototxt." % path)
    return layers


def check_prototxt(proto_layers, net, source="prototxt"):
    """Check that a prototxt describes the layers with weights in a caffemodel.

    Every prototxt layer of a type that carries weights must be in the model
    with the same type and, for convolutions, the same ``num_output``. Model
    layers missing from the prototxt are fine (training models add
    multi-scale copies and loss layers to the deploy net).

    Raises:
      ValueError: listing the disagreements.
    """
    by_name = {layer.name: layer for layer in net.layers}
    problems = []
    checked = 0
    for proto in proto_layers:
        if proto["type"] not in ("Convolution", "BatchNorm", "Scale", "InnerProduct",
                                 "Deconvolution"):
            continue
        checked += 1
        layer = by_name.get(proto["name"])
        if layer is None:
            problems.append("%s is not in the model" % proto["name"])
        elif layer_kind(layer) != proto["type"]:
            problems.append("%s is %s in the prototxt but %s in the model" % (
                proto["name"], proto["type"], layer_kind(layer) or "untyped"))
        elif (proto["num_output"] is not None and layer.blobs
              and layer.blobs[0].shape[0] != proto["num_output"]):
            problems.append("%s has num_output %d in the prototxt but %d in the "
                            "model" % (proto["name"], proto["num_output"],
                                       layer.blobs[0].shape[0]))
    if not checked:
        problems.append("no layers with weights (Convolution, BatchNorm, Scale)")
    if problems:
        raise ValueError("%s does not match the Caffe model: %s. Pass the prototxt "
                         "released with this .caffemodel, or leave --prototxt out."
                         % (source, abbreviate(problems)))
    log.info("%s matches the model (%d layers with weights checked)", source, checked)


# ============================================================== conversion
def layer_kind(layer):
    """The layer type, recognising untyped V1 BatchNorm/Scale layers by their
    blobs (BatchNorm: mean, variance and a 1-element scale factor)."""
    if layer.type:
        return layer.type
    blobs = layer.blobs
    if len(blobs) == 3 and blobs[2].size == 1 and blobs[0].shape == blobs[1].shape:
        return "BatchNorm"
    if layer.name.startswith("scale") and 1 <= len(blobs) <= 2:
        return "Scale"
    return ""


def caffe_weights(layers):
    """Map Caffe layers to ``{'layer/param': array}`` in TF layout.

    Convolution X: ``X/weights`` (OIHW -> HWIO) and ``X/biases``. BatchNorm
    bnX: ``bnX/mean`` and ``bnX/variance`` divided by the scale factor (0
    stays 0, as in Caffe). Scale: ``bnX/scale``, ``bnX/offset`` for the
    BatchNorm that last wrote its input blob (by name, scaleX -> bnX, if the
    file has no blob names).

    Layers of other types are left out (the caller reports them).

    Returns:
      (weights, origin): ``origin`` maps each key to its Caffe layer.
    Raises:
      CaffeFormatError: a Convolution/BatchNorm/Scale with unusable blobs.
    """
    weights, origin = {}, {}
    bn_of_blob = {}
    for layer in layers:
        kind = layer_kind(layer)
        blobs = layer.blobs
        if not blobs:
            continue
        if kind == "Convolution":
            if blobs[0].ndim != 4:
                raise CaffeFormatError("convolution %s has weights of shape %s, "
                                       "expected 4-D" % (layer.name, blobs[0].shape))
            target = layer.name
            entries = {"weights": np.transpose(blobs[0], (2, 3, 1, 0))}
            if len(blobs) > 1:
                entries["biases"] = blobs[1].reshape(-1)
        elif kind == "BatchNorm":
            if len(blobs) < 3:
                raise CaffeFormatError("BatchNorm %s has %d blobs, expected mean, "
                                       "variance and scale factor" % (layer.name, len(blobs)))
            sf = float(blobs[2].ravel()[0])
            factor = 0.0 if sf == 0 else 1.0 / sf
            target = layer.name
            entries = {"mean": (blobs[0].reshape(-1) * np.float64(factor)).astype(np.float32),
                       "variance": (blobs[1].reshape(-1) * np.float64(factor)).astype(np.float32)}
            for top in layer.tops:
                bn_of_blob[top] = layer.name
        elif kind == "Scale":
            target = bn_of_blob.get(layer.bottoms[0]) if layer.bottoms else None
            if target is None:
                target = ("bn" + layer.name[len("scale"):] if layer.name.startswith("scale")
                          else layer.name)
            entries = {"scale": blobs[0].reshape(-1)}
            if len(blobs) > 1:
                entries["offset"] = blobs[1].reshape(-1)
        else:
            continue
        for param, array in entries.items():
            key = "%s/%s" % (target, param)
            weights[key] = np.ascontiguousarray(array, dtype=np.float32)
            origin[key] = layer.name
    return weights, origin


def build_network(num_classes, config=None):
    """Build DeepLabResNetModel in a fresh graph, to learn names and shapes.

    Returns:
      (graph, net): nothing is run; the input is a [1, ?, ?, 3] placeholder.
    """
    graph = tf.Graph()
    with graph.as_default():
        images = tf.placeholder(tf.float32, [1, None, None, 3], name="data")
        net = DeepLabResNetModel({"data": images}, num_classes, config=config)
    return graph, net


def model_prototxt(num_classes=utils.NUM_CLASSES, config=None,
                   input_size=DEPLOY_INPUT_SIZE):
    """The deploy prototxt of our network (``misc/deploy.prototxt``)."""
    config = config or ModelConfig()
    _, net = build_network(num_classes, config)
    header = ("Caffe deploy net of DeepLab-v2 ResNet-101 as deeplab_resnet builds it\n"
              "(%d classes, blocks %s, ASPP rates %s).\n"
              "Written by: python convert.py --write-prototxt PATH; do not edit."
              % (num_classes, ",".join(map(str, config.blocks)),
                 ",".join(map(str, config.aspp_rates))))
    return deploy_prototxt(net.layer_specs, input_size=input_size, header=header)


# weights: {'layer/param': array}; ignored_layers: Caffe layers left out.
Conversion = collections.namedtuple(
    "Conversion", "weights num_classes has_classifier ignored_layers")


def _classifier_keys(names):
    return sorted(k for k in names if k.startswith(utils.CLASSIFIER_PREFIX))


def convert_net(net_proto, num_classes=None, config=None, drop_classifier=False):
    """Caffe layers -> the weights of ``DeepLabResNetModel``, checked.

    The classes come from the classifier ``fc1_voc12_c0`` when
    ``num_classes`` is None. A model without classifier (the ImageNet/COCO
    ``init.caffemodel``), or with ``drop_classifier``, converts the body only.

    Args:
      net_proto: a ``CaffeNet`` from ``read_caffemodel``.
      config: ``ModelConfig``; the default is ResNet-101.
    Returns:
      (Conversion, graph, net): ``weights`` covers every variable of ``net``
      except, when ``has_classifier`` is False, the classifier.
    Raises:
      ValueError: the model is not this network, or has another number of
        classes than ``num_classes``.
    """
    config = config or ModelConfig()
    weights, origin = caffe_weights(net_proto.layers)
    classifier = _classifier_keys(weights)
    first = utils.CLASSIFIER_PREFIX + "_c0/weights"
    if drop_classifier:
        for key in classifier:
            del weights[key]
        if classifier:
            log.info("dropped the model's classifier (%s) as asked",
                     ", ".join(sorted({origin[k] for k in classifier})))
        classifier = []
    if classifier and first in weights:
        file_classes = weights[first].shape[-1]
        if num_classes is None:
            num_classes = file_classes
        elif num_classes != file_classes:
            raise ValueError(
                "The model's classifier %s has %d classes but --num-classes is %d. "
                "Leave --num-classes out to convert it for %d classes, or pass "
                "--drop-classifier to convert the body only (then train with "
                "--not-restore-last)." % (origin[first], file_classes, num_classes,
                                          file_classes))
    if num_classes is None:
        num_classes = utils.NUM_CLASSES
    has_classifier = bool(classifier)
    graph, net = build_network(num_classes, config)
    expected = {k: v.get_shape().as_list() for k, v in net.variables.items()}
    if not has_classifier:
        expected = {k: v for k, v in expected.items()
                    if k not in set(_classifier_keys(expected))}
    _, missing, mismatched = compare_shapes(
        {k: v.shape for k, v in weights.items() if k in expected}, expected)
    problems = []
    if missing:
        problems.append("no weights for %s" % abbreviate(missing))
    if mismatched:
        problems.append("shape mismatches: %s" % abbreviate(mismatched))
    if problems:
        raise ValueError(
            "The Caffe model does not fit DeepLab-v2 ResNet-101 (blocks %s) with %d "
            "classes: %s. Is it a DeepLab-v2 ResNet-101 model (not VGG/LargeFOV)? "
            "A cut-short download also loses layers." % (
                ",".join(map(str, config.blocks)), num_classes, "; ".join(problems)))
    known = {d["name"] for d in deploy_layers(net.layer_specs)}
    used = {origin[k] for k in expected}
    ignored = [layer.name for layer in net_proto.layers
               if layer.name not in used and (layer.blobs or layer.name not in known)]
    if ignored:
        log.info("ignored %d Caffe layers that are not part of the network "
                 "(multi-scale copies, data, loss, interp...): %s",
                 len(ignored), abbreviate(ignored, 6))
    weights = {k: weights[k] for k in sorted(expected)}
    if has_classifier:
        log.info("classifier %s: %d classes", utils.CLASSIFIER_PREFIX, num_classes)
    elif drop_classifier:
        log.info("converted the ResNet body only (--drop-classifier); train from "
                 "it with --not-restore-last.")
    else:
        log.warning("the model has no %s classifier (an ImageNet/COCO init model?): "
                    "converted the ResNet body only. Train from it with "
                    "--not-restore-last so the classifier starts from scratch.",
                    utils.CLASSIFIER_PREFIX)
    return Conversion(weights, num_classes, has_classifier, ignored), graph, net


def save_npz(path, weights):
    """Write ``{'layer/param': array}`` as a plain .npz (no pickles), atomically."""
    with _atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v, np.float32) for k, v in weights.items()})


def save_checkpoint(prefix, graph, net, weights):
    """Write ``weights`` into a tf.compat.v1 Saver checkpoint at ``prefix``.

    Only the variables that have weights are saved, so a body-only
    conversion gives a checkpoint without classifier.
    """
    directory = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    with graph.as_default():
        var_list = {k: v for k, v in net.variables.items() if k in weights}
        saver = tf.train.Saver(var_list=var_list)
        with tf.Session(graph=graph, config=utils.session_config()) as sess:
            net.assign_weights(weights, sess, ignore_missing=True)
            saver.save(sess, prefix, write_meta_graph=False)


def read_model_config(path):
    """(num_classes or None, ModelConfig) from a model_config.json or its directory.

    Raises:
      IOError: no model_config.json there.
    """
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if ((not os.path.isdir(path) and os.path.basename(path) != utils.MODEL_CONFIG_FILE)
            or not os.path.isfile(os.path.join(directory, utils.MODEL_CONFIG_FILE))):
        raise IOError("No %s at %r. Point --model-config at the %s written by "
                      "train.py, or at its directory." % (
                          utils.MODEL_CONFIG_FILE, path, utils.MODEL_CONFIG_FILE))
    return utils.load_model_config(directory)


def _check_output(path, overwrite, existing_dir=True):
    """Fail before the long work, not after it: no overwriting, no missing
    directory (unless ``existing_dir`` is False: it will be created)."""
    if os.path.exists(path) and not overwrite:
        raise IOError("%s already exists; choose another output path, or pass "
                      "--overwrite to replace it." % path)
    directory = os.path.dirname(os.path.abspath(path))
    if existing_dir and not os.path.isdir(directory):
        raise IOError("Output directory %r does not exist; create it first."
                      % directory)


def convert_caffemodel(model_path, output, prototxt=None, num_classes=None,
                       config=None, checkpoint=None, drop_classifier=False,
                       overwrite=False):
    """convert.py's work: .caffemodel -> .npz (and optionally a checkpoint).

    Nothing is written unless every check passes: the file parses, the
    prototxt (if any) matches it, and it covers every variable of the
    network (except an absent classifier).

    Args:
      model_path: the .caffemodel (``layer`` or legacy ``layers`` format).
      output: the .npz to write; keys are variable names such as
        ``res2a_branch1/weights``.
      prototxt: optional deploy/train prototxt to check the model against.
      num_classes: expected classes; None takes them from the model.
      config: ``ModelConfig`` of the network; default ResNet-101.
      checkpoint: optional Saver checkpoint prefix to write as well (with
        ``model_config.json`` beside it).
      drop_classifier: convert the body only.
      overwrite: replace existing outputs instead of refusing.
    Returns:
      Conversion.
    Raises:
      IOError, CaffeFormatError, ValueError: with what to do about it.
    """
    config = config or ModelConfig()
    _check_output(output, overwrite)
    if checkpoint:
        _check_output(checkpoint + ".index", overwrite, existing_dir=False)
    config_file = None
    if checkpoint:
        config_file = os.path.join(os.path.dirname(os.path.abspath(checkpoint)),
                                   utils.MODEL_CONFIG_FILE)
    proto_layers = read_prototxt_layers(prototxt) if prototxt else None
    net_proto = read_caffemodel(model_path)
    if proto_layers is not None:
        check_prototxt(proto_layers, net_proto, prototxt)
    start = time.time()
    conversion, graph, net = convert_net(net_proto, num_classes, config, drop_classifier)
    if config_file and os.path.isfile(config_file):
        recorded = utils.load_model_config(os.path.dirname(config_file))
        if recorded != (conversion.num_classes, config):
            raise ValueError("%s records another network (%s); write --checkpoint "
                             "into another directory." % (config_file, recorded))
    save_npz(output, conversion.weights)
    log.info("wrote %d arrays (%d values) to %s in %.1f s", len(conversion.weights),
             sum(v.size for v in conversion.weights.values()), output,
             time.time() - start)
    if checkpoint:
        save_checkpoint(checkpoint, graph, net, conversion.weights)
        utils.save_model_config(os.path.dirname(config_file), conversion.num_classes,
                                config)
        log.info("wrote checkpoint %s", checkpoint)
    return conversion


def write_model_prototxt(path, num_classes=None, config=None, overwrite=False):
    """Write our network's deploy prototxt to ``path`` (atomically)."""
    _check_output(path, overwrite)
    text = model_prototxt(num_classes or utils.NUM_CLASSES, config)
    with _atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    log.info("wrote %s (%d layers)", path, text.count("\nlayer {"))


# ================================================================= helpers
class _atomic_output(object):
    """``with _atomic_output(path) as tmp``: write ``tmp``; it becomes ``path``
    only if the block succeeds, so a crash never leaves a half-written file."""

    def __init__(self, path):
        self.path = path
        self.tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                                ".%s.tmp-%d" % (os.path.basename(path), os.getpid()))

    def __enter__(self):
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)
        return False

