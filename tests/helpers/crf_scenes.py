"""A synthetic CRF scene: flat colour regions, their labels and a noisy softmax."""
import numpy as np
from PIL import Image


def synthetic_scene(seed=0, height=60, width=80):
    """Three flat colour regions, their labels, and a noisy softmax.

    The 'network' favours the right class by a small margin that the noise
    often outweighs, so argmax is wrong on a large share of pixels.
    """
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:height, :width]
    label = np.zeros((height, width), np.int64)
    label[(yy - 30) ** 2 + (xx - 45) ** 2 < 18 ** 2] = 1
    label[:, :15] = 2
    colours = np.array([[40, 60, 200], [220, 200, 30], [30, 160, 40]])
    image = np.clip(colours[label] + rng.normal(0, 8, (height, width, 3)), 0, 255)
    # Read-only and uint8 like an image decoded by PIL.
    image = np.asarray(Image.fromarray(image.astype(np.uint8)))
    logits = rng.normal(0, 1.0, (height, width, 3))
    logits[yy, xx, label] += 0.8
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return image, label, probs.astype(np.float32)
