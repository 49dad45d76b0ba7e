"""A synthetic dataset in VOC layout, so the whole pipeline runs without downloads.

PASCAL VOC cannot be fetched here, yet training, evaluation and inference
should be demonstrable end to end in minutes on a CPU. Each image shows one
to three coloured shapes (disc, box, triangle, ring) on a textured
background, labelled like VOC: palette PNGs of class ids with a 255 "void"
band along every object outline.

The task is made learnable by a small network from local evidence: each
class has its own hue band at high saturation, while backgrounds (noise,
gradients, stripes, checkers) stay nearly grey. It is still segmentation:
shapes overlap, get cut by the image border, vary in size and shading, and a
ring's hole is background.

Every image is drawn from its own random generator seeded by (seed, split,
index), so a dataset is reproducible and val does not change with
``num_train``.
"""
import collections
import colorsys
import json
import logging
import os

import numpy as np
import scipy.ndimage
from PIL import Image

from deeplab_resnet.progress import logged_progress
from deeplab_resnet.constants import IGNORE_LABEL
from deeplab_resnet.data.lists import IMAGE_DIR, LABEL_DIR, write_list
from deeplab_resnet.files import save_image, save_label, write_text

log = logging.getLogger(__name__)

DEMO_CLASSES = ("background", "disc", "box", "triangle", "ring")
# Hue band (degrees) of each object class: red, green, blue, yellow. The
# gaps between bands keep classes apart after JPEG's colour subsampling.
CLASS_HUES = {1: (-12.0, 12.0), 2: (100.0, 140.0), 3: (205.0, 245.0), 4: (45.0, 65.0)}
OBJECT_SATURATION = (0.6, 1.0)
OBJECT_VALUE = (0.55, 1.0)
# Backgrounds stay this close to grey, far from any object colour.
BACKGROUND_MAX_TINT = 14
MIN_SIDE = 40  # smaller images leave no room for learnable objects
JPEG_QUALITY = 90
MANIFEST = "demo.json"
# Bump when the drawing changes, so an old dataset is not taken for current.
GENERATOR_VERSION = 1
SPLITS = ("train", "val")

DemoConfig = collections.namedtuple(
    "DemoConfig", ["num_train", "num_val", "seed", "min_size", "max_size"])


def check_config(config):
    """Raise ValueError for counts or sizes the generator cannot honour."""
    if config.num_train < 1 or config.num_val < 1:
        raise ValueError("--num-train and --num-val must be at least 1; got %d and %d."
                         % (config.num_train, config.num_val))
    if not MIN_SIDE <= config.min_size <= config.max_size:
        raise ValueError("Need %d <= --min-size <= --max-size; got %d and %d."
                         % (MIN_SIDE, config.min_size, config.max_size))


def image_name(split, index):
    return "%s_%05d" % (split, index)


# ------------------------------------------------------------------ drawing
def _grid(height, width):
    ys, xs = np.mgrid[0:height, 0:width]
    return ys.astype(np.float32), xs.astype(np.float32)


def _grey(rng, low=35, high=220):
    """A colour within BACKGROUND_MAX_TINT of a random grey: float RGB [3]."""
    tint = rng.uniform(-BACKGROUND_MAX_TINT, BACKGROUND_MAX_TINT, 3) / 2
    return rng.uniform(low, high) + tint


