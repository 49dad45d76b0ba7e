"""Label files of any dataset: label maps, class names and label checks.

Wrong labels rarely fail loudly. A mask saved as 0/200 instead of class ids,
a label rendered in colour, or one resized with bilinear interpolation makes
the loss see ids the network has no output for (TensorFlow's sparse softmax
raises for them on CPU and returns NaN on GPU); a binary mask saved as 0/255
is read as background plus the ignore label 255, so the objects are never
learnt and nothing fails at all. So labels are checked where they are read,
and ``dataset/check_labels.py`` and the start of train.py scan a list's
labels up front. Both go through one implementation (``inspect_label``,
``inspect_pair``, ``scan_labels``) whose messages say what is wrong with a
file, the likely cause, and the fix to apply.

A label map (``--label-map``) turns the values stored in a dataset's label
files into training ids as they are read, for training and evaluation alike,
so the loss and the metric see the same labels. Cityscapes, for instance,
stores label ids 0..33 and trains 19 of them::

    # source id  train id
    7   0      # road
    8   1      # sidewalk
    ...
    *   255    # every id not listed: ignored

The rules, in order: a value the table lists maps to its target; the ignore
label passes through as the ignore label; ``*`` maps every other value; any
other value is an error naming the file, so a wrong table or wrong files
never train silently.
"""
import collections
import functools
import json
import logging
import math
import multiprocessing
import os
import time

import numpy as np
from PIL import Image

from deeplab_resnet import dataset_files, utils

log = logging.getLogger(__name__)

# An 8-bit label holds values 0..255.
NUM_VALUES = 256
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
DATASET = "dataset"
KINDS = (MISSING, UNREADABLE, COLOUR, MODE, SIZE, UNMAPPED, VALUES, DATASET)


class Problem(collections.namedtuple("Problem", ["kind", "path", "message", "fix"])):
    """What is wrong with one file (``path``; None for the dataset as a whole)
    and what to do about it. ``str(problem)`` is both, one line."""

    __slots__ = ()

    def __str__(self):
        return "%s %s" % (self.message, self.fix)


class UnreadableError(IOError):
    """A file PIL cannot read; ``problem`` is its ``Problem``."""

    def __init__(self, what, path, reason):
        self.problem = Problem(UNREADABLE, path, "Cannot read %s %s (%s)."
                               % (what, path, reason),
                               "Replace the file or remove its line from the list.")
        super(UnreadableError, self).__init__(str(self.problem))


def _values_text(values):
    """'[200]' or '[21, 22, ..., 64] (44 values)' for messages."""
    values = [int(v) for v in values]
    if len(values) <= MAX_VALUES_SHOWN:
        return "[%s]" % ", ".join(map(str, values))
    return "[%s, ...] (%d values)" % (", ".join(map(str, values[:MAX_VALUES_SHOWN])),
                                       len(values))


# --------------------------------------------------------------- label maps
class LabelMap(object):
    """A table from the values in label files to training ids.

    Attributes:
      table: int16 [256]; ``table[v]`` is what value ``v`` becomes, -1 where
        the table has no entry (reading such a value is an error).
      path: the file it was read from, for messages.
    """

    def __init__(self, table, path="label map"):
        table = np.asarray(table, dtype=np.int16)
        if table.shape != (NUM_VALUES,):
            raise ValueError("A label map table has %d entries, one per 8-bit "
                             "value; got shape %s." % (NUM_VALUES, table.shape))
        self.table = table
        self.path = path

    def unmapped(self, values):
        """The ``values`` (ints 0..255) the table has no entry for."""
        values = np.asarray(values, dtype=np.int64)
        return values[self.table[values] < 0]

    def map_histogram(self, histogram):
        """Pixel counts per training id from counts per source value.

        Args:
          histogram: int [256], pixels per source value; unmapped values must
            have a count of 0.
        Returns:
          int64 [256], pixels per training id.
        """
        histogram = np.asarray(histogram, dtype=np.int64)
        present = np.flatnonzero(histogram)
        return np.bincount(self.table[present], weights=histogram[present],
                           minlength=NUM_VALUES).astype(np.int64)

    def apply(self, label):
        """Training ids of a uint8 label [H, W] whose values are all mapped."""
        return self.table[label].astype(np.uint8)

    def describe(self):
        """'map.txt: 34 values -> 20 ids' for logs (the ignore label counts
        as an id)."""
        mapped = self.table[self.table >= 0]
        return "%s: %d values -> %d ids" % (self.path, mapped.size,
                                            np.unique(mapped).size)


