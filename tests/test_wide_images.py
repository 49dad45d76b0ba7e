"""A 16-bit photo decodes by its format's range, never by the values it happens to hold."""
import numpy as np
import pytest
from PIL import Image

from deeplab_resnet.data.reader import load_image


def save16(tmp_path, name, values):
    path = str(tmp_path / name)
    Image.fromarray(np.asarray(values, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return path


@pytest.mark.parametrize("values, expected", [
    # A dark photo (largest value 255 of 65535) stays dark, not white.
    ([[0, 128, 255]], [[0, 0, 1]]),
    # A constant 256 is as dark as 255, not near-black after a jump.
    ([[256, 256, 256]], [[1, 1, 1]]),
    ([[257, 32896, 65535]], [[1, 128, 255]]),
])
def test_a_16_bit_png_is_scaled_from_0_65535_always(tmp_path, values, expected):
    loaded = load_image(save16(tmp_path, "p.png", values))
    np.testing.assert_array_equal(loaded, np.stack([np.asarray(expected, np.uint8)] * 3, -1))


def test_dark_and_bright_halves_of_one_photo_decode_alike(tmp_path):
    """The same pixel values give the same bytes whether or not the file
    also holds a value above 255."""
    dark = load_image(save16(tmp_path, "dark.png", [[200, 255]]))
    mixed = load_image(save16(tmp_path, "mixed.png", [[200, 255, 256]]))
    np.testing.assert_array_equal(dark[0, :2], mixed[0, :2])
