"""Caffe's protobuf wire format without Caffe or protoc: .caffemodel files in and out.

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

The writer (``encode_layer``, ``encode_blob``) is the reader's mirror; with
``convert.write_caffemodel`` it makes the Caffe files the tests and the
benchmark feed to OpenCV's independent Caffe importer. numpy only.
"""
import collections
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

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


def encode_net(name, layers, legacy=False, packed=True, input_shape=None):
    """Serialize a NetParameter.

    Args:
      name: the net's name.
      layers: ``CaffeLayer`` s in order.
      legacy: the deprecated V1 ``layers`` format. V1 has no Input layer, so
        an ``Input`` layer becomes NetParameter's ``input``/``input_dim``
        fields with ``input_shape`` (N, C, H, W).
    Returns:
      bytes, the file's contents.
    """
    parts = [_string_field(NET_NAME, name)]
    for layer in layers:
        if legacy and layer.type == "Input":
            parts.append(_string_field(NET_INPUT, layer.name))
            parts += [_varint_field(NET_INPUT_DIM, d) for d in input_shape]
            continue
        payload = encode_layer(layer.name, layer.type, layer.bottoms, layer.tops,
                               layer.blobs, legacy, packed)
        parts.append(_bytes_field(NET_LAYERS_V1 if legacy else NET_LAYER, payload))
    return b"".join(parts)


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