def _parse_span(text, where, path):
    """'7' -> [7]; '0-6' -> [0, ..., 6]."""
    try:
        if "-" in text.strip("-"):
            first, last = (int(v) for v in text.split("-"))
            if first > last:
                raise ValueError
            return list(range(first, last + 1))
        return [int(text)]
    except ValueError:
        raise ValueError("--label-map %s, %s: %r is not a value or a range such "
                         "as 7 or 0-6." % (path, where, text))


def _text_entries(text):
    """(where, fields) from 'SOURCE TARGET' lines; ':' or '->' may separate."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].replace("->", " ").replace(":", " ").split()
        if fields:
            entries.append(("line %d" % number, fields))
    return entries


def _json_entries(text, path):
    """(where, source, target) from a JSON object {"7": 0, "*": 255}."""
    try:
        pairs = json.loads(text, object_pairs_hook=lambda items: items)
    except ValueError as err:
        raise ValueError("--label-map %s is not valid JSON (%s). Write an object "
                         "such as {\"7\": 0, \"8\": 1, \"*\": 255}." % (path, err))
    if not isinstance(pairs, list) or not text.lstrip().startswith("{"):
        raise ValueError("--label-map %s must be a JSON object such as "
                         "{\"7\": 0, \"8\": 1, \"*\": 255}." % path)
    entries = []
    for key, value in pairs:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("--label-map %s, key %r: the target must be a "
                             "number such as 0 or a range such as \"0-6\"; got "
                             "%r." % (path, key, value))
        entries.append(("key %r" % key, [key, str(value)]))
    return entries


def read_label_map(path, num_classes=None, ignore_label=utils.IGNORE_LABEL):
    """Read and validate a ``--label-map`` file.

    Text: one ``SOURCE TARGET`` per line (``#`` starts a comment); either
    side may be a range (``0-6 255`` maps seven values to 255, ``24-26 11-13``
    maps pairwise) and ``*`` as source maps every value not listed. JSON: an
    object with the same keys and targets, e.g. ``{"7": 0, "0-6": 255,
    "*": 255}``. Sources are 8-bit label values 0..255, each listed once;
    several may share a target. See the module doc for the mapping rules.

    Args:
      path: the file, None (no map), or a ``LabelMap`` (returned as it is).
      num_classes: targets must be below it or be ``ignore_label``.
    Returns:
      ``LabelMap`` or None.
    Raises:
      IOError: the file cannot be read.
      ValueError: a malformed line, a source outside 0..255 or listed twice,
        a target that is neither a class id nor the ignore label, or an empty
        table; the message names the line.
    """
    if path is None or isinstance(path, LabelMap):
        return path
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise IOError("--label-map %r cannot be read (%s)." % (path, err))
    if path.lower().endswith(".json") or text.lstrip().startswith("{"):
        entries = _json_entries(text, path)
    else:
        entries = _text_entries(text)
    table = np.full(NUM_VALUES, -1, np.int16)
    listed = {}
    default = None
    for where, fields in entries:
        if len(fields) != 2:
            raise ValueError("--label-map %s, %s: %r is not 'SOURCE TARGET', e.g. "
                             "'7 0', '0-6 255' or '* 255'."
                             % (path, where, " ".join(fields)))
        source, target = fields
        targets = _parse_span(target, where, path)
        for value in targets:
            if not ((num_classes is None and 0 <= value < NUM_VALUES)
                    or (num_classes is not None and 0 <= value < num_classes)
                    or value == ignore_label):
                classes = ("0..%d" % (num_classes - 1) if num_classes is not None
                           else "0..255")
                raise ValueError(
                    "--label-map %s, %s: target %d is neither a class id %s nor "
                    "the ignore label %d. Fix the table, or --num-classes / "
                    "--ignore-label." % (path, where, value, classes, ignore_label))
        if source.strip() == "*":
            if len(targets) != 1 or default is not None:
                raise ValueError("--label-map %s, %s: '*' takes one target and "
                                 "may appear once." % (path, where))
            default = targets[0]
            continue
        sources = _parse_span(source, where, path)
        if len(targets) == 1:
            targets = targets * len(sources)
        elif len(targets) != len(sources):
            raise ValueError("--label-map %s, %s: %d source values but %d "
                             "targets; give one target, or a range of the same "
                             "length." % (path, where, len(sources), len(targets)))
        for value, train_id in zip(sources, targets):
            if not 0 <= value < NUM_VALUES:
                raise ValueError("--label-map %s, %s: source %d is not an 8-bit "
                                 "label value 0..255." % (path, where, value))
            if value in listed:
                raise ValueError("--label-map %s: value %d is listed twice (%s and "
                                 "%s)." % (path, value, listed[value], where))
            listed[value] = where
            table[value] = train_id
    if not listed and default is None:
        raise ValueError("--label-map %s lists no values. Write 'SOURCE TARGET' "
                         "lines such as '7 0'." % path)
    if 0 <= ignore_label < NUM_VALUES and table[ignore_label] < 0:
        table[ignore_label] = ignore_label
    if default is not None:
        table[table < 0] = default
    return LabelMap(table, path)


# -------------------------------------------------------------- class names
def add_class_names_flag(parser):
    """--class-names: the one flag every script that shows classes takes."""
    parser.add_argument("--class-names", default=None, metavar="FILE",
                        help="Text file with one class name per line, background "
                             "first, for tables and reports (default: the VOC "
                             "names for 21 classes, else class_0, class_1, ...).")


def class_names(num_classes, path=None):
    """Names of the classes: a file's lines, VOC's, or class_0, class_1, ...

    Args:
      path: text file with one name per line (blank lines ignored), or None.
    Raises:
      IOError: the file cannot be read; ValueError: it has the wrong count.
    """
    if path is None:
        if num_classes == len(utils.VOC_CLASSES):
            return list(utils.VOC_CLASSES)
        return ["class_%d" % i for i in range(num_classes)]
    try:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as err:
        raise IOError("--class-names %r cannot be read (%s)." % (path, err))
    if len(names) != num_classes:
        raise ValueError("--class-names %s has %d names but --num-classes is %d; "
                         "give one name per line for every class, background "
                         "included." % (path, len(names), num_classes))
    return names


# ------------------------------------------------------------ colour labels
def _pack(rgb):
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colours_text(packed):
    """'(0, 0, 0), (10, 20, 30)' for the first five packed colours."""
    return ", ".join(str((int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255))
                     for c in packed[:5])


def colour_to_ids(rgb, palette=utils.PALETTE):
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


def convert_colour_label(source, target, palette=utils.PALETTE):
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
    dataset_files.save_label(ids, target)


def _colour_fix(path, rgb):
    """How to turn a colour label into ids, from what its colours are."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0],
                                                                   rgb[..., 2]):
        return ("Its three channels are equal, so it holds gray ids saved as RGB. "
                "Convert it with Image.open(path).convert('L').save(path).")
    colours = np.unique(_pack(rgb))
    known = np.isin(colours, _pack(utils.PALETTE))
    if known.all():
        ids = colour_to_ids(np.stack([(colours >> 16) & 255, (colours >> 8) & 255,
                                      colours & 255], axis=-1))
        return ("Its colours are all VOC palette colours (ids %s), so it is a "
                "label rendered in colour. Convert it back to ids with python -c "
                "\"from deeplab_resnet import labels; "
                "labels.convert_colour_label('%s', 'ids.png')\" and list the new "
                "file." % (_values_text(np.sort(ids)), path))
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


