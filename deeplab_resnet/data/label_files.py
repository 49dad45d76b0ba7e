"""Label files: reading class ids, colour labels back to ids, and what is wrong with a file.

Wrong labels rarely fail loudly. A mask saved as 0/200 instead of class ids,
a label rendered in colour, or one resized with bilinear interpolation makes
the loss see ids the network has no output for; a binary mask saved as 0/255
is read as background plus the ignore label 255, so the objects are never
learnt and nothing fails at all. Each ``Problem`` says what is wrong with a
file, the likely cause, and the fix; ``label_checks`` finds them. numpy and
PIL only.
"""
import collections
import os

import numpy as np
from PIL import Image

from deeplab_resnet import files
from deeplab_resnet.constants import PALETTE
from deeplab_resnet.data.label_maps import NUM_VALUES

# Label image modes whose pixel values are class ids.
INDEX_MODES = ("P", "L", "1")
# Mode prefixes of more-than-8-bit single-channel images.
WIDE_MODES = ("I", "F")
# Mode prefixes of images whose pixels are colours.
COLOUR_MODES = ("RGB", "CMYK", "YCbCr", "LAB", "HSV")
# Errors PIL raises for a file it cannot decode.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Values a message lists before abbreviating.
MAX_VALUES_SHOWN = 10
# More distinct values than this (and more than twice the classes) cannot be
# a map of class ids: compression or interpolation made them up.
MANY_VALUES = 16

# Problem kinds, in the order a report lists them.
MISSING = "missing"
UNREADABLE = "unreadable"
COLOUR = "colour"
MODE = "mode"
SIZE = "size"
UNMAPPED = "unmapped"
VALUES = "values"
MASK = "mask"
DATASET = "dataset"
KINDS = (MISSING, UNREADABLE, COLOUR, MODE, SIZE, UNMAPPED, VALUES, MASK, DATASET)
# A label of 0 and one id at least this high alone looks like a mask saved
# for viewing (0/128, 0/200, 0/255) rather than a class.
MASK_VALUE = 128


class Problem(collections.namedtuple("Problem", ["kind", "path", "message", "fix"])):
    """What is wrong with one file (``path``; None for the dataset as a whole)
    and what to do about it. ``str(problem)`` is both, one line."""

    __slots__ = ()

    def __str__(self):
        return "%s %s" % (self.message, self.fix)


# What to do about an unreadable file of a list.
LIST_FILE_FIX = "Replace the file or remove its line from the list."


class UnreadableError(IOError):
    """A file PIL cannot read; ``problem`` is its ``Problem``.

    ``fix`` says what to do; by default, for a file of a list.
    """

    def __init__(self, what, path, reason, fix=None):
        self.problem = Problem(UNREADABLE, path, "Cannot read %s %s (%s)."
                               % (what, path, reason), fix or LIST_FILE_FIX)
        super(UnreadableError, self).__init__(str(self.problem))


def values_text(values):
    """'[200]' or '[21, 22, ..., 64] (44 values)' for messages."""
    values = [int(v) for v in values]
    if len(values) <= MAX_VALUES_SHOWN:
        return "[%s]" % ", ".join(map(str, values))
    return "[%s, ...] (%d values)" % (", ".join(map(str, values[:MAX_VALUES_SHOWN])),
                                      len(values))


def _pack(rgb):
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colours_text(packed):
    """'(0, 0, 0), (10, 20, 30)' for the first five packed colours."""
    return ", ".join(str((int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255))
                     for c in packed[:5])


def colour_to_ids(rgb, palette=PALETTE):
    """Class ids of a label rendered in colour: the inverse of ``palette[ids]``.

    Args:
      rgb: uint8 [H, W, 3].
      palette: [N, 3] colours, distinct; colour i is id i (VOC's by default).
    Returns:
      uint8 [H, W].
    Raises:
      ValueError: colours that are not in the palette, listed.
    """
    keys = _pack(palette)
    order = np.argsort(keys)
    packed = _pack(rgb)
    position = np.clip(np.searchsorted(keys[order], packed), 0, len(keys) - 1)
    ids = order[position]
    unknown = keys[ids] != packed
    if unknown.any():
        colours = np.unique(packed[unknown])
        raise ValueError("%d colours are not in the palette, e.g. %s."
                         % (colours.size, _colours_text(colours)))
    return ids.astype(np.uint8)


def convert_colour_label(source, target, palette=PALETTE):
    """Write a colour-rendered label as a palette PNG of class ids.

    Args:
      source: RGB label whose colours are palette colours (VOC's by default).
      target: the new label; it must not exist yet (nothing is overwritten).
    Raises:
      FileExistsError: ``target`` exists; IOError: ``source`` is unreadable;
      ValueError: ``source`` has colours outside the palette.
    """
    if os.path.exists(target):
        raise FileExistsError("%s exists; write the converted label to a new "
                              "file." % target)
    try:
        with Image.open(source) as image:
            rgb = np.asarray(image.convert("RGB"))
    except DECODE_ERRORS as err:
        raise IOError("Cannot read %s (%s)." % (source, err))
    try:
        ids = colour_to_ids(rgb, palette)
    except ValueError as err:
        raise ValueError("%s: %s Map its colours with your dataset's own colour "
                         "table instead." % (source, err))
    files.save_label(ids, target)


