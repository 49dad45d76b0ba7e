"""The loss's label handling: labels shrunk to the logits' grid by nearest neighbour."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from deeplab_resnet.training.loss import prepare_label


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
