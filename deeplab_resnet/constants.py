"""The numbers every part shares: Caffe's input mean, VOC's classes and palette, the ignore label.

numpy only, so that label tools and CRF workers import it without TensorFlow.
"""
import numpy as np

# Per-channel ImageNet mean in BGR order, as subtracted by the Caffe models.
IMG_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor")
NUM_CLASSES = len(VOC_CLASSES)
IGNORE_LABEL = 255
# The layer whose weights depend on the number of classes.
CLASSIFIER_PREFIX = "fc1_voc12"
# Written next to checkpoints so that a restore rebuilds the same network.
MODEL_CONFIG_FILE = "model_config.json"


def make_palette(num_colours=256):
    """PASCAL VOC's colour map: class i's colour spreads i's bits over RGB.

    The first 21 entries are VOC's class colours; the rule goes on to give
    distinct colours for all 256 label values, so any class count works.
    """
    palette = np.zeros((num_colours, 3), dtype=np.uint8)
    for i in range(num_colours):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


PALETTE = make_palette()
VOC_PALETTE = PALETTE[:NUM_CLASSES]
