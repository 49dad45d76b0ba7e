"""The VOC palette, label colouring and the network's input rule (BGR minus mean) and its inverse."""
import numpy as np

from deeplab_resnet import constants
from deeplab_resnet.images import bgr_minus_mean, decode_labels, inv_preprocess


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


# --------------------------------------------------------------- images
def test_inv_preprocess_round_trips_every_value():
    rgb = np.stack([np.arange(256), np.arange(256)[::-1], np.roll(np.arange(256), 7)],
                   axis=-1).astype(np.uint8).reshape(2, 16, 8, 3)
    # What the reader feeds the network: float32 BGR minus the mean.
    bgr = rgb[..., ::-1].astype(np.float32) - constants.IMG_MEAN
    np.testing.assert_array_equal(bgr_minus_mean(rgb.astype(np.float32)), bgr)
    restored = inv_preprocess(bgr)
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, rgb)
    np.testing.assert_array_equal(inv_preprocess(bgr, num_images=1), rgb[:1])
