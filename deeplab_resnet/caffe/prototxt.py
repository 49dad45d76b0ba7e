"""Caffe prototxt both ways: our network as a deploy prototxt, and reading one to check it.

``Network`` records a ``layer_specs`` entry per layer while it builds;
``deploy_layers`` translates them into Caffe layers with the blob names of
the released DeepLab-v2 prototxt (in-place BatchNorm + Scale + ReLU), which
``deploy_prototxt`` writes as text (``misc/deploy.prototxt``) and
``convert.write_caffemodel`` as a .caffemodel. ``read_prototxt_layers``
parses the protobuf text format enough to check a released prototxt
against its .caffemodel before converting. numpy only.
"""
import logging
import os
import re

from deeplab_resnet.caffe.wire import CaffeFormatError, V1_ENUM_NAMES, layer_kind
from deeplab_resnet.messages import abbreviate

log = logging.getLogger(__name__)

# The input size written into deploy prototxts: DeepLab-v2's test crop.
DEPLOY_INPUT_SIZE = (513, 513)
DEPLOY_NAME = "DeepLab-v2 ResNet-101"


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
