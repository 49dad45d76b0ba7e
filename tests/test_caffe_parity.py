"""Our TF graph gives Caffe's logits, checked by an independent Caffe importer.

OpenCV's ``cv2.dnn.readNetFromCaffe`` reads the prototxt and .caffemodel that
``deeplab_resnet.caffe`` writes and runs them with its own Caffe semantics
(explicit padding, ceil-mode pooling, BatchNorm scale factor, eps 1e-5,
in-place Scale/ReLU). Our network runs on the weights that convert.py's
library reads back from the same file, so the reader, the layouts and the
graph are all on the line. OpenCV is a test dependency only.
"""
import numpy as np
import pytest

import tensorflow.compat.v1 as tf
from deeplab_resnet.model import ModelConfig
from deeplab_resnet import checkpoints
from deeplab_resnet import constants
from deeplab_resnet.caffe import convert as caffe_convert
from helpers.caffe_models import make_caffe_model

cv2 = pytest.importorskip(
    "cv2", reason="OpenCV (opencv-python-headless, requirements-test.txt) is the "
                  "independent Caffe reader for these tests")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("this OpenCV build has no Caffe importer (cv2.dnn.readNetFromCaffe)",
                allow_module_level=True)

# Every block kind: projection and identity blocks, the stride-2 res3a,
# dilation 2 (res4) and 4 (res5), and the full ASPP head.
PARITY_CONFIG = ModelConfig(blocks=(1, 2, 2, 1), base_depth=8, aspp_rates=(6, 12, 18, 24))
PARITY_CLASSES = 5
# Relative error of the logits. Measured: 1.5e-6 to 1.6e-6 on PARITY_CONFIG
# at the three sizes and from the V1 file, 2.8e-6 on the full ResNet-101,
# whose 101 layers and wider sums leave it less margin under the README's 4e-6.
TOLERANCE = 4e-6
FULL_TOLERANCE = 1e-5


def relative_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def random_input(height, width, seed=0):
    """BGR minus mean, as the network sees a photo."""
    rng = np.random.RandomState(seed)
    return (rng.uniform(0, 255, (1, height, width, 3)) - constants.IMG_MEAN).astype(np.float32)


class Models(object):
    """Caffe files for one random network and our network on the converted weights."""

    def __init__(self, directory, config, num_classes, with_v1=True):
        self.model, self.prototxt, _ = make_caffe_model(
            directory, config=config, num_classes=num_classes)
        if with_v1:
            self.v1_model, _, _ = make_caffe_model(
                directory, config=config, num_classes=num_classes, legacy=True,
                packed=False, name="model_v1")
        npz = str(directory / "converted.npz")
        caffe_convert.convert_caffemodel(self.model, npz, prototxt=self.prototxt, config=config)
        self.graph, self.net = caffe_convert.build_network(num_classes, config)
        self.session = tf.Session(graph=self.graph)
        with self.graph.as_default():
            checkpoints.restore(self.session, npz, self.net)

    def tf_logits(self, images):
        return self.session.run(self.net.layers[constants.CLASSIFIER_PREFIX],
                                {self.net.inputs["data"]: images})

    def opencv_logits(self, images, model=None):
        net = cv2.dnn.readNetFromCaffe(self.prototxt, model or self.model)
        net.setInput(images.transpose(0, 3, 1, 2))
        return net.forward(constants.CLASSIFIER_PREFIX).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    models = Models(tmp_path_factory.mktemp("parity"), PARITY_CONFIG, PARITY_CLASSES)
    yield models
    models.session.close()


@pytest.mark.parametrize("height, width, logit_size", [
    (321, 321, (41, 41)), (320, 480, (41, 61)), (375, 500, (48, 63))])
def test_logits_match_opencv(models, height, width, logit_size):
    images = random_input(height, width)
    ours = models.tf_logits(images)
    reference = models.opencv_logits(images)
    assert ours.shape == reference.shape == (1,) + logit_size + (PARITY_CLASSES,)
    assert relative_error(ours, reference) < TOLERANCE


def test_v1_caffemodel_matches_opencv(models):
    """OpenCV upgrades V1 files as Caffe does and takes the layer types from
    the (new-format) prototxt: a V1 prototxt cannot express BatchNorm/Scale,
    but the V1 .caffemodel's untyped BN/Scale blobs are still matched by name."""
    images = random_input(321, 321, seed=1)
    reference = models.opencv_logits(images, models.v1_model)
    assert relative_error(models.tf_logits(images), reference) < TOLERANCE


@pytest.mark.slow
def test_full_resnet101_matches_opencv(tmp_path):
    models = Models(tmp_path, ModelConfig(), constants.NUM_CLASSES, with_v1=False)
    try:
        images = random_input(321, 321)
        ours = models.tf_logits(images)
        reference = models.opencv_logits(images)
    finally:
        models.session.close()
    assert ours.shape == (1, 41, 41, constants.NUM_CLASSES)
    assert relative_error(ours, reference) < FULL_TOLERANCE
