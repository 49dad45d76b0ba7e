"""Safe file writes: every file the project writes appears complete or not at all.

Each write goes to a temporary file beside its target and is moved into
place with ``os.replace``, so an interrupted run never leaves a truncated
PNG, list, weight file or report behind, and a re-run can skip what already
exists. numpy and PIL only.
"""
import json
import os
import re
import shutil

import numpy as np
from PIL import Image

from deeplab_resnet.constants import PALETTE

# Temporary files are hidden and carry this marker and the writer's pid.
TMP_MARKER = ".tmp"


def _tmp_path(path):
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, ".%s%s%d" % (base, TMP_MARKER, os.getpid()))


def is_temporary(name):
    """Whether a file name is one of ``atomic_write``'s temporary files."""
    return re.match(r"^\..+%s\d+$" % re.escape(TMP_MARKER), name) is not None


def output_path(directory, source_path, suffix):
    """``directory/<source file name without extension><suffix>``: where a
    prediction for ``source_path`` goes."""
    name = os.path.splitext(os.path.basename(source_path))[0]
    return os.path.join(directory, name + suffix)


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


def write_bytes(path, data, mode="wb"):
    """Write ``data`` (bytes, or text with ``mode='w'``) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, mode) as f:
            f.write(data)
    atomic_write(write, path)


def write_json(path, data):
    """Write ``data`` as indented JSON, atomically."""
    write_bytes(path, json.dumps(data, indent=2) + "\n", mode="w")


def save_npz(path, arrays):
    """Write ``{'name': array}`` as a plain float32 .npz (no pickles), atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
    atomic_write(write, path)


def save_image(image, path, **save_kwargs):
    """Save a PIL image or an RGB array atomically; the format follows ``path``'s extension.

    ``save_kwargs`` go to ``Image.save`` (e.g. ``quality=90``).
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.ascontiguousarray(image))
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
    image.putpalette(PALETTE.ravel().tolist())  # 'L' becomes 'P'
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
    write_bytes(path, text, mode="w")
    return True


def new_hidden_dir(parent, name, kind):
    """A new ``.<name>.<kind><pid>-<n>`` directory in ``parent``, to fill
    before ``replace_directory`` puts it in place.

    Unlike tempfile.mkdtemp (mode 0700) it gets the umask's permissions, so a
    server running as another user can read an export once it is renamed.
    """
    for attempt in range(1000):
        path = os.path.join(parent, ".%s.%s%d-%d" % (name, kind, os.getpid(), attempt))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise IOError("Could not create a temporary directory in %s; remove old "
                  ".%s.* directories there." % (parent, name))


def replace_directory(staging, target):
    """Rename the finished directory ``staging`` to ``target``.

    A ``target`` that exists is moved aside first and deleted only once the
    new one is in place, so an interruption never leaves neither.
    """
    old = None
    if os.path.isdir(target) and os.listdir(target):
        old = new_hidden_dir(os.path.dirname(os.path.abspath(staging)),
                             os.path.basename(target), "old")
        try:
            os.rename(target, os.path.join(old, "previous"))
        except OSError:
            os.rmdir(old)
            raise
    try:
        # rename(2) replaces an empty directory, nothing else.
        os.rename(staging, target)
    except OSError:
        if old is not None:
            os.rename(os.path.join(old, "previous"), target)
            os.rmdir(old)
        raise
    if old is not None:
        shutil.rmtree(old)
