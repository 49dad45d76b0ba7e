"""Segmentation scores: the confusion matrix (one np.bincount), IoU, accuracy, and their reports.

numpy only; training's validation, evaluate.py and the distributed
evaluation all score through these functions.
"""
import os

import numpy as np

from deeplab_resnet import files
from deeplab_resnet.constants import IGNORE_LABEL

CONFUSION_FORMATS = (".csv", ".npy")


def confusion_matrix(label, pred, num_classes, ignore_label=IGNORE_LABEL):
    """Accumulable confusion matrix: rows are ground truth, columns predictions.

    Pixels whose label is ``ignore_label`` are left out.

    Raises:
      ValueError: a label that is neither a class id nor the ignore label.
    """
    label = np.asarray(label).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = label != ignore_label
    label, pred = label[keep], pred[keep]
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        bad = np.unique(label[(label < 0) | (label >= num_classes)])
        raise ValueError("Label values %s are outside 0..%d and not the ignore "
                         "label %d. Check --num-classes and --ignore-label, or "
                         "the label files." % (bad.tolist(), num_classes - 1,
                                               ignore_label))
    return np.bincount(num_classes * label + pred,
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _nan_mean(values):
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def segmentation_scores(confusion):
    """Scores from a confusion matrix.

    Returns a dict with ``iou`` (per class, NaN for a class absent from both
    ground truth and prediction), ``miou`` (mean over the classes that occur),
    ``pixel_accuracy``, ``class_accuracy`` (per class, NaN where absent from
    the ground truth) and ``mean_class_accuracy``.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_pos = np.diag(confusion)
    gt = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = gt + predicted - true_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_pos / union, np.nan)
        class_acc = np.where(gt > 0, true_pos / gt, np.nan)
    total = confusion.sum()
    return {
        "iou": iou,
        "miou": _nan_mean(iou),
        "pixel_accuracy": float(true_pos.sum() / total) if total else float("nan"),
        "class_accuracy": class_acc,
        "mean_class_accuracy": _nan_mean(class_acc),
    }


def format_scores(scores, names):
    """The per-class IoU/accuracy table and the summary lines, as text.

    A class absent from both labels and predictions has no IoU; it is shown
    as '-' and left out of the mean.
    """
    width = max(12, max(len(n) for n in names))
    lines = ["%-*s %8s %8s" % (width, "class", "IoU", "accuracy")]
    fmt = lambda v: "-" if np.isnan(v) else "%.4f" % v
    for name, iou, acc in zip(names, scores["iou"], scores["class_accuracy"]):
        lines.append("%-*s %8s %8s" % (width, name, fmt(iou), fmt(acc)))
    lines.append("pixel accuracy %.4f" % scores["pixel_accuracy"])
    lines.append("mean class accuracy %.4f" % scores["mean_class_accuracy"])
    return "\n".join(lines)


def check_confusion_path(path):
    """Raise ValueError early for a --save-confusion that is not .csv/.npy."""
    if path is not None and os.path.splitext(path)[1].lower() not in CONFUSION_FORMATS:
        raise ValueError("--save-confusion must end in .csv or .npy; got %r."
                         % path)


def save_confusion(confusion, path):
    """Write the confusion matrix (rows: ground truth) as .csv or .npy, atomically."""
    check_confusion_path(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    confusion = np.asarray(confusion, np.int64)

    def write(tmp):
        with open(tmp, "wb") as f:
            if path.lower().endswith(".npy"):
                np.save(f, confusion)
            else:
                np.savetxt(f, confusion, fmt="%d", delimiter=",")
    files.atomic_write(write, path)
