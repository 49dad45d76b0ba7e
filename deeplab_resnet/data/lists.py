"""List files: the image/label pairs of a dataset, read and written in DeepLab's format.

A list file names image/label pairs relative to a data root, one pair a line
(``/JPEGImages/x.jpg /SegmentationClassAug/x.png``), as DeepLab's Caffe
``ImageSegData`` layer reads them. Layout (what ``--data-dir`` and
``--data-list`` of the scripts expect)::

    <root>/JPEGImages/<name>.jpg
    <root>/SegmentationClassAug/<name>.png   palette PNG, pixel value = class id
    <root>/<list>.txt    lines "/JPEGImages/<name>.jpg /SegmentationClassAug/<name>.png"

Standard library only.
"""
import os

from deeplab_resnet import files
from deeplab_resnet.messages import abbreviate

IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClassAug"
# How many problems an error message lists before abbreviating.
MAX_LISTED = 10


def list_line(name):
    """The list-file line of image ``name`` (no extension), newline included."""
    return "/%s/%s.jpg /%s/%s.png\n" % (IMAGE_DIR, name, LABEL_DIR, name)


def list_text(names):
    """A list file's contents: one ``list_line(name)`` per name."""
    return "".join(list_line(name) for name in names)


def write_list(path, names, force=False):
    """Write a list file atomically. Returns / Raises: as ``files.write_text``."""
    return files.write_text(path, list_text(names), force)


def read_text(path, flag):
    """The text of a UTF-8 file a flag names, newlines as '\\n'.

    Raises:
      IOError: it cannot be read; ValueError: it is not UTF-8 text (a binary
      file given by mistake). Both messages name ``flag`` and the file, where
      Python's own would name neither.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError("%s %s is not UTF-8 text (byte 0x%02x at offset %d); give "
                         "a text file." % (flag, path, err.object[err.start], err.start))
    except OSError as err:
        raise IOError("%s %r cannot be read (%s)." % (flag, path, err))


def _join(data_dir, path):
    """``data_dir`` + a list entry. Entries start with '/' but are relative."""
    return os.path.join(data_dir, path.lstrip("/")) if data_dir else path


def escapes(relative):
    """True if ``relative``, joined onto a root, would lead out of it ('../x', 'a/../../x')."""
    parts = os.path.normpath(relative.lstrip("/")).split(os.sep)
    return parts[0] == os.pardir


def read_labeled_image_list(data_dir, data_list, check_exists=True,
                            with_line_numbers=False):
    """Image and label paths from a list file, every file checked to exist.

    Args:
      data_dir: root the list's paths are relative to (e.g. VOCdevkit/VOC2012).
      data_list: text file, one ``IMAGE LABEL`` pair per line; blank lines
        are skipped.
      check_exists: False leaves missing files to the caller (check_labels.py
        reports them with the other problems).
      with_line_numbers: also return each pair's line number, for messages.
    Returns:
      (image_paths, label_paths): two lists of equal length, in list order;
      with ``with_line_numbers``, (image_paths, label_paths, line_numbers).
    Raises:
      IOError: the list file or listed files do not exist (each missing file
        is named with its line number).
      ValueError: the list is empty, a line is not two paths, or a path
        leads outside ``data_dir`` ('..').
    """
    if not os.path.isfile(data_list):
        raise IOError("List file %r does not exist. Point --data-list at a text "
                      "file of '/JPEGImages/x.jpg /SegmentationClassAug/x.png' "
                      "lines." % data_list)
    images, labels, numbers, missing = [], [], [], []
    for number, line in enumerate(read_text(data_list, "--data-list").split("\n"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(
                "%s line %d is not an 'IMAGE LABEL' pair of paths: %r. Each "
                "line must be e.g. '/JPEGImages/x.jpg "
                "/SegmentationClassAug/x.png' (paths without spaces)."
                % (data_list, number, line.strip()))
        outside = [p for p in fields if escapes(p)]
        if data_dir and outside:
            raise ValueError(
                "%s line %d: %s would lead outside --data-dir %s. Entries are paths "
                "under --data-dir such as /JPEGImages/x.jpg; fix the line."
                % (data_list, number, outside[0], data_dir))
        image, label = (_join(data_dir, p) for p in fields)
        missing.extend("line %d: %s" % (number, p)
                       for p in (image, label) if not os.path.isfile(p))
        images.append(image)
        labels.append(label)
        numbers.append(number)
    if not images:
        raise ValueError("List file %r lists no image/label pairs. Fill it with "
                         "'/JPEGImages/x.jpg /SegmentationClassAug/x.png' lines."
                         % data_list)
    if missing and check_exists:
        raise IOError("%d file(s) listed in %s do not exist: %s. Check --data-dir "
                      "(%r), which the listed paths are relative to."
                      % (len(missing), data_list, abbreviate(missing, MAX_LISTED, "; "), data_dir))
    return (images, labels, numbers) if with_line_numbers else (images, labels)
