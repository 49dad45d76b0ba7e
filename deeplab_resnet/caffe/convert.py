"""Caffe weights <-> this network's variables: convert a .caffemodel, or write one from our weights.

Conversion is a name lookup because ``model.py`` keeps Caffe's layer names:
``Convolution`` X gives ``X/weights`` (Caffe OIHW -> TF HWIO) and
``X/biases``; ``BatchNorm`` bnX gives ``bnX/mean`` and ``bnX/variance``
(Caffe stores ``[mean * sf, var * sf, sf]``, divided back here); the ``Scale``
layer after it (scaleX) gives ``bnX/scale`` and ``bnX/offset``.
``write_caffemodel`` maps the other way, so that OpenCV's independent Caffe
importer can check our numerics on files made from the same weights.
"""
import collections
import logging
import os
import time

import numpy as np

from deeplab_resnet import checkpoints, files
from deeplab_resnet.caffe import wire
from deeplab_resnet.caffe.prototxt import (DEPLOY_INPUT_SIZE, DEPLOY_NAME, check_prototxt,
                                           deploy_layers, deploy_prototxt,
                                           read_prototxt_layers)
from deeplab_resnet.caffe.wire import CaffeFormatError, layer_kind, read_caffemodel
from deeplab_resnet.constants import CLASSIFIER_PREFIX, MODEL_CONFIG_FILE, NUM_CLASSES
from deeplab_resnet.messages import abbreviate
from deeplab_resnet.model import DeepLabResNetModel, ModelConfig
from deeplab_resnet.network import shape_problems
from deeplab_resnet.runtime import tf

log = logging.getLogger(__name__)


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


def model_prototxt(num_classes=NUM_CLASSES, config=None,
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
    return sorted(k for k in names if k.startswith(CLASSIFIER_PREFIX))


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
    if drop_classifier:
        _drop_classifier(weights, origin, classifier)
        classifier = []
    num_classes = _classes(weights, origin, classifier, num_classes)
    has_classifier = bool(classifier)
    graph, net = build_network(num_classes, config)
    expected = {k: v.get_shape().as_list() for k, v in net.variables.items()}
    if not has_classifier:
        expected = {k: v for k, v in expected.items()
                    if k not in set(_classifier_keys(expected))}
    _check_fit(weights, expected, config, num_classes)
    ignored = _ignored_layers(net_proto, net, {origin[k] for k in expected})
    weights = {k: weights[k] for k in sorted(expected)}
    _log_classifier(has_classifier, drop_classifier, num_classes)
    return Conversion(weights, num_classes, has_classifier, ignored), graph, net


def _drop_classifier(weights, origin, classifier):
    """--drop-classifier: take the classifier's entries out of ``weights``."""
    for key in classifier:
        del weights[key]
    if classifier:
        log.info("dropped the model's classifier (%s) as asked",
                 ", ".join(sorted({origin[k] for k in classifier})))


def _classes(weights, origin, classifier, num_classes):
    """The number of classes: the file's classifier's, which ``num_classes``
    (--num-classes) must equal when given; ``NUM_CLASSES`` without one."""
    first = CLASSIFIER_PREFIX + "_c0/weights"
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
    return NUM_CLASSES if num_classes is None else num_classes


def _check_fit(weights, expected, config, num_classes):
    """Raise ValueError unless ``weights`` hold every ``expected`` shape."""
    problems, _ = shape_problems(
        {k: v.shape for k, v in weights.items() if k in expected}, expected,
        missing="no weights for %s")
    if problems:
        raise ValueError(
            "The Caffe model does not fit DeepLab-v2 ResNet-101 (blocks %s) with %d "
            "classes: %s. Is it a DeepLab-v2 ResNet-101 model (not VGG/LargeFOV)? "
            "A cut-short download also loses layers." % (
                ",".join(map(str, config.blocks)), num_classes, "; ".join(problems)))


def _ignored_layers(net_proto, net, used):
    """Caffe layers with weights the network does not use, or that the
    network does not have (logged; converted models keep none of them)."""
    known = {d["name"] for d in deploy_layers(net.layer_specs)}
    ignored = [layer.name for layer in net_proto.layers
               if layer.name not in used and (layer.blobs or layer.name not in known)]
    if ignored:
        log.info("ignored %d Caffe layers that are not part of the network "
                 "(multi-scale copies, data, loss, interp...): %s",
                 len(ignored), abbreviate(ignored, 6))
    return ignored


def _log_classifier(has_classifier, drop_classifier, num_classes):
    """Say what became of the classifier, and how to train without one."""
    if has_classifier:
        log.info("classifier %s: %d classes", CLASSIFIER_PREFIX, num_classes)
    elif drop_classifier:
        log.info("converted the ResNet body only (--drop-classifier); train from "
                 "it with --not-restore-last.")
    else:
        log.warning("the model has no %s classifier (an ImageNet/COCO init model?): "
                    "converted the ResNet body only. Train from it with "
                    "--not-restore-last so the classifier starts from scratch.",
                    CLASSIFIER_PREFIX)


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
                                   MODEL_CONFIG_FILE)
    proto_layers = read_prototxt_layers(prototxt) if prototxt else None
    net_proto = read_caffemodel(model_path)
    if proto_layers is not None:
        check_prototxt(proto_layers, net_proto, prototxt)
    start = time.time()
    conversion, graph, net = convert_net(net_proto, num_classes, config, drop_classifier)
    if config_file and os.path.isfile(config_file):
        recorded = checkpoints.load_model_config(os.path.dirname(config_file))
        if recorded != (conversion.num_classes, config):
            raise ValueError("%s records another network (%s); write --checkpoint "
                             "into another directory." % (config_file, recorded))
    files.save_npz(output, conversion.weights)
    log.info("wrote %d arrays (%d values) to %s in %.1f s", len(conversion.weights),
             sum(v.size for v in conversion.weights.values()), output,
             time.time() - start)
    if checkpoint:
        checkpoints.save_checkpoint(checkpoint, graph, net, conversion.weights)
        checkpoints.save_model_config(os.path.dirname(config_file), conversion.num_classes,
                                      config)
        log.info("wrote checkpoint %s", checkpoint)
    return conversion


def write_model_prototxt(path, num_classes=None, config=None, overwrite=False):
    """Write our network's deploy prototxt to ``path`` (atomically)."""
    _check_output(path, overwrite)
    text = model_prototxt(num_classes or NUM_CLASSES, config)
    files.write_bytes(path, text, mode="w")
    log.info("wrote %s (%d layers)", path, text.count("\nlayer {"))


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
      packed, bn_scale_factor: see ``wire.encode_blob`` and ``caffe_blobs``.
    """
    layers = [wire.CaffeLayer(d["name"], d["type"], d["bottoms"], d["tops"],
                              caffe_blobs(d, weights, bn_scale_factor))
              for d in deploy_layers(specs)]
    files.write_bytes(path, wire.encode_net(name, layers, legacy, packed,
                                            input_shape=(1, 3) + DEPLOY_INPUT_SIZE))