def image_size(path):
    """(height, width) of an image from its header, without decoding it.

    Raises:
      UnreadableError (an IOError): the file is not an image PIL reads.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except DECODE_ERRORS as err:
        raise UnreadableError("image", path, err)
    return height, width


# ------------------------------------------------------------------ checks
def size_problem(label_path, label_shape, image_path, image_shape):
    """The ``Problem`` of a label whose size is not its image's, or None."""
    (label_h, label_w), (image_h, image_w) = label_shape[:2], image_shape[:2]
    if (label_h, label_w) == (image_h, image_w):
        return None
    message = ("Label %s is %dx%d but its image %s is %dx%d (HxW)."
               % (label_path, label_h, label_w, image_path, image_h, image_w))
    if (label_h, label_w) == (image_w, image_h):
        fix = ("Height and width are swapped: the photo is probably stored rotated "
               "with an EXIF orientation tag that the labelling tool applied. "
               "Rotate the label (or save the photo's pixels upright) so that they "
               "match pixel for pixel.")
    elif abs(label_h * image_w - label_w * image_h) <= max(label_h, label_w,
                                                          image_h, image_w):
        fix = ("Same aspect ratio, other size: the label was resized. Resize it to "
               "%dx%d with nearest neighbour (Image.NEAREST; bilinear would invent "
               "ids), or list the full-size label." % (image_w, image_h))
    else:
        fix = ("A label must match its image pixel for pixel; check that the list "
               "pairs the right files.")
    return Problem(SIZE, label_path, message, fix)


