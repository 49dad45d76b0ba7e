"""The inference loop inference.py runs: photos in, masks (and raw labels, overlays) out.

Inputs are files, directories (the images directly inside) or glob
patterns. Photos are turned upright by their EXIF orientation, as viewers
show them, so masks and overlays line up with the photo. Inputs are never
overwritten, and neither is another input's output of the same run. A
missing or unreadable input is reported by name and the others are still
processed. With the CRF, a pool of worker processes refines earlier photos
while the network runs on the next ones.
"""
import glob
import logging
import os
import time

import numpy as np
from PIL import Image

from deeplab_resnet import files
from deeplab_resnet.progress import Progress
from deeplab_resnet.crf.pool import CrfPool
from deeplab_resnet.data.reader import load_image
from deeplab_resnet.evaluation.predict import Segmenter
from deeplab_resnet.images import IMAGE_EXTENSIONS, colour_mask, label_dtype_for, overlay

log = logging.getLogger(__name__)

# What to do about a photo that cannot be read.
INPUT_FIX = "Replace the file, or leave it out of the inputs."

# What inference.py writes; a directory listing skips these so that a second
# run into the same directory does not segment its own masks.
OUTPUT_SUFFIXES = ("_mask.png", "_label.png", "_overlay.png", "_overlay.jpg")
# Class ids a palette PNG (--save-raw's <name>_label.png) can hold: 0..255.
MAX_PALETTE_CLASSES = 256
# Memory one photo needs on ResNet-101 (one scale, no flip) beyond the
# process's ~0.8 GiB of TensorFlow and weights, per input pixel: measured
# 303 at 500x500 and 313 at 1000x1000 (VmHWM of a fresh process, float32
# feed included; TensorFlow 2.21 CPU, AMD EPYC, 2 cores, 2026-12-07, at
# commit 392edba). The tiny test network measured 250.
RESNET101_BYTES_PER_PIXEL = 313
# A photo whose estimate exceeds this is named in a warning (no --max-size).
LARGE_IMAGE_BYTES = 4 * 2 ** 30
# The --max-size the warning suggests.
SUGGESTED_MAX_SIZE = 2000


def _is_listed_image(path):
    name = os.path.basename(path).lower()
    return (os.path.isfile(path) and name.endswith(IMAGE_EXTENSIONS)
            and not name.endswith(OUTPUT_SUFFIXES))


def expand_inputs(specs):
    """Image paths from command-line inputs: files, directories or globs.

    A directory contributes the image files directly inside it, a glob the
    image files it matches (both sorted, both skipping earlier outputs such
    as ``x_mask.png``); a file named explicitly is always taken, whatever its
    extension, so that a bad file is reported rather than silently skipped.

    Args:
      specs: the positional arguments.
    Returns:
      (paths, problems): paths in order without duplicates, and one message
      per input that gave nothing (missing file, empty directory, glob
      without matches).
    """
    paths, problems, seen = [], [], set()
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(p for p in (os.path.join(spec, n) for n in os.listdir(spec))
                           if _is_listed_image(p))
            if not found:
                problems.append("Directory %s holds no images (%s)."
                                % (spec, ", ".join(IMAGE_EXTENSIONS)))
        elif os.path.exists(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec) if _is_listed_image(p))
            if not found:
                problems.append("Pattern %s matches no images." % spec)
        else:
            found = []
            problems.append("Input %s does not exist." % spec)
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths, problems


def planned_outputs(save_dir, path, save_raw=False, overlay_format=None):
    """{kind: output path} for one input: 'mask', and 'label', 'overlay' if asked."""
    outputs = {"mask": files.output_path(save_dir, path, "_mask.png")}
    if save_raw:
        outputs["label"] = files.output_path(save_dir, path, "_label.png")
    if overlay_format:
        outputs["overlay"] = files.output_path(save_dir, path,
                                               "_overlay." + overlay_format)
    return outputs


