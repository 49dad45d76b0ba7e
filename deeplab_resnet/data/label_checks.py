"""Label checks: every problem of a label, scans of a whole list, and check_labels.py's report.

One implementation behind the reader, the start of train.py,
``dataset/check_labels.py`` and the VOC builder (``inspect_label``,
``inspect_pair``, ``scan_labels``), so every one of them reports the same
problem with the same fix. numpy and PIL only.
"""
import collections
import functools
import logging
import math
import os
import time

import numpy as np

from deeplab_resnet.machine import fresh_process_context
from deeplab_resnet.progress import Progress
from deeplab_resnet.constants import IGNORE_LABEL, NUM_CLASSES, PALETTE
from deeplab_resnet.data.label_files import (
    DATASET, KINDS, MANY_VALUES, MASK, MASK_VALUE, MISSING, SIZE, UNMAPPED, VALUES,
    Problem, UnreadableError, image_shapes, mode_problem, read_label_file, values_text)
from deeplab_resnet.data.label_maps import NUM_VALUES

log = logging.getLogger(__name__)


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
    palette = PALETTE.astype(np.int64)
    levels = (palette[:, 0] * 19595 + palette[:, 1] * 38470 + palette[:, 2] * 7471
              + 0x8000) >> 16
    return set(levels[1:NUM_CLASSES].tolist()) | {int(levels[IGNORE_LABEL])}


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
               "ignore label %d." % (path, values_text(bad), num_classes - 1,
                                     ignore_label))
    return Problem(VALUES, path, message,
                   _value_fix(values, bad, num_classes, ignore_label))


def inspect_label(label, path, num_classes=None, ignore_label=IGNORE_LABEL,
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
                "not list." % (path, values_text(unmapped), label_map.path),
                "Add them to the table, or a '* 255' line (JSON: \"*\": 255) to "
                "ignore every value it does not list."))
            return None, problems
        histogram = label_map.map_histogram(histogram)
    if num_classes is not None:
        problem = value_problem(path, histogram, num_classes, ignore_label)
        if problem is not None:
            problems.append(problem)
    return histogram, problems


def check_label(label, path, num_classes=None, ignore_label=IGNORE_LABEL,
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


def inspect_pair(pair, num_classes=None, ignore_label=IGNORE_LABEL,
                 label_map=None, decode_images=False):
    """``inspect_label`` for a listed (image, label) pair of files.

    Reads the image's header (its size; the whole image with
    ``decode_images``) and decodes the label. A label may match the photo's
    raw pixels (VOC's convention) or the photo turned upright by its EXIF
    orientation, as the reader does.

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
        raw_shape, upright_shape = image_shapes(image_path, decode_images)
        mode, array = read_label_file(label_path)
    except UnreadableError as err:
        return None, [err.problem]
    image_shape = upright_shape if array.shape[:2] == upright_shape else raw_shape
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


def mask_warning(path, histogram, num_classes, ignore_label=IGNORE_LABEL):
    """The warning for one label that looks like a binary mask, or None.

    A mask saved as 0/255 passes every value check (background and the
    ignore label), and 0 with one large id may be a class; but a label of
    a segmentation dataset that holds nothing else is more likely an
    object mask saved for viewing, whose object pixels are then ignored or
    taught as a far class. A warning, not a problem: such labels exist.
    """
    values = np.flatnonzero(histogram)
    if len(values) != 2 or values[0] != 0:
        return None
    other = int(values[1])
    if other != ignore_label and other < MASK_VALUE:
        return None
    meaning = ("the ignore label, so its object is never learnt"
               if other == ignore_label else "class %d" % other)
    return Problem(MASK, path, "Label %s holds only 0 and %d (%s)." % (
        path, other, meaning),
        "If it is a binary object mask saved for viewing, save its object pixels "
        "as their class id (1 for one class), or map them with --label-map (a "
        "line '%d 1')." % other)


def scan_labels(pairs, num_classes=None, ignore_label=IGNORE_LABEL,
                label_map=None, workers=1, log_interval=5.0, decode_images=False):
    """Inspect the labels of (image, label) path pairs, and the whole lot.

    Args:
      pairs: sequence of (image_path, label_path).
      num_classes, ignore_label, label_map: see ``inspect_label``.
      decode_images: decode every image in full (see ``inspect_pair``).
      workers: processes reading labels in parallel (1: this process).
      log_interval: seconds between progress lines, None for none.
    Returns:
      ``ScanResult``.
    """
    pairs = list(pairs)
    result = ScanResult()
    inspect = functools.partial(inspect_pair, num_classes=num_classes,
                                ignore_label=ignore_label, label_map=label_map,
                                decode_images=decode_images)
    progress = Progress(len(pairs), unit="label")
    progress.update(0)
    last_log = time.time()
    # Never a plain fork: train.py scans with TensorFlow's threads running.
    pool = (fresh_process_context([__name__]).Pool(workers)
            if workers > 1 and len(pairs) > 1 else None)
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
                warning = mask_warning(pairs[done - 1][1], histogram, num_classes,
                                       ignore_label)
                if warning is not None and not problems:
                    result.warnings.append(warning)
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
def _grouped(heading, problems, max_listed):
    """Report lines for ``Problem`` s grouped by kind and fix, files listed."""
    groups = collections.OrderedDict()
    for problem in sorted(problems, key=lambda p: KINDS.index(p.kind)):
        groups.setdefault((problem.kind, problem.fix), []).append(problem)
    lines = []
    for (kind, fix), group in groups.items():
        lines.append("")
        if group[0].path is None:
            lines.append("%s: %s %s" % (heading, group[0].message, fix)
                         if heading == "warning" else "%s (%s):" % (heading, kind))
            if heading == "warning":
                continue
        else:
            lines.append("%s (%s), %d label(s):" % (heading, kind, len(group)))
        for problem in group[:max_listed]:
            lines.append("  %s" % problem.message)
        if len(group) > max_listed:
            lines.append("  ... and %d more" % (len(group) - max_listed))
        lines.append("  fix: %s" % fix)
    return lines


def log_warnings(warnings, log, max_listed=3):
    """Log warnings one line per kind: the first few files and the fix."""
    groups = collections.OrderedDict()
    for warning in warnings:
        groups.setdefault((warning.kind, warning.fix), []).append(warning)
    for (kind, fix), group in groups.items():
        shown = " ".join(w.message for w in group[:max_listed])
        more = (" (%d labels like this; dataset/check_labels.py lists them)" % len(group)
                if len(group) > max_listed else "")
        log.warning("%s%s %s", shown, more, fix)
def format_report(result, names, ignore_label=IGNORE_LABEL, max_listed=10):
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

    lines += _grouped("problem", result.problems, max_listed)
    lines += _grouped("warning", result.warnings, max_listed)
    kinds = collections.Counter(p.kind for p in result.problems)
    lines.append("")
    lines.append("summary: %d labels checked, %d with problems%s, %d warning(s)" % (
        result.checked, result.with_problems,
        " (%s)" % ", ".join("%s %d" % (k, kinds[k]) for k in KINDS if kinds[k])
        if kinds else "", len(result.warnings)))
    return "\n".join(lines)
