"""Weights on disk: find them, read them, restore them, and the model_config.json beside them.

The one home of checkpoint logic. A weight flag (--restore-from,
--model-weights) may name a ``.npz`` written by convert.py, a checkpoint
prefix (``model.ckpt-1000``) or a directory of checkpoints (its latest is
used); every script resolves and reads it through ``resolve_checkpoint`` and
``read_weights``. ``model_config.json`` records the architecture beside
checkpoints, so that a restore rebuilds the same network.
"""
import json
import logging
import os
import zipfile

import numpy as np

from deeplab_resnet import files
from deeplab_resnet.constants import CLASSIFIER_PREFIX, MODEL_CONFIG_FILE
from deeplab_resnet.model import ModelConfig
from deeplab_resnet.network import fold_batchnorm_weights
from deeplab_resnet.runtime import first_error_line, session_config, tf

log = logging.getLogger(__name__)

# The first ASPP branch's weights: their last dimension is the class count.
CLASSIFIER_WEIGHTS = CLASSIFIER_PREFIX + "_c0/weights"


# Errors TensorFlow's checkpoint reader raises for truncated or foreign files.
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, OSError, EOFError,
                zipfile.BadZipFile)


def snapshot_prefixes(directory):
    """Checkpoint prefixes in ``directory``, oldest first (by global step)."""
    state = tf.train.get_checkpoint_state(directory)
    paths = list(state.all_model_checkpoint_paths) if state else []
    if state and state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
    paths = [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths]
    found = {os.path.join(directory, name[:-len(".index")])
             for name in os.listdir(directory) if name.endswith(".index")}
    paths = sorted(set(p for p in paths if os.path.isfile(p + ".index")) | found,
                   key=_step_of)
    return paths


def _step_of(prefix):
    tail = prefix.rsplit("-", 1)[-1]
    return (int(tail), prefix) if tail.isdigit() else (-1, prefix)


