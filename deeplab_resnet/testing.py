"""Test support: seeded random weights, tiny saved models, network-like
probabilities, scripts loaded by path.

No weights can be downloaded here, so tests and ``misc/benchmark.py`` make
their own; they all draw them through ``random_weights`` so that the rule
for plausible random weights lives in one place.
"""
import importlib.util
import os
import re

import numpy as np
import scipy.ndimage
from PIL import Image

from deeplab_resnet import checkpoints
from deeplab_resnet.constants import CLASSIFIER_PREFIX, NUM_CLASSES
from deeplab_resnet.model import ModelConfig, build_model
from deeplab_resnet.runtime import tf

# Same code path as ResNet-101, a few thousand parameters.
TINY_CONFIG = ModelConfig(blocks=(1, 1, 1, 1), base_depth=4, aspp_rates=(1, 2))


def random_weights(net, seed=0, spread=0.3, variance_range=(0.3, 3.0),
                   scale_range=(0.5, 1.5)):
    """Seeded weights for every variable of ``net``, in the unfolded layout.

    Convolutions are He-initialised (normal, std sqrt(2 / fan_in)), so that
    activations keep their scale through any depth; BatchNorm variances and
    scales are uniform in their ranges; biases, offsets and means are normal
    with std ``spread``.

    Returns:
      ``{'layer/param': float32 array}``.
    """
    rng = np.random.RandomState(seed)
    weights = {}
    for name in sorted(net.variables):
        shape = net.variables[name].get_shape().as_list()
        param = name.rsplit("/", 1)[-1]
        if param == "weights":
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
        elif param == "variance":
            value = rng.uniform(*variance_range, size=shape)
        elif param == "scale":
            value = rng.uniform(*scale_range, size=shape)
        else:  # biases, offset, mean
            value = rng.normal(0.0, spread, shape)
        weights[name] = value.astype(np.float32)
    return weights


def save_tiny_model(directory, num_classes=NUM_CLASSES, seed=0, config=TINY_CONFIG):
    """Random weights of a small network as train.py leaves them.

    Writes the checkpoint ``model.ckpt-0``, ``model_config.json`` and the same
    weights as ``tiny.npz`` into ``directory``. BatchNorm statistics are
    random too, so folding them is exercised. The classifier is scaled down
    so that logits are O(1) rather than O(1000) (the input is not normalised),
    which gives mixed predictions and softmax outputs a CRF can change, and
    class 0 gets a head start so that, as in VOC, background is common.

    Returns:
      (checkpoint prefix, npz path).
    """
    os.makedirs(directory, exist_ok=True)
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.float32, [1, None, None, 3])
        net, _ = build_model(images, num_classes, config=config)
        values = random_weights(net, seed, spread=0.2, variance_range=(0.5, 2.0),
                                scale_range=(0.8, 1.2))
        for name in values:
            if name.startswith(CLASSIFIER_PREFIX):
                values[name] = values[name] * 1e-3
        values[CLASSIFIER_PREFIX + "_c0/biases"][0] += 0.3
        prefix = os.path.join(directory, "model.ckpt-0")
        checkpoints.save_checkpoint(prefix, graph, net, values)
    checkpoints.save_model_config(directory, num_classes, config)
    npz = os.path.join(directory, "tiny.npz")
    np.savez(npz, **values)
    return prefix, npz


def network_like_probs(label, num_classes=NUM_CLASSES, factor=8, temperature=0.25):
    """Softmax probabilities shaped like a DeepLab network's, from a label map.

    The label is one-hot encoded (void 255, and any id outside the classes,
    as background), mean-pooled to 1/``factor`` as the network's output
    stride, blurred with a 5-tap binomial, upsampled bilinearly to the
    label's size, and the softmax taken of the result / ``temperature``: the
    right class inside regions (0.73 with the defaults and 21 classes),
    blurry, uncertain boundaries for a CRF to sharpen.

    Args:
      label: int array [H, W] of class ids.
    Returns:
      float32 array [H, W, num_classes], each pixel summing to 1.
    """
    label = np.asarray(label)
    label = np.where(label < num_classes, label, 0)
    height, width = label.shape
    onehot = np.eye(num_classes, dtype=np.float32)[label]
    padded_h, padded_w = -(-height // factor) * factor, -(-width // factor) * factor
    onehot = np.pad(onehot, ((0, padded_h - height), (0, padded_w - width), (0, 0)),
                    mode="edge")
    small = onehot.reshape(padded_h // factor, factor, padded_w // factor, factor,
                           num_classes).mean(axis=(1, 3))
    taps = np.array([1, 4, 6, 4, 1], np.float32) / 16
    for axis in (0, 1):
        small = scipy.ndimage.correlate1d(small, taps, axis=axis, mode="nearest")
    logits = np.stack([np.asarray(Image.fromarray(small[:, :, c], mode="F").resize(
        (padded_w, padded_h), Image.BILINEAR)) for c in range(num_classes)],
        axis=-1)[:height, :width] / temperature
    probs = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (probs / probs.sum(axis=2, keepdims=True)).astype(np.float32)


def load_script(path):
    """Import a script by its path (e.g. 'evaluate.py'), to call its functions."""
    name = "_script_" + re.sub(r"\W", "_", os.path.relpath(path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
