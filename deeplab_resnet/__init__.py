"""DeepLab-v2 (ResNet-101 + ASPP) for semantic segmentation, in TF1-style graph mode.

Importing the package switches TensorFlow to graph mode once, here, so that
every script and test shares the same tf.compat.v1 behaviour.
"""
import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) hides
# the progress lines users care about; they can still opt back in.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow.compat.v1 as tf  # noqa: E402

tf.disable_v2_behavior()

from deeplab_resnet.model import DeepLabResNetModel, ModelConfig  # noqa: E402,F401
from deeplab_resnet.network import Network  # noqa: E402,F401