def read_checkpoint(prefix):
    """Every tensor of a checkpoint, read in full.

    Raises:
      IOError: the checkpoint is truncated, corrupt or not a checkpoint,
        with what to do.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        return {name: reader.get_tensor(name)
                for name in reader.get_variable_to_shape_map()}
    except _READ_ERRORS as err:
        raise IOError("Cannot read the checkpoint %s (%s): it is truncated or corrupt "
                      "(an interrupted copy or save?), or not a TensorFlow checkpoint. "
                      "Use another snapshot, or the .npz written by convert.py."
                      % (prefix, first_error_line(err)))


def _newest_readable(directory):
    """The newest checkpoint prefix in ``directory`` that reads in full.

    Newer ones that do not are named in a warning.

    Raises:
      IOError: none is readable (or there is none).
    """
    prefixes = snapshot_prefixes(directory)
    if not prefixes:
        raise IOError("%r is a directory with no checkpoint in it. Point "
                      "--restore-from at a checkpoint prefix, a directory "
                      "written by train.py, or the .npz written by "
                      "convert.py." % directory)
    for newest_first, prefix in enumerate(reversed(prefixes)):
        try:
            read_checkpoint(prefix)
        except IOError as err:
            log.warning("%s", err)
            continue
        if newest_first:
            log.warning("using %s, the newest checkpoint in %s that reads in full",
                        prefix, directory)
        return prefix
    raise IOError("No checkpoint in %s can be read (%d tried, see the warnings). "
                  "Retrain, or point at another directory or a .npz."
                  % (directory, len(prefixes)))


def resolve_checkpoint(path):
    """A weight file or checkpoint prefix from a flag value.

    Accepts a ``.npz``, a checkpoint prefix (``model.ckpt-1000``) or a
    directory holding checkpoints (the newest one that reads in full is
    used: an interrupted copy does not hide the snapshots before it).

    Raises:
      IOError: nothing usable at ``path``, saying what is there instead.
    """
    if os.path.isdir(path):
        return _newest_readable(path)
    if os.path.isfile(path) and path.endswith(".npz"):
        return path
    if os.path.isfile(path + ".index"):
        return path
    if path.endswith(".index") and os.path.isfile(path):
        return path[:-len(".index")]
    if os.path.isfile(path):
        raise IOError("%r is a file but not weights: give the .npz written by "
                      "convert.py, a checkpoint prefix (the name before .index, "
                      "e.g. snapshots/model.ckpt-20000) or a directory of "
                      "checkpoints." % path)
    raise IOError("%r does not exist. Point it at a checkpoint prefix (e.g. "
                  "snapshots/model.ckpt-20000), a directory of checkpoints, or "
                  "the .npz written by convert.py." % path)


def read_weights(path):
    """``{'layer/param': array}`` from a .npz or a checkpoint (optimizer
    slots and counters left out).

    Raises:
      IOError: nothing usable at ``path``, or a file that cannot be read.
    """
    path = resolve_checkpoint(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except _READ_ERRORS as err:
            raise IOError("--restore-from %r is not a weight file written by "
                          "convert.py (%s); it may be truncated. Convert the "
                          ".caffemodel again."
                          % (path, first_error_line(err)))
    return model_weights(read_checkpoint(path))


def model_weights(tensors):
    """The network's variables among a checkpoint's tensors (no optimizer
    slots, step counter or accumulators)."""
    return {name: value for name, value in tensors.items()
            if "/Momentum" not in name and name != "global_step"
            and not name.startswith("grad_accumulation/")}


def classifier_classes(path):
    """Number of classes the weights at ``path`` were trained for, or None.

    Reads only the classifier's shape (npz members load lazily; checkpoints
    have a shape map), so it is cheap even for ResNet-101.
    """
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                if CLASSIFIER_WEIGHTS in data.files:
                    return int(data[CLASSIFIER_WEIGHTS].shape[-1])
        except _READ_ERRORS as err:
            raise IOError("--restore-from %r is not a weight file written by "
                          "convert.py or train.py (%s); it may be truncated."
                          % (path, first_error_line(err)))
        return None
    try:
        shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    except _READ_ERRORS as err:
        raise IOError("Cannot read the checkpoint %s (%s): it is truncated or corrupt, "
                      "or not a TensorFlow checkpoint. Use another snapshot, or the "
                      ".npz written by convert.py." % (path, first_error_line(err)))
    shape = shapes.get(CLASSIFIER_WEIGHTS)
    return int(shape[-1]) if shape else None


def classifier_mismatch(weights, net):
    """Classifier variables whose shape differs from the network's."""
    return sorted(k for k, var in net.variables.items()
                  if k.startswith(CLASSIFIER_PREFIX) and k in weights
                  and tuple(weights[k].shape) != tuple(var.get_shape().as_list()))


def _shape(array_shape):
    return "x".join(str(d) for d in array_shape)


