"""Small random Caffe models for the conversion tests: a DeepLab-style
.caffemodel and .prototxt written from random weights, and weight comparison."""
import os

import numpy as np

from deeplab_resnet import constants
from deeplab_resnet.caffe import convert as caffe_convert
from deeplab_resnet.caffe import prototxt as caffe_prototxt
from deeplab_resnet.model import ModelConfig
from deeplab_resnet.testing import random_weights

# Trained Caffe BatchNorm layers store statistics times ~1/(1 - 0.999).
SCALE_FACTOR = 999.982
SMALL_CONFIG = ModelConfig(blocks=(1, 1, 2, 1), base_depth=4, aspp_rates=(1, 2))
SMALL_CLASSES = 3


def make_caffe_model(directory, config=SMALL_CONFIG, num_classes=SMALL_CLASSES,
                     legacy=False, packed=True, with_classifier=True, seed=0,
                     name="model"):
    """Write <name>.caffemodel and <name>.prototxt for a random network.

    Returns (caffemodel path, prototxt path, weights in TF layout).
    """
    _, net = caffe_convert.build_network(num_classes, config)
    weights = random_weights(net, seed)
    specs = net.layer_specs
    if not with_classifier:
        specs = [s for s in specs if not s["name"].startswith(constants.CLASSIFIER_PREFIX)]
        weights = {k: v for k, v in weights.items()
                   if not k.startswith(constants.CLASSIFIER_PREFIX)}
    model = os.path.join(str(directory), name + ".caffemodel")
    prototxt = os.path.join(str(directory), name + ".prototxt")
    caffe_convert.write_caffemodel(model, specs, weights, legacy=legacy, packed=packed,
                                   bn_scale_factor=SCALE_FACTOR)
    with open(prototxt, "w") as f:
        f.write(caffe_prototxt.deploy_prototxt(specs))
    return model, prototxt, weights


def load_npz(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def assert_same_weights(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7,
                                   err_msg=key)
