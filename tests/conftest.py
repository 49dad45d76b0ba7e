"""Shared fixtures: small VOC-layout datasets and a tiny DeepLab configuration.

Nothing here downloads anything; every file is written to ``tmp_path``.
"""
import collections
import importlib.util
import os
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

import deeplab_resnet  # noqa: F401  (switches TensorFlow to graph mode)
import tensorflow.compat.v1 as tf
from deeplab_resnet import utils
from deeplab_resnet.model import ModelConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_SAMPLE = os.path.join(REPO_ROOT, os.pardir, "shared", "data", "voc_sample")

# Same code path as ResNet-101, a few thousand parameters.
TINY_CONFIG = ModelConfig(blocks=(1, 1, 1, 1), base_depth=4, aspp_rates=(1, 2))


@pytest.fixture(autouse=True)
def fresh_graph():
    """Each test builds into its own default graph."""
    tf.reset_default_graph()
    yield
    tf.reset_default_graph()


@pytest.fixture
def tiny_config():
    return TINY_CONFIG


def write_voc_pair(root, name, size, num_classes=utils.NUM_CLASSES, seed=0,
                   label_mode="P"):
    """Write JPEGImages/<name>.jpg and SegmentationClassAug/<name>.png.

    The label is a few rectangles of random classes on background with a
    255 border, like VOC's; ``label_mode`` 'P' (palette) or 'L' (grayscale).
    Returns (image RGB uint8 [H, W, 3], label uint8 [H, W]).
    """
    rng = np.random.RandomState(seed)
    height, width = size
    image = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
    label = np.zeros((height, width), np.uint8)
    for _ in range(3):
        y0, x0 = rng.randint(0, height // 2), rng.randint(0, width // 2)
        y1, x1 = y0 + rng.randint(3, height // 2 + 3), x0 + rng.randint(3, width // 2 + 3)
        label[y0:y1, x0:x1] = rng.randint(1, num_classes)
    label[0, :] = utils.IGNORE_LABEL
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(root, "SegmentationClassAug"), exist_ok=True)
    Image.fromarray(image).save(os.path.join(root, "JPEGImages", name + ".jpg"),
                                quality=95)
    label_image = Image.fromarray(label, mode="L")
    if label_mode == "P":
        label_image = label_image.convert("P")
        label_image.putpalette(utils.PALETTE.ravel().tolist())
    label_image.save(os.path.join(root, "SegmentationClassAug", name + ".png"))
    return image, label


@pytest.fixture
def voc_dataset(tmp_path):
    """Four 33x33 image/label pairs (two palette, two grayscale) and a list file.

    Returns (data_dir, list_path, names).
    """
    root = str(tmp_path / "voc")
    names = ["img%d" % i for i in range(4)]
    for i, name in enumerate(names):
        write_voc_pair(root, name, (33, 33), seed=i,
                       label_mode="P" if i % 2 == 0 else "L")
    list_path = os.path.join(root, "train.txt")
    with open(list_path, "w") as f:
        for name in names:
            f.write("/JPEGImages/%s.jpg /SegmentationClassAug/%s.png\n" % (name, name))
    return root, list_path, names


@pytest.fixture
def shared_sample():
    """The real VOC photo and labels in ../shared/data; skipped when absent."""
    if not os.path.isdir(SHARED_SAMPLE):
        pytest.skip("../shared/data/voc_sample is not present in this checkout")
    return {
        "image": os.path.join(SHARED_SAMPLE, "2007_000129.jpg"),
        "label": os.path.join(SHARED_SAMPLE, "2007_000129.png"),
        "label_gray": os.path.join(SHARED_SAMPLE, "2007_000129_gray.png"),
    }


def save_tiny_model(directory, num_classes=utils.NUM_CLASSES, seed=0):
    """Random TINY_CONFIG weights as train.py leaves them, in their own graph.

    Writes the checkpoint ``model.ckpt-0``, ``model_config.json`` and the same
    weights as ``tiny.npz`` into ``directory``. BatchNorm statistics are
    random too, so folding them is exercised. The classifier is scaled down
    so that logits are O(1) rather than O(1000) (the input is not normalised),
    which gives mixed predictions and softmax outputs a CRF can change, and
    class 0 gets a head start so that, as in VOC, background is common.
    Returns (prefix, npz path).
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(seed)
    with tf.Graph().as_default():
        tf.set_random_seed(seed)
        images = tf.placeholder(tf.float32, [1, None, None, 3])
        net, _ = utils.build_model(images, num_classes, config=TINY_CONFIG)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = {}
            for name, var in net.variables.items():
                shape = var.get_shape().as_list()
                if name.endswith("/variance"):
                    values[name] = rng.uniform(0.5, 2.0, shape)
                elif name.endswith(("/scale", "/mean", "/offset", "/biases")):
                    base = 1.0 if name.endswith("/scale") else 0.0
                    values[name] = base + rng.normal(0.0, 0.2, shape)
                else:
                    values[name] = sess.run(var)
                if name.startswith(utils.CLASSIFIER_PREFIX):
                    values[name] = values[name] * 1e-3
                if name == utils.CLASSIFIER_PREFIX + "_c0/biases":
                    values[name][0] += 0.3
                var.load(values[name], sess)
            prefix = tf.train.Saver(net.variables).save(
                sess, os.path.join(directory, "model.ckpt"), global_step=0)
    utils.save_model_config(directory, num_classes, TINY_CONFIG)
    npz = os.path.join(directory, "tiny.npz")
    np.savez(npz, **{k: np.asarray(v, np.float32) for k, v in values.items()})
    return prefix, npz


def load_script(name):
    """Import a top-level script (e.g. 'evaluate') to call its functions."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO_ROOT, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TinyModel = collections.namedtuple("TinyModel", ["directory", "prefix", "npz"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 21-class TINY_CONFIG model (``save_tiny_model``), once per module.

    Returns ``TinyModel(directory, prefix, npz)``: the checkpoint directory,
    its checkpoint prefix and the same weights as a .npz.
    """
    directory = str(tmp_path_factory.mktemp("tiny_model"))
    prefix, npz = save_tiny_model(directory)
    return TinyModel(directory, prefix, npz)


def run_script(path, argv):
    """Run a script in-process as `python path argv...`; return its exit code."""
    old_argv = sys.argv
    sys.argv = [path] + list(argv)
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exit_:
        return exit_.code
    finally:
        sys.argv = old_argv
    raise AssertionError("%s returned without sys.exit" % path)
