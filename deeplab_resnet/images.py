"""The network's input convention (Caffe's BGR minus mean), its inverse, and label colours.

The reader, prediction and the exported graph all feed the network through
``bgr_minus_mean``, so the rule the Caffe model was trained with is written
once. It is plain indexing and subtraction, so it serves numpy arrays and
TensorFlow tensors alike; numpy only.
"""
import numpy as np

from deeplab_resnet.constants import IMG_MEAN, PALETTE

# Photo files inference.py takes from a directory or the command line.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                    ".webp", ".ppm", ".pgm")


def bgr_minus_mean(rgb):
    """RGB pixels (float32 array or tensor [..., 3]) -> BGR minus ``IMG_MEAN``."""
    return rgb[..., ::-1] - IMG_MEAN


def preprocess(image):
    """RGB uint8 [H, W, 3] -> the network's input [1, H, W, 3], float32."""
    return bgr_minus_mean(np.asarray(image, dtype=np.float32))[None]


def inv_preprocess(images, num_images=None):
    """Undo mean subtraction and BGR order for display: uint8 RGB [N, H, W, 3]."""
    images = np.asarray(images, dtype=np.float32)
    if num_images is not None:
        images = images[:num_images]
    return np.clip(images + IMG_MEAN, 0, 255)[..., ::-1].astype(np.uint8)


def decode_labels(labels, num_images=None):
    """Colour label maps with the VOC palette by indexing, not pixel loops.

    Args:
      labels: int array [N, H, W] or [N, H, W, 1] of class ids (255 = ignore).
      num_images: colour only the first ``num_images``.
    Returns:
      uint8 array [N, H, W, 3].
    """
    labels = np.asarray(labels)
    if labels.ndim == 4:
        labels = labels[..., 0]
    if num_images is not None:
        labels = labels[:num_images]
    return PALETTE[labels.astype(np.uint8)]


def colour_mask(label):
    """VOC colours of one label map [H, W]: uint8 RGB [H, W, 3]."""
    return decode_labels(np.asarray(label)[None])[0]


def overlay(image, label, alpha=0.5):
    """The photo blended with its colour mask: (1 - alpha) image + alpha mask.

    Background (class 0, black in the VOC palette) is left as the photo:
    blending it would only darken everything that was not segmented.

    Args:
      image: uint8 RGB [H, W, 3]; label: [H, W] class ids.
    Returns:
      uint8 RGB [H, W, 3].
    """
    image = np.asarray(image, np.float32)
    blended = (1.0 - alpha) * image + alpha * colour_mask(label).astype(np.float32)
    blended = np.where((np.asarray(label) == 0)[..., None], image, blended)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def label_dtype_for(pred):
    """Class ids as uint8 when they fit 8 bits (as in label PNGs), else int32."""
    pred = np.asarray(pred)
    return pred.astype(np.uint8 if pred.max(initial=0) < 256 else np.int32)
