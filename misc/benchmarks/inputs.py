"""The images the benchmark runs on: generated photo-like pairs, or a VOC sample given by flag.

Nothing outside the repository is needed: without --voc-sample every image
is generated (``synthetic_pair``), so the benchmark runs on a plain clone.
"""
import os

import numpy as np
import scipy.ndimage
from PIL import Image

from deeplab_resnet import files, testing
from deeplab_resnet.constants import IGNORE_LABEL
from deeplab_resnet.data import lists


def synthetic_pair(rng, size, num_classes):
    """A photo-like RGB image and a label of a few rectangles with VOC's 255
    border. Like a photo, it is shading and texture mostly shared by the
    three channels, a colour per object, and grain: its JPEG is as large as
    VOC's and the CRF (whose colour lattice grows with the colours present)
    takes as long as on the VOC sample photo, where plain noise takes twice
    as long and flat colours a third."""
    height, width = size
    shading = scipy.ndimage.zoom(rng.normal(size=(height // 16 + 1, width // 16 + 1)),
                                 16, order=3)[:height, :width, None]
    texture = scipy.ndimage.gaussian_filter(rng.normal(size=(height, width, 1)), 1.0)
    tint = scipy.ndimage.gaussian_filter(rng.normal(size=(height, width, 3)), (4, 4, 0))
    image = rng.uniform(60, 190, 3) + 70 * shading + 90 * texture + 80 * tint
    label = np.zeros(size, np.uint8)
    # Objects at least 20 pixels a side (a quarter of a small image's side).
    least_h, least_w = min(20, height // 4), min(20, width // 4)
    for _ in range(3):
        y, x = rng.randint(0, height // 2), rng.randint(0, width // 2)
        h, w = rng.randint(least_h, height // 2), rng.randint(least_w, width // 2)
        label[y:y + h, x:x + w] = rng.randint(1, num_classes)
        image[y:y + h, x:x + w] += rng.uniform(-90, 90, 3)
    label[0, :] = label[-1, :] = IGNORE_LABEL
    image += rng.normal(0, 2, (height, width, 1))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def write_eval_data(directory, num_images, size, num_classes, seed=0):
    """``num_images`` JPEG/PNG pairs in VOC layout and their list file."""
    rng = np.random.RandomState(seed)
    names = ["bench_%03d" % i for i in range(num_images)]
    for sub in (lists.IMAGE_DIR, lists.LABEL_DIR):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    for name in names:
        image, label = synthetic_pair(rng, size, num_classes)
        files.save_image(image, os.path.join(directory, lists.IMAGE_DIR, name + ".jpg"),
                         quality=90)
        files.save_label(label, os.path.join(directory, lists.LABEL_DIR, name + ".png"))
    list_path = os.path.join(directory, "bench.txt")
    files.write_bytes(list_path, lists.list_text(names), mode="w")
    return list_path


def voc_sample_pair(directory):
    """The path prefix of the first NAME.jpg in ``directory`` (in name order)
    with its label NAME.png beside it.

    Raises:
      IOError: no such pair there.
    """
    names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    for name in names:
        stem, ext = os.path.splitext(name)
        prefix = os.path.join(directory, stem)
        if ext.lower() == ".jpg" and os.path.exists(prefix + ".png"):
            return prefix
    raise IOError("--voc-sample %s holds no NAME.jpg with its label NAME.png beside it. "
                  "Point it at such a directory (e.g. a VOC image and its "
                  "SegmentationClass PNG), or leave it out to use a generated "
                  "photo-like image." % directory)


def crf_inputs(size, num_classes, voc_sample=None):
    """(image, probs, source): an RGB photo at ``size``, probabilities like a
    network's (``testing.network_like_probs`` of its label), and which image
    it is.

    With ``voc_sample`` (a directory, see ``voc_sample_pair``), its photo
    turned to the orientation of ``size`` and resized (bicubic; nearest for
    the label); else ``synthetic_pair``'s scene of coloured rectangles on a
    shaded, textured, grainy background.
    """
    height, width = size
    if voc_sample is None:
        image, label = synthetic_pair(np.random.RandomState(0), size, num_classes)
        return (image, testing.network_like_probs(label, num_classes),
                "a generated photo-like scene (no --voc-sample)")
    prefix = voc_sample_pair(voc_sample)
    photo = Image.open(prefix + ".jpg").convert("RGB")
    label = Image.open(prefix + ".png")
    source = "VOC sample %s, resized" % prefix
    if (photo.height > photo.width) != (height > width):
        photo, label = (im.transpose(Image.Transpose.ROTATE_90) for im in (photo, label))
        source = source.replace("resized", "turned and resized")
    image = np.asarray(photo.resize((width, height), Image.BICUBIC))
    label = np.asarray(label.resize((width, height), Image.NEAREST))
    return image, testing.network_like_probs(label, num_classes), source