def draw_background(rng, height, width):
    """A nearly grey texture: float32 RGB [H, W, 3] in 0..255."""
    ys, xs = _grid(height, width)
    kind = rng.integers(4)
    a, b = _grey(rng), _grey(rng)
    if kind == 0:  # smooth blotchy noise
        noise = rng.normal(size=(height, width)).astype(np.float32)
        noise = scipy.ndimage.gaussian_filter(noise, rng.uniform(1.0, 4.0))
        t = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
    elif kind == 1:  # linear gradient
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xs + np.sin(angle) * ys
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == 2:  # stripes, sharp or soft
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 16)
        phase = np.cos(angle) * xs + np.sin(angle) * ys
        t = 0.5 + 0.5 * np.sin(2 * np.pi * phase / period)
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
    else:  # checkerboard
        cell = rng.integers(4, 14)
        t = ((ys // cell + xs // cell) % 2).astype(np.float32)
    image = a + (b - a) * t[..., None]
    image += rng.normal(0, rng.uniform(2, 10), (height, width, 1))
    return image.astype(np.float32)


def object_colour(rng, cls):
    """A random RGB colour (float [3], 0..255) in class ``cls``'s hue band."""
    low, high = CLASS_HUES[cls]
    hue = (rng.uniform(low, high) % 360) / 360
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(*OBJECT_SATURATION),
                              rng.uniform(*OBJECT_VALUE))
    return np.array(rgb, dtype=np.float32) * 255


def shape_mask(rng, cls, height, width):
    """Boolean [H, W] mask of one object of class ``cls``, centred inside the image."""
    ys, xs = _grid(height, width)
    side = min(height, width)
    radius = max(12.0, rng.uniform(0.18, 0.38) * side)
    margin = 0.6 * radius
    cy = rng.uniform(margin, height - margin)
    cx = rng.uniform(margin, width - margin)
    dy, dx = ys - cy, xs - cx
    if cls == 1:  # disc: a circle, slightly squashed at most
        aspect = rng.uniform(0.85, 1.15)
        return (dy * aspect) ** 2 + (dx / aspect) ** 2 <= radius ** 2
    if cls == 2:  # box: a rotated rectangle
        angle = rng.uniform(0, np.pi / 2)
        u = np.cos(angle) * dx + np.sin(angle) * dy
        v = -np.sin(angle) * dx + np.cos(angle) * dy
        half_u, half_v = radius * rng.uniform(0.6, 1.0, 2)
        return (np.abs(u) <= half_u) & (np.abs(v) <= half_v)
    if cls == 3:  # triangle: three corners roughly 120 degrees apart
        radius *= 1.3  # as much area as the other shapes, about
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.radians([0, 120, 240] + rng.uniform(-20, 20, 3))
        corners = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
        inside = np.ones((height, width), bool)
        for i in range(3):
            (x0, y0), (x1, y1) = corners[i], corners[(i + 1) % 3]
            # Counter-clockwise corners: the interior is left of every edge.
            inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
        return inside
    # ring: an annulus at least 7 px thick, with background in its hole
    inner = min(radius * rng.uniform(0.35, 0.6), radius - 7)
    distance = np.hypot(dy, dx)
    return (distance <= radius) & (distance >= inner)


def draw_sample(rng, min_size, max_size):
    """One image and its label.

    Returns:
      (image uint8 RGB [H, W, 3], label uint8 [H, W]) with label values in
      0..len(DEMO_CLASSES)-1 and IGNORE_LABEL along object outlines.
    """
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    image = draw_background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    ys, xs = _grid(height, width)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, len(DEMO_CLASSES)))
        mask = shape_mask(rng, cls, height, width)
        # Lit from one side, with a little grain, like a real surface.
        angle = rng.uniform(0, 2 * np.pi)
        along = np.cos(angle) * xs + np.sin(angle) * ys
        along = (along - along[mask].mean()) / max(height, width)
        shade = 1 + rng.uniform(0, 0.5) * along
        surface = object_colour(rng, cls) * shade[..., None]
        surface += rng.normal(0, 4, (height, width, 1))
        image[mask] = surface[mask]
        label[mask] = cls
    image += rng.normal(0, 2, image.shape)
    # VOC marks a band along object outlines as void; so do we, where the
    # 3x3 neighbourhood holds two classes (about one pixel on each side).
    outline = (scipy.ndimage.maximum_filter(label, 3, mode="nearest")
               != scipy.ndimage.minimum_filter(label, 3, mode="nearest"))
    label[outline] = IGNORE_LABEL
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


# ------------------------------------------------------------------ writing
def _manifest(config):
    return json.dumps(dict(config._asdict(), classes=list(DEMO_CLASSES),
                           generator_version=GENERATOR_VERSION),
                      indent=2, sort_keys=True) + "\n"


def _outputs(output_dir, config):
    names = {split: [image_name(split, i) for i in range(count)]
             for split, count in zip(SPLITS, (config.num_train, config.num_val))}
    files = [os.path.join(output_dir, f) for f in
             ("train.txt", "val.txt", "classes.txt", MANIFEST)]
    for split_names in names.values():
        for name in split_names:
            files.append(os.path.join(output_dir, IMAGE_DIR, name + ".jpg"))
            files.append(os.path.join(output_dir, LABEL_DIR, name + ".png"))
    return names, files


def _read(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read()


def write_demo_dataset(output_dir, config, force=False, progress_interval=5.0):
    """Write the demo dataset to ``output_dir`` (see the module docstring).

    A manifest (``demo.json``) is written last. If ``output_dir`` already
    holds this very dataset, nothing is rewritten; if it holds anything
    else, nothing is touched unless ``force``.

    Returns:
      Number of images written (0 when the dataset was already there).
    Raises:
      ValueError: bad ``config``; FileExistsError: ``output_dir`` holds
      another dataset and ``force`` is off.
    """
    check_config(config)
    names, files = _outputs(output_dir, config)
    manifest = _manifest(config)
    same = _read(os.path.join(output_dir, MANIFEST)) == manifest
    if same and all(os.path.isfile(f) for f in files):
        log.info("%s already holds this demo dataset; nothing to do.", output_dir)
        return 0
    if not same and not force:
        existing = [f for f in files if os.path.exists(f)]
        if existing:
            raise FileExistsError(
                "%s already holds other data (e.g. %s). Choose another "
                "--output-dir, or pass --force to write the demo dataset over it."
                % (output_dir, existing[0]))
    # Until the new manifest is written, the directory is not a finished
    # dataset, even if an interrupted run is retried with the old settings.
    if os.path.exists(os.path.join(output_dir, MANIFEST)):
        os.remove(os.path.join(output_dir, MANIFEST))
    for sub in (IMAGE_DIR, LABEL_DIR):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    jobs = [(split, i, name) for split in SPLITS for i, name in enumerate(names[split])]
    for split, index, name in logged_progress(jobs, "images", log, unit="image",
                                              interval=progress_interval):
        rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
        image, label = draw_sample(rng, config.min_size, config.max_size)
        save_image(Image.fromarray(image),
                   os.path.join(output_dir, IMAGE_DIR, name + ".jpg"),
                   quality=JPEG_QUALITY)
        save_label(label, os.path.join(output_dir, LABEL_DIR, name + ".png"))
    for split in SPLITS:
        write_list(os.path.join(output_dir, split + ".txt"), names[split], force=True)
    write_text(os.path.join(output_dir, "classes.txt"),
               "".join(c + "\n" for c in DEMO_CLASSES), force=True)
    write_text(os.path.join(output_dir, MANIFEST), manifest, force=True)
    return len(jobs)
