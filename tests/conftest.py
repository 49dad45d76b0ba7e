"""Shared fixtures: small VOC-layout datasets and a tiny DeepLab configuration.

Nothing here downloads anything; every file is written to ``tmp_path``.
"""
import collections
import os
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

from deeplab_resnet import constants, testing
from deeplab_resnet.runtime import tf
from deeplab_resnet.testing import TINY_CONFIG, save_tiny_model  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_SAMPLE = os.path.join(REPO_ROOT, os.pardir, "shared", "data", "voc_sample")


@pytest.fixture(autouse=True)
def fresh_graph():
    """Each test builds into its own default graph."""
    tf.reset_default_graph()
    yield
    tf.reset_default_graph()


@pytest.fixture
def tiny_config():
    return TINY_CONFIG


def write_voc_pair(root, name, size, num_classes=constants.NUM_CLASSES, seed=0,
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
    label[0, :] = constants.IGNORE_LABEL
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(root, "SegmentationClassAug"), exist_ok=True)
    Image.fromarray(image).save(os.path.join(root, "JPEGImages", name + ".jpg"),
                                quality=95)
    label_image = Image.fromarray(label, mode="L")
    if label_mode == "P":
        label_image = label_image.convert("P")
        label_image.putpalette(constants.PALETTE.ravel().tolist())
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


def load_script(name):
    """Import a top-level script (e.g. 'evaluate') to call its functions."""
    return testing.load_script(os.path.join(REPO_ROOT, name + ".py"))


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