def _colour_fix(path, rgb):
    """How to turn a colour label into ids, from what its colours are."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0],
                                                                   rgb[..., 2]):
        return ("Its three channels are equal, so it holds gray ids saved as RGB. "
                "Convert it with Image.open(path).convert('L').save(path).")
    colours = np.unique(_pack(rgb))
    known = np.isin(colours, _pack(PALETTE))
    if known.all():
        ids = colour_to_ids(np.stack([(colours >> 16) & 255, (colours >> 8) & 255,
                                      colours & 255], axis=-1))
        return ("Its colours are all VOC palette colours (ids %s), so it is a "
                "label rendered in colour. Convert it back to ids with python -c "
                "\"from deeplab_resnet.data import label_files; "
                "label_files.convert_colour_label('%s', 'ids.png')\" and list the new "
                "file." % (values_text(np.sort(ids)), path))
    shown = _colours_text(colours)
    return ("Convert it: map each of its %d colours (e.g. %s) to its class id with "
            "your dataset's colour table, and save the ids as an 8-bit grayscale "
            "('L') PNG." % (colours.size, shown))


# ---------------------------------------------------------------- reading
def read_label_file(path):
    """A label file's mode and pixels, not yet judged.

    Returns:
      (mode, array): uint8 [H, W] for index modes, uint8 [H, W, 3] RGB for
      colour modes, the raw pixels otherwise.
    Raises:
      UnreadableError (an IOError): the file cannot be read.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in INDEX_MODES:
                return mode, np.asarray(image, dtype=np.uint8)
            if mode.startswith(COLOUR_MODES):
                return mode, np.asarray(image.convert("RGB"))
            return mode, np.asarray(image)
    except DECODE_ERRORS as err:
        raise UnreadableError("label", path, err)


def mode_problem(path, mode, array):
    """The ``Problem`` of a label file whose pixels are not 8-bit ids, or None."""
    if mode in INDEX_MODES:
        return None
    if mode.startswith(COLOUR_MODES):
        return Problem(COLOUR, path,
                       "Label %s is a colour image (mode %s), but labels must hold "
                       "class ids as a palette ('P') or 8-bit grayscale ('L') PNG, "
                       "like VOC's SegmentationClass or SegmentationClassAug."
                       % (path, mode), _colour_fix(path, array))
    message = ("Label %s has image mode %s; labels must be 8-bit class ids in a "
               "palette ('P') or grayscale ('L') PNG." % (path, mode))
    fix = "Save the ids as an 8-bit grayscale ('L') PNG."
    if mode.startswith(WIDE_MODES) and array.size:
        high = array.max()
        if array.min() >= 0 and high < NUM_VALUES:
            fix = ("Every value fits 8 bits (largest %d): save them as an 8-bit "
                   "grayscale PNG, e.g. Image.fromarray(np.array(Image.open(path))"
                   ".astype(np.uint8)).save(path)." % high)
        else:
            fix = ("Its values reach %s, beyond 8 bits: map them to class ids "
                   "0..255 and save those as an 8-bit grayscale PNG." % high)
    elif mode in ("LA", "PA"):
        fix = ("It has an alpha channel: drop it, e.g. Image.open(path).convert"
               "('%s').save(path)." % mode[0])
    return Problem(MODE, path, message, fix)


def load_label(path):
    """Class ids from a label image.

    Accepts palette PNGs (VOC's SegmentationClass: the pixel value is the class
    id and the palette only colours it) and 8-bit grayscale PNGs
    (SegmentationClassAug); 1-bit images read as ids 0 and 1.

    Args:
      path: the label file.
    Returns:
      uint8 array [H, W] of class ids (the ignore label included).
    Raises:
      IOError: the file cannot be read.
      ValueError: the file holds colours or wide values instead of 8-bit ids;
        the message says how to convert it.
    """
    mode, array = read_label_file(path)
    problem = mode_problem(path, mode, array)
    if problem is not None:
        raise ValueError(str(problem))
    return array


EXIF_ORIENTATION = 0x0112
# The transpose that turns a photo's raw pixels upright, by EXIF orientation
# (as photo viewers and PIL's ``ImageOps.exif_transpose`` do); 1 and unknown
# values need none. The reader's pixels and check_labels.py's header sizes
# both follow this one table.
UPRIGHT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Transposes that turn the photo on its side (swap height and width).
SIDEWAYS = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
            Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90)


def orientation(image):
    """The transpose that turns an open PIL image upright, or None."""
    return UPRIGHT_TRANSPOSE.get(image.getexif().get(EXIF_ORIENTATION, 1))


def upright(image):
    """An open PIL image turned upright by its EXIF orientation."""
    method = orientation(image)
    return image if method is None else image.transpose(method)


def image_size(path):
    """(height, width) of an image's raw pixels, from its header.

    Raises:
      UnreadableError (an IOError): the file is not an image PIL reads.
    """
    return image_shapes(path)[0]


def image_shapes(path, decode=False):
    """(height, width) of an image from its header, and of it upright.

    Args:
      decode: decode the whole image too, so that a truncated or corrupt
        file fails now (the header alone reads fine).
    Returns:
      ((height, width) of the raw pixels, (height, width) once its EXIF
      orientation is applied).
    Raises:
      UnreadableError (an IOError): the file is not an image PIL reads.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            method = orientation(image)
            if decode:
                image.load()
    except DECODE_ERRORS as err:
        raise UnreadableError("image", path, err)
    return (height, width), ((width, height) if method in SIDEWAYS else (height, width))