def check_outputs(outputs, path, inputs, written):
    """Refuse to overwrite an input, or another input's output of this run."""
    for target in outputs.values():
        key = os.path.realpath(target)
        if key in inputs:
            raise IOError("Not segmenting %s: its output %s would overwrite an "
                          "input image. Choose another --save-dir." % (path, target))
        if key in written:
            raise IOError("Not segmenting %s: its output %s was already written "
                          "for %s (same name). Rename one of them or segment "
                          "them separately." % (path, target, written[key]))


def fit_within(image, max_size):
    """``image`` (uint8 [H, W, 3]) scaled down so that its longer side is at most
    ``max_size`` (None or 0: as it is)."""
    height, width = image.shape[:2]
    if not max_size or max(height, width) <= max_size:
        return image
    scale = max_size / float(max(height, width))
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def labels_at(label, shape):
    """``label`` [h, w] at ``shape`` (H, W) by nearest neighbour: ids are never blended."""
    if label.shape == tuple(shape):
        return label
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * label.shape[0] / shape[0]).astype(int),
                      label.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * label.shape[1] / shape[1]).astype(int),
                      label.shape[1] - 1)
    return label[rows[:, None], cols]


def memory_warning(path, image):
    """A warning for a photo too large to segment comfortably, or None.

    The estimate is ResNet-101's (``RESNET101_BYTES_PER_PIXEL``), whatever
    the network: what the published model needs for a photo of this size.
    """
    height, width = image.shape[:2]
    need = height * width * RESNET101_BYTES_PER_PIXEL
    if need <= LARGE_IMAGE_BYTES:
        return None
    return ("%s is %dx%d (%.1f megapixels): on ResNet-101 segmenting it needs about "
            "%.1f GiB beyond the model's own, and minutes of CPU. Pass --max-size %d to "
            "segment it at most %d pixels on its longer side (the outputs keep the "
            "photo's size)." % (path, width, height, height * width / 1e6,
                                need / 2.0 ** 30, SUGGESTED_MAX_SIZE, SUGGESTED_MAX_SIZE))


def write_outputs(image, label, outputs, overlay_alpha=0.5):
    """Write one photo's mask (and raw label, overlay)."""
    files.save_image(colour_mask(label), outputs["mask"])
    if "label" in outputs:
        files.save_label(label, outputs["label"])
    if "overlay" in outputs:
        files.save_image(overlay(image, label, overlay_alpha), outputs["overlay"],
                         quality=95)


def segment_photos(inputs, weights, *, num_classes, save_dir, save_raw=False,
                   overlay_format=None, overlay_alpha=0.5, predict=None, crf=None,
                   intra_op_threads=0, inter_op_threads=0, max_size=None):
    """Segment every photo the inputs name and write its outputs to ``save_dir``.

    Args:
      inputs: files, directories or glob patterns (``expand_inputs``).
      weights: .npz, checkpoint prefix or directory.
      save_raw: also write ``<name>_label.png`` (palette PNG of class ids).
      overlay_format: 'png' or 'jpg' to also write ``<name>_overlay.<fmt>``.
      overlay_alpha: weight of the mask in the overlay, 0..1.
      predict: ``predict.PredictConfig`` (scales, flip, bf16), or None.
      crf: ``crf.CrfStage`` (the CRF, its backend and workers), or None.
      max_size: segment a photo whose longer side exceeds this many pixels
        scaled down to it (``fit_within``); its outputs are scaled back to
        the photo's size (``labels_at``). None: every photo at full size,
        with a warning for a very large one (``memory_warning``).
    Returns:
      (segmented, failures): how many inputs were segmented, and one message
      per input that failed (already logged).
    Raises:
      IOError, ValueError: errors that stop everything (no images at all,
        missing weights, a bad argument), before the first photo.
    """
    _check_options(num_classes, save_raw, overlay_alpha, max_size)
    paths, failures = expand_inputs(inputs)
    for problem in failures:
        log.error("error: %s", problem)
    if not paths:
        raise IOError("No images to segment in %s." % ", ".join(inputs))
    photos = _Photos(paths, failures, save_dir, save_raw, overlay_format, overlay_alpha,
                     max_size)
    # Before the graph: CRF workers start while it is built.
    crf_pool = CrfPool.for_stage(crf)
    segmenter = None
    try:
        segmenter = Segmenter(weights, num_classes, predict=predict,
                              intra_op_threads=intra_op_threads,
                              inter_op_threads=inter_op_threads)
        os.makedirs(save_dir, exist_ok=True)
        photos.progress.update(0)
        for i, path in enumerate(paths, 1):
            for job, label in photos.segment(i, path, segmenter, crf_pool):
                photos.finish(job, label)
        for job, label in crf_pool.drain() if crf_pool is not None else ():
            photos.finish(job, label)
    finally:
        if crf_pool is not None:
            crf_pool.close()
        if segmenter is not None:
            segmenter.close()
    return len(set(photos.written.values())), failures


