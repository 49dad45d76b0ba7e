"""Label maps (--label-map) and class names: stored label values to training ids, and names.

A label map turns the values stored in a dataset's label files into training
ids as they are read, for training and evaluation alike, so the loss and the
metric see the same labels. Cityscapes, for instance, stores label ids 0..33
and trains 19 of them::

    # source id  train id
    7   0      # road
    8   1      # sidewalk
    ...
    *   255    # every id not listed: ignored

The rules, in order: a value the table lists maps to its target; the ignore
label passes through as the ignore label; ``*`` maps every other value; any
other value is an error naming the file, so a wrong table or wrong files
never train silently. numpy only.
"""
import json

import numpy as np

from deeplab_resnet.constants import IGNORE_LABEL, VOC_CLASSES
from deeplab_resnet.data.lists import read_text

# An 8-bit label holds values 0..255.
NUM_VALUES = 256


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


def read_label_map(path, num_classes=None, ignore_label=IGNORE_LABEL):
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
    text = read_text(path, "--label-map")
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
        _check_targets(targets, where, path, num_classes, ignore_label)
        if source.strip() == "*":
            if len(targets) != 1 or default is not None:
                raise ValueError("--label-map %s, %s: '*' takes one target and "
                                 "may appear once." % (path, where))
            default = targets[0]
            continue
        _enter_sources(table, listed, _parse_span(source, where, path), targets,
                       where, path)
    if not listed and default is None:
        raise ValueError("--label-map %s lists no values. Write 'SOURCE TARGET' "
                         "lines such as '7 0'." % path)
    if 0 <= ignore_label < NUM_VALUES and table[ignore_label] < 0:
        table[ignore_label] = ignore_label
    if default is not None:
        table[table < 0] = default
    return LabelMap(table, path)


def _check_targets(targets, where, path, num_classes, ignore_label):
    """Raise unless every target is a class id (or, without ``num_classes``,
    an 8-bit value) or the ignore label."""
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


def _enter_sources(table, listed, sources, targets, where, path):
    """Set ``table[source] = target`` for one line, one target for all
    sources or pairwise; ``listed`` (value -> line) catches repeats."""
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


# -------------------------------------------------------------- class names
def class_names(num_classes, path=None):
    """Names of the classes: a file's lines, VOC's, or class_0, class_1, ...

    Args:
      path: text file with one name per line (blank lines ignored), or None.
    Raises:
      IOError: the file cannot be read; ValueError: it has the wrong count.
    """
    if path is None:
        if num_classes == len(VOC_CLASSES):
            return list(VOC_CLASSES)
        return ["class_%d" % i for i in range(num_classes)]
    names = [line.strip() for line in read_text(path, "--class-names").split("\n")
             if line.strip()]
    if len(names) != num_classes:
        raise ValueError("--class-names %s has %d names but --num-classes is %d; "
                         "give one name per line for every class, background "
                         "included." % (path, len(names), num_classes))
    return names
