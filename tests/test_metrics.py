"""The confusion matrix and mIoU, against hand-computed and per-image counts."""
import numpy as np
import pytest

from deeplab_resnet import metrics


# ------------------------------------------------------------------ metrics
def test_confusion_matrix_and_scores_by_hand():
    label = np.array([[0, 1], [1, 255]])
    pred = np.array([[0, 1], [0, 1]])
    confusion = metrics.confusion_matrix(label, pred, 2)
    # Rows are ground truth: one 0 predicted 0, one 1 predicted 0, one 1 predicted 1.
    np.testing.assert_array_equal(confusion, [[1, 0], [1, 1]])
    scores = metrics.segmentation_scores(confusion)
    # IoU 0: 1 / (1 + 2 - 1); IoU 1: 1 / (2 + 1 - 1).
    np.testing.assert_allclose(scores["iou"], [0.5, 0.5])
    assert scores["miou"] == pytest.approx(0.5)
    assert scores["pixel_accuracy"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(scores["class_accuracy"], [1.0, 0.5])
    assert scores["mean_class_accuracy"] == pytest.approx(0.75)


def test_confusion_matrix_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="--num-classes"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


def independent_scores(labels, preds, num_classes, ignore_label=255):
    """Per class: intersection and union counted image by image with masks."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    correct = total = 0
    for label, pred in zip(labels, preds):
        valid = label != ignore_label
        correct += np.sum((label == pred) & valid)
        total += np.sum(valid)
        for c in range(num_classes):
            in_label = (label == c) & valid
            in_pred = (pred == c) & valid
            inter[c] += np.sum(in_label & in_pred)
            union[c] += np.sum(in_label | in_pred)
    ious = [inter[c] / union[c] for c in range(num_classes) if union[c] > 0]
    return np.mean(ious), correct / total, union


def test_miou_matches_an_independent_per_image_computation():
    rng = np.random.RandomState(3)
    num_classes = 8
    labels, preds = [], []
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for size in [(5, 7), (12, 9), (30, 31)]:
        # Classes 6 and 7 occur in neither labels nor predictions; class 5
        # only in predictions; 255 pixels are ignored whatever is predicted.
        label = rng.randint(0, 5, size)
        label[rng.rand(*size) < 0.2] = 255
        pred = rng.randint(0, 6, size)
        labels.append(label)
        preds.append(pred)
        confusion += metrics.confusion_matrix(label, pred, num_classes)
    scores = metrics.segmentation_scores(confusion)
    miou, pixel_accuracy, union = independent_scores(labels, preds, num_classes)
    assert scores["miou"] == pytest.approx(miou, abs=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(pixel_accuracy, abs=1e-12)
    assert np.isnan(scores["iou"][6]) and np.isnan(scores["iou"][7])
    assert scores["iou"][5] == 0.0 and union[5] > 0
    assert confusion.sum() == sum(np.sum(l != 255) for l in labels)