def _gray_voc_levels():
    """Gray levels PIL's convert('L') gives VOC's class and void colours."""
    palette = utils.PALETTE.astype(np.int64)
    levels = (palette[:, 0] * 19595 + palette[:, 1] * 38470 + palette[:, 2] * 7471
              + 0x8000) >> 16
    return set(levels[1:utils.NUM_CLASSES].tolist()) | {int(levels[utils.IGNORE_LABEL])}


GRAY_VOC_LEVELS = _gray_voc_levels()


def _value_fix(values, bad, num_classes, ignore_label):
    """Likely cause and fix for label values outside the classes."""
    kept = values[values != ignore_label]
    nonzero = kept[kept != 0]
    if len(nonzero) == 1 and nonzero[0] in bad:
        value = int(nonzero[0])
        return ("Only 0 and %d occur: this looks like a binary (object/background) "
                "mask saved as 0/%d for viewing, not class ids. Save object pixels "
                "as their class id (1 for a single class, with --num-classes 2), "
                "or map them with --label-map (a line '%d 1')."
                % (value, value, value))
    if set(nonzero.tolist()) <= GRAY_VOC_LEVELS:
        return ("The values are the gray levels of VOC's colours (e.g. 38 for "
                "aeroplane's red): a palette label was converted to grayscale "
                "(e.g. Image.convert('L') or cv2.imread), which replaces ids by "
                "brightness. Read the original PNG's pixel values without "
                "converting (np.array(Image.open(path))) and save those.")
    step = functools.reduce(math.gcd, nonzero.tolist(), 0)
    if step > 1 and nonzero.max() // step < num_classes:
        return ("Every value is a multiple of %d and dividing by %d gives ids "
                "0..%d: the ids were scaled for viewing. Save np.array(label) // %d "
                "instead, or map them with --label-map ('%d 1', '%d 2', ...)."
                % (step, step, nonzero.max() // step, step, step, 2 * step))
    if len(values) > max(2 * num_classes, MANY_VALUES):
        return ("%d distinct values, far more than the %d classes: the label was "
                "probably saved as JPEG, resized with interpolation or drawn with "
                "anti-aliasing. Save labels as PNG and resize them with nearest "
                "neighbour only." % (len(values), num_classes))
    return ("If they are class ids, --num-classes must be at least %d; if they mark "
            "unlabelled pixels, pass --ignore-label; if the dataset stores other ids "
            "(e.g. Cityscapes label ids), map them with --label-map."
            % (int(bad.max()) + 1))


def value_problem(path, histogram, num_classes, ignore_label):
    """The ``Problem`` of a label with values that are neither class ids below
    ``num_classes`` nor ``ignore_label``, or None.

    Args:
      histogram: int [256], pixels per value.
    """
    values = np.flatnonzero(histogram)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if not bad.size:
        return None
    message = ("Label %s has values %s, which are neither class ids 0..%d nor the "
               "ignore label %d." % (path, _values_text(bad), num_classes - 1,
                                     ignore_label))
    return Problem(VALUES, path, message,
                   _value_fix(values, bad, num_classes, ignore_label))


def inspect_label(label, path, num_classes=None, ignore_label=utils.IGNORE_LABEL,
                  label_map=None, image_shape=None, image_path=None):
    """Every problem of one decoded label, and its histogram of training ids.

    The one check behind the reader, train.py's start, check_labels.py and
    the VOC builder.

    Args:
      label: integer array [H, W] of values as stored in the file.
      path: the label's file, for messages.
      num_classes: when given, values must be ids below it or ``ignore_label``.
      label_map: ``LabelMap`` applied first, or None.
      image_shape, image_path: the image the label belongs to, when its size
        is to be checked.
    Returns:
      (histogram, problems): int64 [256] pixels per training id (None when the
      values cannot be mapped), and a list of ``Problem``.
    """
    problems = []
    if image_shape is not None:
        problem = size_problem(path, np.shape(label), image_path, image_shape)
        if problem is not None:
            problems.append(problem)
    label = np.asarray(label)
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() >= NUM_VALUES):
            problems.append(Problem(
                VALUES, path, "Label %s has values %d..%d, outside 0..255."
                % (path, label.min(), label.max()),
                "Labels are 8-bit class ids; map the values to ids 0..255."))
            return None, problems
        label = label.astype(np.uint8)
    histogram = np.bincount(label.ravel(), minlength=NUM_VALUES)
    if label_map is not None:
        unmapped = label_map.unmapped(np.flatnonzero(histogram))
        if unmapped.size:
            problems.append(Problem(
                UNMAPPED, path, "Label %s has values %s that --label-map %s does "
                "not list." % (path, _values_text(unmapped), label_map.path),
                "Add them to the table, or a '* 255' line (JSON: \"*\": 255) to "
                "ignore every value it does not list."))
            return None, problems
        histogram = label_map.map_histogram(histogram)
    if num_classes is not None:
        problem = value_problem(path, histogram, num_classes, ignore_label)
        if problem is not None:
            problems.append(problem)
    return histogram, problems


def check_label(label, path, num_classes=None, ignore_label=utils.IGNORE_LABEL,
                label_map=None, image_shape=None, image_path=None):
    """``inspect_label`` for readers: the label in training ids, or an error.

    Returns:
      uint8 [H, W] training ids (``label`` itself without a map).
    Raises:
      ValueError: the first problem, with its fix.
    """
    _, problems = inspect_label(label, path, num_classes, ignore_label, label_map,
                                image_shape, image_path)
    if problems:
        raise ValueError(str(problems[0]))
    label = np.asarray(label, dtype=np.uint8)
    return label if label_map is None else label_map.apply(label)


def inspect_pair(pair, num_classes=None, ignore_label=utils.IGNORE_LABEL,
                 label_map=None):
    """``inspect_label`` for a listed (image, label) pair of files.

    Reads only the image's header (its size) and decodes the label.

    Returns:
      (histogram or None, problems) as ``inspect_label``.
    """
    image_path, label_path = pair
    missing = [p for p in pair if not os.path.isfile(p)]
    if missing:
        return None, [Problem(MISSING, label_path, "%s do%s not exist." % (
            " and ".join(missing), "es" if len(missing) == 1 else ""),
            "Check --data-dir, which the listed paths are relative to, or "
            "remove the line from the list.")]
    try:
        image_shape = image_size(image_path)
        mode, array = read_label_file(label_path)
    except UnreadableError as err:
        return None, [err.problem]
    problem = mode_problem(label_path, mode, array)
    if problem is not None:
        size = size_problem(label_path, array.shape, image_path, image_shape)
        return None, [problem] + ([size] if size else [])
    return inspect_label(array, label_path, num_classes, ignore_label, label_map,
                         image_shape, image_path)


# ------------------------------------------------------------------- scans
class ScanResult(object):
    """What ``scan_labels`` found.

    Attributes:
      checked: labels inspected.
      with_problems: labels (list lines) with at least one problem.
      histogram: int64 [256], pixels per training id over the readable labels.
      label_counts: int64 [256], how many labels contain each id.
      problems: list of ``Problem`` (problems make check_labels.py fail).
      warnings: list of ``Problem`` worth a look that need not be wrong.
    """

    def __init__(self):
        self.checked = 0
        self.with_problems = 0
        self.histogram = np.zeros(NUM_VALUES, np.int64)
        self.label_counts = np.zeros(NUM_VALUES, np.int64)
        self.problems = []
        self.warnings = []


def sample_indices(total, sample_size=None, seed=0):
    """Sorted indices of a random sample of ``total`` items (all when
    ``sample_size`` is None or not smaller)."""
    if sample_size is None or sample_size >= total:
        return np.arange(total)
    return np.sort(np.random.RandomState(seed).choice(total, max(sample_size, 0),
                                                      replace=False))


def dataset_problems(histogram, checked, num_classes, ignore_label):
    """Problems only the whole scan shows: ([problems], [warnings]).

    A binary mask saved as 0/255 passes every per-file check (0 is
    background, 255 the ignore label) yet teaches nothing but background.
    """
    total = histogram.sum()
    ignored = histogram[ignore_label] if 0 <= ignore_label < NUM_VALUES else 0
    # Labels with other values have their own problems.
    if num_classes is None or num_classes < 2 or not total or \
            histogram[0] + ignored != total:
        return [], []
    if ignored:
        return [Problem(
            DATASET, None,
            "No pixel in the %d checked labels has a class other than 0, and "
            "%.1f%% are the ignore label %d." % (checked,
                                                 100.0 * ignored / total,
                                                 ignore_label),
            "These look like binary masks saved as 0/%d (or 0/1 scaled for "
            "viewing): the objects are read as 'ignore', so only background is "
            "learnt. Save object pixels as class ids (1 for one class), or map "
            "them with --label-map (a line '%d 1')." % (ignore_label, ignore_label))], []
    return [], [Problem(
        DATASET, None, "Only class 0 occurs in the %d checked labels." % checked,
        "Nothing but background would be learnt: check that the labels hold "
        "class ids, or check more labels.")]


def scan_labels(pairs, num_classes=None, ignore_label=utils.IGNORE_LABEL,
                label_map=None, workers=1, log_interval=5.0):
    """Inspect the labels of (image, label) path pairs, and the whole lot.

    Args:
      pairs: sequence of (image_path, label_path).
      num_classes, ignore_label, label_map: see ``inspect_label``.
      workers: processes reading labels in parallel (1: this process).
      log_interval: seconds between progress lines, None for none.
    Returns:
      ``ScanResult``.
    """
    pairs = list(pairs)
    result = ScanResult()
    inspect = functools.partial(inspect_pair, num_classes=num_classes,
                                ignore_label=ignore_label, label_map=label_map)
    progress = utils.Progress(len(pairs), unit="label")
    progress.update(0)
    last_log = time.time()
    pool = multiprocessing.Pool(workers) if workers > 1 and len(pairs) > 1 else None
    try:
        outcomes = (pool.imap(inspect, pairs, chunksize=8) if pool is not None
                    else (inspect(pair) for pair in pairs))
        for done, (histogram, problems) in enumerate(outcomes, 1):
            result.checked = done
            result.problems.extend(problems)
            result.with_problems += bool(problems)
            if histogram is not None:
                result.histogram += histogram
                result.label_counts += histogram > 0
            if log_interval is not None and (
                    done == len(pairs) or time.time() - last_log >= log_interval):
                log.info("labels %d/%d %d with problems %s", done, len(pairs),
                         result.with_problems, progress.line(done))
                last_log = time.time()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    problems, warnings = dataset_problems(result.histogram, result.checked,
                                          num_classes, ignore_label)
    result.problems.extend(problems)
    result.warnings.extend(warnings)
    return result


def scan_error(result, data_list):
    """One-line error for a scan that found problems: the first, with its fix,
    and how many more there are."""
    first = result.problems[0]
    more = len(result.problems) - 1
    if not more:
        return str(first)
    return ("%s (%d more problem(s) in the %d labels checked; run "
            "dataset/check_labels.py with the same --data-dir and --data-list "
            "%s for the full report.)" % (first, more, result.checked, data_list))


# ---------------------------------------------------------------- reports
def format_report(result, names, ignore_label=utils.IGNORE_LABEL, max_listed=10):
    """check_labels.py's report: histogram, problems grouped by fix, summary.

    Args:
      result: ``ScanResult``.
      names: class names, ``len(names)`` classes.
      max_listed: files listed per group of problems.
    Returns:
      text; its last line starts with 'summary:'.
    """
    total = int(result.histogram.sum())
    lines = ["label values in %d labels (%d pixels):" % (result.checked, total),
             "%5s  %-20s %12s %8s %8s" % ("id", "class", "pixels", "%", "labels")]
    name_width = 20
    for value in range(NUM_VALUES):
        pixels = int(result.histogram[value])
        if value < len(names):
            name = names[value]
        elif value == ignore_label:
            name = "(ignore)"
        elif pixels:
            name = "(not a class)"
        else:
            continue
        share = 100.0 * pixels / total if total else 0.0
        lines.append("%5d  %-*s %12d %7.2f%% %8d" % (
            value, name_width, name[:name_width], pixels, share,
            result.label_counts[value]))
    absent = [names[i] for i in range(len(names)) if not result.histogram[i]]
    if absent and result.checked:
        lines.append("classes in no checked label: %s" % ", ".join(absent))

    groups = collections.OrderedDict()
    for problem in sorted(result.problems, key=lambda p: KINDS.index(p.kind)):
        groups.setdefault((problem.kind, problem.fix), []).append(problem)
    for (kind, fix), problems in groups.items():
        lines.append("")
        lines.append("problem (%s), %d label(s):" % (kind, len(problems))
                     if problems[0].path is not None else "problem (%s):" % kind)
        for problem in problems[:max_listed]:
            lines.append("  %s" % problem.message)
        if len(problems) > max_listed:
            lines.append("  ... and %d more" % (len(problems) - max_listed))
        lines.append("  fix: %s" % fix)
    for warning in result.warnings:
        lines.append("")
        lines.append("warning: %s %s" % (warning.message, warning.fix))
    kinds = collections.Counter(p.kind for p in result.problems)
    lines.append("")
    lines.append("summary: %d labels checked, %d with problems%s, %d warning(s)" % (
        result.checked, result.with_problems,
        " (%s)" % ", ".join("%s %d" % (k, kinds[k]) for k in KINDS if kinds[k])
        if kinds else "", len(result.warnings)))
    return "\n".join(lines)