def _check_options(num_classes, save_raw, overlay_alpha, max_size):
    """Refuse, before any photo, options that would fail on every one."""
    if max_size is not None and max_size < 1:
        raise ValueError("--max-size must be at least 1 pixel, got %r." % max_size)
    if not 0.0 <= overlay_alpha <= 1.0:
        raise ValueError("--overlay-alpha must be in 0..1, got %r." % overlay_alpha)
    if save_raw and num_classes > MAX_PALETTE_CLASSES:
        raise ValueError("--save-raw writes palette PNGs, which hold class ids below "
                         "%d; this model has %d classes. Leave out --save-raw."
                         % (MAX_PALETTE_CLASSES, num_classes))


class _Photos(object):
    """The photos of one run: their outputs, the failures and the progress line.

    Output paths are claimed (``written``: output path -> input) before a
    photo is segmented, so that a later input of the same name is refused
    even while the CRF of this one is queued.
    """

    def __init__(self, paths, failures, save_dir, save_raw, overlay_format,
                 overlay_alpha, max_size=None):
        self.total = len(paths)
        self.max_size = max_size
        self.failures = failures
        self.save_dir, self.save_raw = save_dir, save_raw
        self.overlay_format, self.overlay_alpha = overlay_format, overlay_alpha
        self.input_keys = {os.path.realpath(p) for p in paths}
        self.written = {}
        self.progress = Progress(self.total, unit="image")

    def segment(self, i, path, segmenter, crf_pool):
        """Start photo ``i``; return the jobs finished meanwhile, as (job, label)."""
        start = time.time()
        outputs = planned_outputs(self.save_dir, path, self.save_raw, self.overlay_format)
        try:
            check_outputs(outputs, path, self.input_keys, self.written)
        except IOError as err:
            self.fail(err)
            return []
        self.written.update((os.path.realpath(t), path) for t in outputs.values())
        try:
            image = load_image(path, orient=True, fix=INPUT_FIX)
            warning = None if self.max_size else memory_warning(path, image)
            if warning:
                log.warning("%s", warning)
            work = fit_within(image, self.max_size)
            job = (i, path, image, outputs, start)
            if crf_pool is None:
                return [(job, segmenter.segment(work))]
            return crf_pool.submit(work, segmenter.probabilities(work), path, tag=job)
        except (IOError, OSError, ValueError) as err:
            self.fail(err, outputs.values())
            return []

    def fail(self, err, outputs=()):
        self.failures.append(str(err))
        log.error("error: %s", err)
        for target in outputs:
            del self.written[os.path.realpath(target)]

    def finish(self, job, label):
        """Write a segmented photo's outputs and log its progress line."""
        i, path, image, outputs, start = job
        try:
            write_outputs(image, labels_at(label_dtype_for(label), image.shape[:2]),
                          outputs, self.overlay_alpha)
        except (IOError, OSError, ValueError) as err:
            self.fail(err, outputs.values())
            return
        log.info("image %d/%d %s %dx%d %.2f s %s", i, self.total, path,
                 image.shape[1], image.shape[0], time.time() - start,
                 self.progress.line(i))
