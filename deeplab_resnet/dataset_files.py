"""Writing VOC-layout datasets safely: label PNGs, images and list files.

The dataset tools (``dataset/build_voc_lists.py``, ``dataset/make_demo.py``)
write thousands of files that training later trusts. Every write goes to a
temporary file first and is moved into place with ``os.replace``, so an
interrupted run never leaves a truncated PNG or half a list behind, and a
re-run can simply skip what already exists.

Layout (what ``--data-dir``/``--data-list`` of the scripts expect)::

    <root>/JPEGImages/<name>.jpg
    <root>/SegmentationClassAug/<name>.png   palette PNG, pixel value = class id
    <root>/<list>.txt    lines "/JPEGImages/<name>.jpg /SegmentationClassAug/<name>.png"
"""
import logging
import os
import time

import numpy as np
from PIL import Image

from deeplab_resnet import utils

log = logging.getLogger(__name__)

IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClassAug"


def list_line(name):
    """The list-file line of image ``name`` (no extension), newline included."""
    return "/%s/%s.jpg /%s/%s.png\n" % (IMAGE_DIR, name, LABEL_DIR, name)


def _tmp_path(path):
    directory, base = os.path.split(path)
    return os.path.join(directory, ".%s.tmp%d" % (base, os.getpid()))


def atomic_write(write, path):
    """Call ``write(tmp)`` with a temporary path, then move tmp onto ``path``.

    ``path`` is either untouched or complete; tmp never stays behind.
    """
    tmp = _tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_image(image, path, **save_kwargs):
    """Save a PIL image atomically; the format follows ``path``'s extension.

    ``save_kwargs`` go to ``Image.save`` (e.g. ``quality=90``).
    """
    extension = os.path.splitext(path)[1].lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise ValueError("Cannot tell the image format of %r from its extension."
                         % path)
    atomic_write(lambda tmp: image.save(tmp, format=image_format, **save_kwargs),
                 path)


def label_image(label):
    """Palette-mode ('P') image whose pixel values are the class ids of ``label``.

    The VOC palette only colours the ids for viewing; readers take the
    indices, so ``np.array(Image.open(png))`` gives ``label`` back.

    Args:
      label: uint8-compatible array [H, W] of class ids (255 = ignore).
    Raises:
      ValueError: not a 2-D map of values 0..255.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError("A label map must be 2-D [H, W]; got shape %s."
                         % (label.shape,))
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError("Label values must be 0..255 to fit a palette PNG; got "
                         "%d..%d." % (label.min(), label.max()))
    image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))
    image.putpalette(utils.PALETTE.ravel().tolist())  # 'L' becomes 'P'
    return image


def save_label(label, path):
    """Write ``label`` ([H, W] class ids) as a palette PNG, atomically."""
    save_image(label_image(label), path)


def text_needs_writing(path, text, force=False):
    """Whether ``path`` lacks ``text``; checks up front what ``write_text`` would do.

    Raises:
      FileExistsError: ``path`` holds something else and ``force`` is off.
    """
    if not os.path.isfile(path):
        return True
    with open(path) as f:
        if f.read() == text:
            return False
    if not force:
        raise FileExistsError(
            "%s already exists with other contents. Move it away, choose "
            "another output directory, or pass --force to replace it." % path)
    return True


def write_text(path, text, force=False):
    """Write ``text`` to ``path`` atomically, never clobbering other content.

    Returns:
      True if the file was written, False if it already held ``text``.
    Raises:
      FileExistsError: ``path`` holds something else and ``force`` is off.
    """
    if not text_needs_writing(path, text, force):
        return False

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(write, path)
    return True


def list_text(names):
    """A list file's contents: one ``list_line(name)`` per name."""
    return "".join(list_line(name) for name in names)


def write_list(path, names, force=False):
    """Write a list file atomically. Returns / Raises: as ``write_text``."""
    return write_text(path, list_text(names), force)


def logged_progress(items, what, unit="file", interval=5.0):
    """Yield ``items``, logging ``<what> done/total <rate> ETA`` every ``interval`` s.

    The last item is always reported, so a log shows that the loop finished.
    """
    items = list(items)
    total = len(items)
    progress = utils.Progress(total, unit=unit)
    progress.update(0)
    last_log = time.time()
    for done, item in enumerate(items, 1):
        yield item
        if done == total or time.time() - last_log >= interval:
            log.info("%s %d/%d %s", what, done, total, progress.line(done))
            last_log = time.time()
