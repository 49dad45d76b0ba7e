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
                   crf_workers=0, crf_backend="pydensecrf", intra_op_threads=0,
                   inter_op_threads=0):
    """Segment every photo the inputs name and write its outputs to ``save_dir``.

    Args:
      inputs: files, directories or glob patterns (``expand_inputs``).
      weights: .npz, checkpoint prefix or directory.
      save_raw: also write ``<name>_label.png`` (palette PNG of class ids).
      overlay_format: 'png' or 'jpg' to also write ``<name>_overlay.<fmt>``.
      overlay_alpha: weight of the mask in the overlay, 0..1.
      predict: ``predict.PredictConfig`` (scales, flip, bf16), or None.
      crf: ``crf.CrfConfig`` or None; crf_workers: processes running it;
        crf_backend: 'pydensecrf' or 'tensorflow' (``crf.dense_crf``).
    Returns:
      (segmented, failures): how many inputs were segmented, and one message
      per input that failed (already logged).
    Raises:
      IOError, ValueError: errors that stop everything (no images at all,
        missing weights, a bad argument), before the first photo.
    """
    _check_options(num_classes, save_raw, overlay_alpha)
    paths, failures = expand_inputs(inputs)
    for problem in failures:
        log.error("error: %s", problem)
    if not paths:
        raise IOError("No images to segment in %s." % ", ".join(inputs))
    photos = _Photos(paths, failures, save_dir, save_raw, overlay_format, overlay_alpha)
    # Before the graph: CRF workers start while it is built.
    crf_pool = (CrfPool(crf, crf_workers, backend=crf_backend) if crf is not None
                else None)
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


def _check_options(num_classes, save_raw, overlay_alpha):
    """Refuse, before any photo, options that would fail on every one."""
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
                 overlay_alpha):
        self.total = len(paths)
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
            job = (i, path, image, outputs, start)
            if crf_pool is None:
                return [(job, segmenter.segment(image))]
            return crf_pool.submit(image, segmenter.probabilities(image), path, tag=job)
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
            write_outputs(image, label_dtype_for(label), outputs, self.overlay_alpha)
        except (IOError, OSError, ValueError) as err:
            self.fail(err, outputs.values())
            return
        log.info("image %d/%d %s %dx%d %.2f s %s", i, self.total, path,
                 image.shape[1], image.shape[0], time.time() - start,
                 self.progress.line(i))
