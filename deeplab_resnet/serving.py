"""Serving: a trained model exported as a frozen GraphDef and a SavedModel.

Both hold the same self-contained graph, one image per run:

=============  ========================  ======================================
name           dtype, shape              meaning
=============  ========================  ======================================
image          uint8 [1, H, W, 3]        the photo, RGB, any H and W
label          uint8 [1, H, W]           class ids at the input size (int32
                                         when there are more than 256 classes)
probabilities  float32 [1, H, W, C]      softmax at the input size
=============  ========================  ======================================

With ``crf`` (export.py --crf) the dense CRF of ``crf.backend_tf`` runs in the
graph after the network, its parameters baked in: ``probabilities`` are
then the CRF's marginals and ``label`` their argmax, the result of
``inference.py --crf --crf-backend tensorflow``.

The batch dimension of 1 follows DeepLab's own export (``ImageTensor`` in
tensorflow/models research/deeplab) and lets TF Serving's row ("instances")
JSON format carry one image; images of different sizes cannot share a batch.

Everything between the photo and the outputs is inside the graph: the Caffe
preprocessing of ``images.bgr_minus_mean`` (RGB to BGR, ``IMG_MEAN``
subtracted, in float32), the network of ``predict.build_prediction`` with
BatchNorm folded into the convolutions (the stored weights are folded by
``checkpoints.restore``, so the graph has no BatchNorm op), optional multi-scale,
flip and bfloat16 network, and the upsampling to the input size. The weights are constants
(the graph is frozen), so neither form has variables to restore: the
SavedModel is the frozen graph plus a serving signature.

Outputs are written next to each other in one directory, which appears only
when complete (built under a temporary name, then renamed)::

  <output-dir>/frozen_graph.pb          GraphDef, tensors image:0, label:0,
                                        probabilities:0
  <output-dir>/saved_model/             tag 'serve', signature 'serving_default'
  <output-dir>/export_info.json         the names above, classes, scales,
                                        flip, bf16, CRF parameters, source
                                        weights
  <output-dir>/model.onnx               with ``onnx``: the same graph for
                                        onnxruntime (``onnx_export``)
"""
import logging
import os
import shutil

from deeplab_resnet import checkpoints, files, messages, onnx_export
from deeplab_resnet.constants import NUM_CLASSES
from deeplab_resnet.crf import backend_tf
from deeplab_resnet.evaluation.predict import PredictConfig, build_prediction
from deeplab_resnet.images import bgr_minus_mean
from deeplab_resnet.network import VARIABLE_OPS
from deeplab_resnet.runtime import tf

log = logging.getLogger(__name__)

INPUT_NAME = "image"
LABEL_NAME = "label"
PROBS_NAME = "probabilities"
FROZEN_GRAPH_FILE = "frozen_graph.pb"
SAVED_MODEL_DIR = "saved_model"
INFO_FILE = "export_info.json"
SERVING_TAG = tf.saved_model.tag_constants.SERVING
SIGNATURE_KEY = tf.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY
# Op types that hold or touch state; a frozen graph has none of them.
STATE_OPS = VARIABLE_OPS + ("ReadVariableOp", "AssignVariableOp", "Assign",
                            "VarIsInitializedOp")


def label_dtype(num_classes):
    """uint8 class ids when they fit, as in the label PNGs; int32 otherwise."""
    return tf.uint8 if num_classes <= 256 else tf.int32


def build_serving_graph(num_classes, config=None, *, predict=None, crf=None):
    """The serving graph in the default graph: placeholder to named outputs.

    Args:
      num_classes: classifier outputs.
      config: ``ModelConfig`` (see ``checkpoints.resolve_model``).
      predict: ``predict.PredictConfig``: scales and flip (test-time
        augmentation) baked into the graph, and bf16 (the network in
        bfloat16 with bfloat16 weights, half the size; the outputs stay as
        above), as in ``predict.build_prediction``. None: one scale, float32.
      crf: ``crf.CrfConfig`` to refine the prediction in the graph, or None.
    Returns:
      (net, image, outputs): ``net`` holds the variables to restore (folded
      form), ``image`` the uint8 [1, H, W, 3] placeholder and ``outputs`` a
      dict {'label': [1, H, W], 'probabilities': float32 [1, H, W, C]}.
    """
    image = tf.placeholder(tf.uint8, [1, None, None, 3], name=INPUT_NAME)
    with tf.name_scope("preprocess"):
        bgr = bgr_minus_mean(tf.cast(image, tf.float32))
    predict = predict or PredictConfig()
    net, prediction = build_prediction(bgr, num_classes, config, scales=predict.scales,
                                       flip=predict.flip, fold_batchnorm=True,
                                       bf16=predict.bf16)
    pred, probs = prediction.pred, prediction.probs
    if crf is not None:
        marginals, labels = backend_tf.crf_outputs(image[0], tf.cast(probs[0], tf.float32),
                                                   crf)
        probs, pred = marginals[None], labels[None]
    label = _named_as(pred, label_dtype(num_classes), LABEL_NAME)
    probs = _named_as(probs, tf.float32, PROBS_NAME)
    # The signature then shows the batch of one (MSC/flip lose it).
    label.set_shape([1, None, None])
    probs.set_shape([1, None, None, num_classes])
    return net, image, {LABEL_NAME: label, PROBS_NAME: probs}


