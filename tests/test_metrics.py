"""Palette decoding, the confusion matrix and mIoU, label resizing, inv_preprocess."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from deeplab_resnet import constants
from deeplab_resnet import metrics
from deeplab_resnet.images import decode_labels
from deeplab_resnet.images import inv_preprocess
from deeplab_resnet.training.loss import prepare_label


# ------------------------------------------------------------------ palette
def test_palette_matches_voc_colours():
    # Colours from the PASCAL VOC devkit (VOCdevkit/VOCcode/VOClabelcolormap.m).
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0),
                4: (0, 0, 128), 8: (64, 0, 0), 15: (192, 128, 128),
                20: (0, 64, 128), 255: (224, 224, 192)}
    for index, colour in expected.items():
        assert tuple(constants.PALETTE[index]) == colour
    assert constants.PALETTE.shape == (256, 3) and constants.PALETTE.dtype == np.uint8
    assert constants.VOC_PALETTE.shape == (21, 3)
    assert len({tuple(c) for c in constants.PALETTE}) == 256


def test_decode_labels_indexes_the_palette():
    labels = np.array([[[0, 1], [15, 255]], [[20, 2], [3, 4]]], np.uint8)
    colours = decode_labels(labels[..., None], num_images=1)
    assert colours.shape == (1, 2, 2, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(
        colours[0], [[(0, 0, 0), (128, 0, 0)], [(192, 128, 128), (224, 224, 192)]])
    np.testing.assert_array_equal(decode_labels(labels)[1, 0, 0], (0, 64, 128))


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


# ------------------------------------------------------------- label resize
@pytest.mark.parametrize("with_channel", [False, True])
def test_prepare_label_is_nearest_neighbour_on_the_logit_grid(with_channel):
    label = np.arange(25, dtype=np.uint8).reshape(1, 5, 5) * 10
    label[0, 4, 4] = 255
    if with_channel:
        label = label[..., None]
    with tf.Session() as sess:
        resized = sess.run(prepare_label(tf.constant(label), (3, 3)))
    assert resized.dtype == np.int32 and resized.shape == (1, 3, 3)
    # align_corners: output (i, j) samples input (2i, 2j), corners included.
    expected = np.arange(25).reshape(5, 5)[::2, ::2] * 10
    expected[2, 2] = 255
    np.testing.assert_array_equal(resized[0], expected)


def test_prepare_label_never_invents_class_ids():
    rng = np.random.RandomState(0)
    label = rng.choice([0, 7, 15, 255], size=(2, 33, 47)).astype(np.uint8)
    with tf.Session() as sess:
        resized = sess.run(prepare_label(tf.constant(label), (5, 6)))
    assert set(np.unique(resized)) <= {0, 7, 15, 255}


# --------------------------------------------------------------- images
def test_inv_preprocess_round_trips_every_value():
    rgb = np.stack([np.arange(256), np.arange(256)[::-1], np.roll(np.arange(256), 7)],
                   axis=-1).astype(np.uint8).reshape(2, 16, 8, 3)
    # What the reader feeds the network: float32 BGR minus the mean.
    bgr = rgb[..., ::-1].astype(np.float32) - constants.IMG_MEAN
    restored = inv_preprocess(bgr)
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, rgb)
    np.testing.assert_array_equal(inv_preprocess(bgr, num_images=1), rgb[:1])