def restore(sess, path, net, *, ignore_missing=False, skip_mismatched_classifier=False,
            skip_classifier=False):
    """Load weights from ``path`` (see ``resolve_checkpoint``) into ``net``.

    BatchNorm is folded on the fly when ``net`` was built with
    ``fold_batchnorm``, so one trained file serves both forms.

    Args:
      skip_mismatched_classifier: when the file's classifier was trained for
        another number of classes (or it has none, as the ImageNet init
        model), leave ours initialised (fine-tuning on a new dataset) and log
        the variables left out, instead of failing.
      skip_classifier: never restore the classifier (--not-restore-last).
      ignore_missing: leave any variable the file lacks initialised. Without
        it, every variable outside a skipped classifier must be in the file
        with its shape.
    Returns:
      The resolved path.
    Raises:
      IOError: no such file; ValueError: the weights do not fit the network
        (the message lists every missing, unexpected and mismatched variable).
    """
    weights = read_weights(path)
    ours = sorted(k for k in net.variables if k.startswith(CLASSIFIER_PREFIX))
    # The file's classifier layers too: --not-restore-last also leaves out a
    # classifier with more ASPP branches than ours.
    classifier_layers = {k.split("/")[0] for k in list(net.variables) + list(weights)
                         if k.startswith(CLASSIFIER_PREFIX)}
    skip = set()
    if skip_classifier:
        log.info("not restoring the classifier (--not-restore-last): %s start "
                 "from their initial values", ", ".join(ours))
        skip = classifier_layers
    elif skip_mismatched_classifier:
        mismatched = classifier_mismatch(weights, net)
        absent = [k for k in ours if k not in weights]
        if mismatched or absent:
            # Weights of another architecture fail on the body, and are
            # reported as such, before anything is said about the classifier.
            net.check_weights(fold_batchnorm_weights(weights, net.batchnorm_producers())
                              if net.fold_batchnorm else weights,
                              ignore_missing, skip=classifier_layers)
            left_out = ["%s (file %s, network %s)" % (
                k, _shape(weights[k].shape), _shape(net.variables[k].get_shape().as_list()))
                for k in mismatched]
            left_out += ["%s (not in the file)" % k for k in absent]
            log.warning("%s %s; not restoring the classifier, so these variables "
                        "start from their initial values: %s", path,
                        "has a classifier for another number of classes"
                        if mismatched else "has no classifier",
                        ", ".join(left_out))
            skip = classifier_layers
    if net.fold_batchnorm:
        weights = fold_batchnorm_weights(weights, net.batchnorm_producers())
    net.assign_weights(weights, sess, ignore_missing=ignore_missing, skip=skip)
    return path


def open_session(net, path, intra_op_threads=0, inter_op_threads=0):
    """A session on the default graph with ``net``'s weights restored from ``path``.

    Raises:
      ValueError: the weights do not fit the network.
    """
    sess = tf.Session(config=session_config(intra_op_threads, inter_op_threads))
    try:
        restore(sess, path, net)
    except Exception:
        sess.close()
        raise
    return sess


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
        with tf.Session(graph=graph, config=session_config()) as sess:
            net.assign_weights(weights, sess, ignore_missing=True)
            saver.save(sess, prefix, write_meta_graph=False)


# ------------------------------------------------------- model_config.json
def save_model_config(directory, num_classes, config):
    """Record the architecture next to checkpoints (atomically)."""
    files.write_json(os.path.join(directory, MODEL_CONFIG_FILE),
                     dict(config.to_dict(), num_classes=num_classes))


def load_model_config(path):
    """(num_classes or None, ModelConfig) recorded beside a checkpoint.

    A file without a record (e.g. converted Caffe weights) is the published
    ResNet-101 network.

    Raises:
      ValueError: the file is not JSON, or a key is unknown, missing, of
        the wrong type or out of range; naming the file and what to do.
    """
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_file = os.path.join(directory, MODEL_CONFIG_FILE)
    if not os.path.isfile(config_file):
        return None, ModelConfig()
    try:
        with open(config_file) as f:
            data = json.load(f)
    except ValueError as err:
        raise _config_error(config_file, "it is not valid JSON (%s)" % err)
    return _parse_model_config(data, config_file)


# model_config.json's keys: (what the value must be, the test it must pass).
_CONFIG_SCHEMA = {
    "blocks": ("a list of four positive integers (res2..res5)",
               lambda v: _is_list_of_positive(v) and len(v) == 4),
    "base_depth": ("a positive integer", lambda v: _is_positive(v)),
    "aspp_rates": ("a non-empty list of positive integers",
                   lambda v: _is_list_of_positive(v) and len(v) > 0),
    "num_classes": ("a positive integer or null", lambda v: v is None or _is_positive(v)),
}
_REQUIRED_KEYS = ("blocks", "base_depth", "aspp_rates")