def _named_as(tensor, dtype, name):
    """``tensor`` in ``dtype`` as an op called ``name`` (tf.cast to the same
    dtype returns its input unnamed)."""
    if tensor.dtype == dtype:
        return tf.identity(tensor, name=name)
    return tf.cast(tensor, dtype, name=name)


def freeze(weights, num_classes, *, predict=None, crf=None):
    """A GraphDef of the serving graph with the weights as constants.

    Args:
      weights: .npz, checkpoint prefix or directory (``checkpoints.restore``); the
        architecture comes from ``model_config.json`` beside it.
      num_classes: must match the weights' classifier.
      predict, crf: as ``build_serving_graph``.
    Returns:
      (GraphDef, path of the weights used, ModelConfig).
    Raises:
      IOError: nothing usable at ``weights``; ValueError: weights for
      another network or class count.
    """
    path, config = checkpoints.resolve_model(weights, num_classes)
    with tf.Graph().as_default() as graph:
        net, _, outputs = build_serving_graph(num_classes, config, predict=predict,
                                              crf=crf)
        sess = checkpoints.open_session(net, path)
        try:
            graph_def = tf.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), [t.op.name for t in outputs.values()])
        finally:
            sess.close()
    return graph_def, path, config


def graph_tensors(graph):
    """(image, {'label': t, 'probabilities': t}) of an imported serving graph.

    The batch of one is restated: import_graph_def infers shapes afresh and
    the multi-scale and flip ops hide it.
    """
    get = lambda name: graph.get_tensor_by_name(name + ":0")
    outputs = {name: get(name) for name in (LABEL_NAME, PROBS_NAME)}
    outputs[LABEL_NAME].set_shape([1, None, None])
    outputs[PROBS_NAME].set_shape([1, None, None, None])
    return get(INPUT_NAME), outputs


def write_saved_model(graph_def, directory):
    """Save a frozen serving graph as a SavedModel with a 'serve' signature.

    ``directory`` must not exist (SavedModelBuilder's rule).
    """
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        image, outputs = graph_tensors(graph)
        signature = tf.saved_model.signature_def_utils.predict_signature_def(
            inputs={INPUT_NAME: image}, outputs=outputs)
        builder = tf.saved_model.builder.SavedModelBuilder(directory)
        with tf.Session(graph=graph) as sess:
            builder.add_meta_graph_and_variables(
                sess, [SERVING_TAG], signature_def_map={SIGNATURE_KEY: signature},
                strip_default_attrs=True)
        builder.save()


# What an export writes at the top of --output-dir and of its saved_model/:
# --overwrite replaces a directory that holds nothing else.
EXPORT_NAMES = frozenset([FROZEN_GRAPH_FILE, SAVED_MODEL_DIR, INFO_FILE, onnx_export.ONNX_FILE])
SAVED_MODEL_NAMES = frozenset(["saved_model.pb", "variables", "assets", "fingerprint.pb"])