def _is_positive(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_list_of_positive(value):
    return isinstance(value, list) and all(map(_is_positive, value))


def _config_error(config_file, problem):
    return ValueError(
        "%s: %s. Fix it, or delete the file: train.py then rebuilds it from the "
        "checkpoint's shapes and the --blocks, --base-depth and --aspp-rates flags."
        % (config_file, problem))


def _parse_model_config(data, config_file):
    """(num_classes or None, ModelConfig) from the parsed JSON, checked key by key."""
    if not isinstance(data, dict):
        raise _config_error(config_file, "it must hold a JSON object, not %s"
                            % type(data).__name__)
    unknown = sorted(set(data) - set(_CONFIG_SCHEMA))
    if unknown:
        raise _config_error(config_file, "unknown key(s) %s (known: %s)"
                            % (", ".join(map(repr, unknown)), ", ".join(_CONFIG_SCHEMA)))
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise _config_error(config_file, "key(s) %s missing" % ", ".join(map(repr, missing)))
    for key, (wanted, valid) in _CONFIG_SCHEMA.items():
        if key in data and not valid(data[key]):
            raise _config_error(config_file, "%r must be %s, got %s"
                                % (key, wanted, json.dumps(data[key])))
    return data.get("num_classes"), ModelConfig(data["blocks"], data["base_depth"],
                                                data["aspp_rates"])


def architecture_from_shapes(prefix):
    """What a checkpoint's variable shapes say of its network.

    Returns:
      dict: ``blocks`` (per stage res2..res5), ``base_depth`` (res2a's inner
      width), ``aspp_branches`` and ``num_classes`` (the classifier's); the
      ASPP dilation rates leave no trace in the shapes.
    Raises:
      IOError: the checkpoint cannot be read.
    """
    try:
        shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except _READ_ERRORS as err:
        raise IOError("Cannot read the checkpoint %s (%s)." % (prefix,
                                                               first_error_line(err)))
    blocks = [len({name.split("_")[0] for name in shapes
                   if name.startswith("res%d" % stage) and "_branch2a/weights" in name})
              for stage in (2, 3, 4, 5)]
    branches = sorted(name for name in shapes
                      if name.startswith(CLASSIFIER_PREFIX + "_c") and
                      name.endswith("/weights"))
    inner = shapes.get("res2a_branch2a/weights")
    classes = shapes.get(CLASSIFIER_WEIGHTS)
    return {"blocks": blocks, "base_depth": int(inner[-1]) if inner else None,
            "aspp_branches": len(branches),
            "num_classes": int(classes[-1]) if classes else None}


def read_model_config(path):
    """(num_classes or None, ModelConfig) from a model_config.json or its directory.

    Raises:
      IOError: no model_config.json there.
    """
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if ((not os.path.isdir(path) and os.path.basename(path) != MODEL_CONFIG_FILE)
            or not os.path.isfile(os.path.join(directory, MODEL_CONFIG_FILE))):
        raise IOError("No %s at %r. Point --model-config at the %s written by "
                      "train.py, or at its directory." % (
                          MODEL_CONFIG_FILE, path, MODEL_CONFIG_FILE))
    return load_model_config(directory)


def resolve_model(weights, num_classes):
    """The weight file to restore and the architecture to build for it.

    The architecture comes from ``model_config.json`` beside checkpoints
    written by train.py; a file without one (converted Caffe weights) is the
    published ResNet-101.

    Args:
      weights: --restore-from / --model-weights: .npz, checkpoint prefix or
        directory.
      num_classes: --num-classes.
    Returns:
      (path, ModelConfig): ``path`` resolved as by ``resolve_checkpoint``.
    Raises:
      IOError: nothing usable at ``weights``.
      ValueError: the weights were trained for another number of classes.
    """
    path = resolve_checkpoint(weights)
    recorded, config = load_model_config(path)
    trained = classifier_classes(path)
    if trained is None:
        trained = recorded
    if trained is not None and trained != num_classes:
        raise ValueError("%s was trained for %d classes but --num-classes is %d. "
                         "Run with --num-classes %d, or point at weights trained "
                         "for %d classes." % (path, trained, num_classes, trained,
                                              num_classes))
    return path, config