def _within(path, directory):
    """True if ``path`` is ``directory`` or lies under it (symlinks resolved)."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def _not_exported(output_dir):
    """What in an existing ``output_dir`` an export did not write, as names."""
    foreign = sorted(set(os.listdir(output_dir)) - EXPORT_NAMES)
    if INFO_FILE not in os.listdir(output_dir):
        foreign.append("(no %s)" % INFO_FILE)
    saved_model = os.path.join(output_dir, SAVED_MODEL_DIR)
    if os.path.isdir(saved_model):
        foreign += [os.path.join(SAVED_MODEL_DIR, name) for name in
                    sorted(set(os.listdir(saved_model)) - SAVED_MODEL_NAMES)]
    return foreign


def check_output_dir(output_dir, overwrite=False, sources=()):
    """Raise IOError early if ``output_dir`` may not be (re)placed.

    An existing empty directory is taken. ``overwrite`` replaces only an
    earlier export: a directory holding anything an export does not write,
    the weights read (``sources``) or the current directory is refused, and
    a file is never replaced.
    """
    if os.path.islink(output_dir) and not os.path.isdir(output_dir):
        raise IOError("--output-dir %s is a symlink to %s, not to a directory. Choose "
                      "a directory path." % (output_dir, os.path.realpath(output_dir)))
    if os.path.isfile(output_dir):
        raise IOError("--output-dir %s is a file. Choose a directory path "
                      "that does not exist yet." % output_dir)
    for source in sources:
        if _within(source, output_dir):
            raise IOError("--output-dir %s holds the weights it exports (%s); replacing "
                          "it would delete them. Choose another --output-dir."
                          % (output_dir, source))
    if not (os.path.isdir(output_dir) and os.listdir(output_dir)):
        return
    if not overwrite:
        raise IOError("--output-dir %s already exists and is not empty. Pass "
                      "--overwrite to replace it, or choose another "
                      "--output-dir." % output_dir)
    if _within(os.getcwd(), output_dir):
        raise IOError("--output-dir %s holds the current directory, which --overwrite "
                      "cannot replace. Choose another --output-dir." % output_dir)
    foreign = _not_exported(output_dir)
    if foreign:
        raise IOError("--output-dir %s is not an earlier export: it holds %s. --overwrite "
                      "replaces only what export.py wrote; choose another --output-dir "
                      "or move those away." % (output_dir, messages.abbreviate(foreign)))


def _move_into_place(staging, output_dir, overwrite, sources):
    check_output_dir(output_dir, overwrite, sources)
    files.replace_directory(staging, output_dir)


def export_info(num_classes, predict, crf, weights_path, config):
    """What export_info.json says: the served tensors and the options baked in."""
    return {
        "input": {"name": INPUT_NAME, "dtype": "uint8",
                  "shape": [1, None, None, 3], "channels": "RGB"},
        "outputs": {
            LABEL_NAME: {"dtype": label_dtype(num_classes).name,
                         "shape": [1, None, None]},
            PROBS_NAME: {"dtype": "float32",
                         "shape": [1, None, None, num_classes]}},
        "saved_model": {"tag": SERVING_TAG, "signature": SIGNATURE_KEY},
        "num_classes": num_classes,
        "scales": list(predict.scales),
        "flip": bool(predict.flip),
        "bf16": bool(predict.bf16),
        # The CRF's parameters as baked in, or null without one.
        "crf": crf.as_dict() if crf is not None else None,
        "weights": os.path.abspath(weights_path),
        "model_config": config.to_dict(),
    }


def export(weights, output_dir, num_classes=NUM_CLASSES, *, predict=None, crf=None,
           overwrite=False, onnx=False):
    """Write the frozen graph, the SavedModel and export_info.json.

    Args:
      weights: .npz, checkpoint prefix or directory.
      output_dir: created with its parents; must be absent or empty unless
        ``overwrite``, which replaces an earlier export only (never the
        weights read, nor a file export.py did not write). A symlink to a
        directory is followed.
      num_classes, predict, crf: as ``freeze``.
      onnx: also write model.onnx (``onnx_export``; not with bf16 or crf).
    Returns:
      The dict written as export_info.json.
    Raises:
      IOError: no weights, or ``output_dir`` exists (without ``overwrite``);
      ValueError: weights for another network or class count; ``onnx``
      with bf16 or crf, or without its packages.
    """
    if os.path.islink(output_dir) and os.path.isdir(output_dir):
        output_dir = os.path.realpath(output_dir)
    output_dir = os.path.abspath(output_dir)
    check_output_dir(output_dir, overwrite, [weights])
    predict = predict or PredictConfig()
    if onnx:
        onnx_export.check_options(bf16=predict.bf16, crf=crf)
    graph_def, path, config = freeze(weights, num_classes, predict=predict, crf=crf)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = files.new_hidden_dir(parent, os.path.basename(output_dir), "tmp")
    try:
        with open(os.path.join(staging, FROZEN_GRAPH_FILE), "wb") as f:
            f.write(graph_def.SerializeToString())
        write_saved_model(graph_def, os.path.join(staging, SAVED_MODEL_DIR))
        info = export_info(num_classes, predict, crf, path, config)
        if onnx:
            info["onnx"] = onnx_export.convert(
                graph_def, os.path.join(staging, onnx_export.ONNX_FILE),
                input_name=INPUT_NAME, output_names=[LABEL_NAME, PROBS_NAME])
        files.write_json(os.path.join(staging, INFO_FILE), info)
        _move_into_place(staging, output_dir, overwrite, [weights, path])
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)
    log.info("Exported %s to %s (%d nodes)", path, output_dir, len(graph_def.node))
    return info
