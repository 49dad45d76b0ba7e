"""The list-file reader: decoding, Caffe preprocessing, augmentation, errors."""
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from conftest import write_voc_pair
from deeplab_resnet.data.reader import (
    EvaluationReader, TrainingReader, load_image, load_label, read_labeled_image_list)
from deeplab_resnet.data.augment import image_mirroring, image_scaling
from deeplab_resnet.data.config import DataConfig, EvalDataConfig
from deeplab_resnet import constants
from deeplab_resnet.data import label_checks

# A sess.run that waits longer than this on a queue is a hang, not slowness.
RUN_TIMEOUT_MS = 20000


def run(sess, fetches):
    return sess.run(fetches, options=tf.RunOptions(timeout_in_ms=RUN_TIMEOUT_MS))


def write_list(path, pairs):
    with open(path, "w") as f:
        for image, label in pairs:
            f.write("%s %s\n" % (image, label))
    return path


def pair_entries(names):
    return [("/JPEGImages/%s.jpg" % n, "/SegmentationClassAug/%s.png" % n)
            for n in names]


def rgb_from_file(path):
    return np.asarray(Image.open(path).convert("RGB"))


def label_from_file(path):
    return np.asarray(Image.open(path))


@pytest.fixture
def session():
    coord = tf.train.Coordinator()
    sessions = []

    def start(*readers):
        sess = tf.Session()
        sessions.append((sess, readers[0].start(sess) if readers else []))
        return sess

    yield coord, start
    coord.request_stop()
    for sess, threads in sessions:
        try:
            coord.join(threads, stop_grace_period_secs=5)
        except tf.errors.OpError:
            pass  # A reader failure the test provoked and checked.
        sess.close()


# ---------------------------------------------------------------- list file
def test_list_paths_are_relative_to_data_dir(voc_dataset):
    data_dir, list_path, names = voc_dataset
    images, labels = read_labeled_image_list(data_dir, list_path)
    assert images == [os.path.join(data_dir, "JPEGImages", n + ".jpg") for n in names]
    assert labels == [os.path.join(data_dir, "SegmentationClassAug", n + ".png")
                      for n in names]


def test_missing_files_are_named_with_line_numbers(voc_dataset):
    data_dir, list_path, names = voc_dataset
    entries = pair_entries(names) + [
        ("/JPEGImages/gone.jpg", "/SegmentationClassAug/%s.png" % names[0])]
    write_list(list_path, entries)
    with pytest.raises(IOError) as err:
        read_labeled_image_list(data_dir, list_path)
    missing = os.path.join(data_dir, "JPEGImages", "gone.jpg")
    assert "line 5: " + missing in str(err.value)
    assert "line 1" not in str(err.value)


def test_empty_and_malformed_lists(voc_dataset, tmp_path):
    data_dir, list_path, names = voc_dataset
    empty = write_list(str(tmp_path / "empty.txt"), [])
    with pytest.raises(ValueError, match="no image/label pairs"):
        read_labeled_image_list(data_dir, empty)
    with open(list_path, "a") as f:
        f.write("/JPEGImages/%s.jpg\n" % names[0])
    with pytest.raises(ValueError, match="line 5 is not an 'IMAGE LABEL' pair"):
        read_labeled_image_list(data_dir, list_path)
    with pytest.raises(IOError, match="does not exist"):
        read_labeled_image_list(data_dir, str(tmp_path / "nope.txt"))


# ------------------------------------------------------------------ decoding
def test_palette_and_grayscale_labels_read_as_the_same_ids(tmp_path):
    ids = np.array([[0, 1, 15], [20, 255, 7]], np.uint8)
    gray = str(tmp_path / "gray.png")
    Image.fromarray(ids, mode="L").save(gray)
    palette = Image.fromarray(ids, mode="L").convert("P")
    palette.putpalette(constants.PALETTE.ravel().tolist())
    palette.save(str(tmp_path / "palette.png"))
    # The palette file stores colours for display; decode_png would return them.
    assert np.array_equal(np.asarray(Image.open(str(tmp_path / "palette.png"))
                                     .convert("RGB")), constants.PALETTE[ids])
    np.testing.assert_array_equal(load_label(gray), ids)
    np.testing.assert_array_equal(load_label(str(tmp_path / "palette.png")), ids)
    assert load_label(gray).dtype == np.uint8


def test_shared_voc_label_in_both_forms(shared_sample):
    palette = load_label(shared_sample["label"])
    gray = load_label(shared_sample["label_gray"])
    np.testing.assert_array_equal(palette, gray)
    assert set(np.unique(palette)) == {0, 2, 15, 255}
    assert palette.shape == load_image(shared_sample["image"]).shape[:2]


def test_colour_and_wide_labels_are_rejected(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    colour = str(tmp_path / "colour.png")
    Image.fromarray(constants.PALETTE[ids]).save(colour)
    with pytest.raises(ValueError, match="colour.png is a colour image.*Convert it"):
        load_label(colour)
    wide = str(tmp_path / "wide.png")
    Image.fromarray(ids.astype(np.uint16)).save(wide)
    with pytest.raises(ValueError, match="wide.png has image mode I;16.*8-bit"):
        load_label(wide)


def test_load_image_converts_every_photo_mode_to_rgb(tmp_path):
    rgb = np.random.RandomState(0).randint(0, 256, (5, 7, 3)).astype(np.uint8)
    gray = rgb[..., 0]
    cases = {
        "gray.png": (Image.fromarray(gray), np.stack([gray] * 3, axis=-1)),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full((5, 7), 9, np.uint8)])),
                     rgb),
        "palette.png": (Image.fromarray(gray).convert("P"), None),
        "wide.png": (Image.fromarray(gray.astype(np.uint16) * 257),
                     np.stack([gray] * 3, axis=-1)),
        # CMYK (0, 255, 255, 0) is pure red.
        "cmyk.jpg": (Image.new("CMYK", (7, 5), (0, 255, 255, 0)), None),
    }
    for name, (image, expected) in cases.items():
        path = str(tmp_path / name)
        image.save(path)
        loaded = load_image(path)
        assert loaded.shape == (5, 7, 3) and loaded.dtype == np.uint8, name
        if expected is not None:
            np.testing.assert_array_equal(loaded, expected, err_msg=name)
    palette = load_image(str(tmp_path / "palette.png"))
    np.testing.assert_array_equal(palette, np.stack([gray] * 3, axis=-1))
    cmyk = load_image(str(tmp_path / "cmyk.jpg")).astype(int)
    assert (cmyk[..., 0] > 240).all() and (cmyk[..., 1:] < 15).all()


def test_unreadable_image_names_the_file(tmp_path):
    path = str(tmp_path / "broken.jpg")
    with open(path, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(IOError, match="broken.jpg"):
        load_image(path)
    with pytest.raises(IOError, match="broken.jpg"):
        load_label(path)


# ------------------------------------------------------------ reader graph
def test_evaluation_reader_is_bgr_minus_mean_in_list_order(voc_dataset, session):
    data_dir, list_path, names = voc_dataset
    coord, start = session
    reader = EvaluationReader(EvalDataConfig(data_dir, list_path, ignore_label=255),
                              coord=coord)
    assert reader.num_images == 4
    assert reader.image.get_shape().as_list() == [1, None, None, 3]
    sess = start(reader)
    for name in names * 2:
        image, label, path = run(sess, [reader.image, reader.label, reader.image_path])
        image_file = os.path.join(data_dir, "JPEGImages", name + ".jpg")
        assert path.decode() == image_file
        assert image.dtype == np.float32 and image.shape == (1, 33, 33, 3)
        expected = (rgb_from_file(image_file)[..., ::-1].astype(np.float32)
                    - constants.IMG_MEAN)
        np.testing.assert_allclose(image[0], expected, atol=1e-4)
        expected_label = label_from_file(
            os.path.join(data_dir, "SegmentationClassAug", name + ".png"))
        assert label.shape == (1, 33, 33, 1)
        np.testing.assert_array_equal(label[0, ..., 0], expected_label)


def test_shared_palette_and_gray_labels_through_the_reader(shared_sample, tmp_path,
                                                           session):
    coord, start = session
    data_dir = os.path.dirname(shared_sample["image"])
    entries = [("/" + os.path.basename(shared_sample["image"]),
                "/" + os.path.basename(shared_sample[key]))
               for key in ("label", "label_gray")]
    list_path = write_list(str(tmp_path / "list.txt"), entries)
    reader = EvaluationReader(EvalDataConfig(data_dir, list_path, ignore_label=255),
                              coord=coord)
    sess = start(reader)
    first, second = (run(sess, reader.label)[0, ..., 0] for _ in range(2))
    np.testing.assert_array_equal(first, second)
    assert set(np.unique(first)) == {0, 2, 15, 255}


def test_training_batches_pad_with_mean_and_ignore(voc_dataset, session):
    """A 41x41 crop of a 33x33 pair: the pair sits top-left, the rest is padding."""
    data_dir, list_path, names = voc_dataset
    coord, start = session
    reader = TrainingReader(DataConfig(data_dir, list_path, input_size=(41, 41),
                                       ignore_label=255, shuffle=False), coord=coord)
    image_batch, label_batch = reader.dequeue(2)
    assert image_batch.get_shape().as_list() == [2, 41, 41, 3]
    assert label_batch.get_shape().as_list() == [2, 41, 41, 1]
    sess = start(reader)
    images, labels = run(sess, [image_batch, label_batch])
    assert images.dtype == np.float32 and labels.dtype == np.uint8
    for i, name in enumerate(names[:2]):
        rgb = rgb_from_file(os.path.join(data_dir, "JPEGImages", name + ".jpg"))
        expected = rgb[..., ::-1].astype(np.float32) - constants.IMG_MEAN
        np.testing.assert_allclose(images[i, :33, :33], expected, atol=1e-4)
        assert np.all(images[i, 33:] == 0) and np.all(images[i, :, 33:] == 0)
        label = label_from_file(os.path.join(data_dir, "SegmentationClassAug",
                                             name + ".png"))
        np.testing.assert_array_equal(labels[i, :33, :33, 0], label)
        assert np.all(labels[i, 33:] == 255) and np.all(labels[i, :, 33:] == 255)


def test_augmented_labels_stay_in_the_label_set(voc_dataset, session):
    data_dir, list_path, names = voc_dataset
    coord, start = session
    label_set = set()
    for name in names:
        label_set |= set(np.unique(label_from_file(
            os.path.join(data_dir, "SegmentationClassAug", name + ".png"))).tolist())
    reader = TrainingReader(DataConfig(data_dir, list_path, input_size=(21, 25),
                                       random_scale=True, random_mirror=True,
                                       ignore_label=255, reader_threads=2), coord=coord)
    image_batch, label_batch = reader.dequeue(4)
    sess = start(reader)
    for _ in range(5):
        images, labels = run(sess, [image_batch, label_batch])
        assert images.shape == (4, 21, 25, 3) and labels.shape == (4, 21, 25, 1)
        assert set(np.unique(labels).tolist()) <= label_set | {255}


def test_scaling_resizes_both_and_mirroring_flips_both():
    tf.set_random_seed(3)
    columns = np.tile(np.arange(10, dtype=np.float32), (6, 1))
    image = tf.constant(np.stack([columns] * 3, axis=-1))
    label = tf.constant(columns[..., None].astype(np.uint8))
    scaled = image_scaling(image, label)
    flipped = image_mirroring(image, label)
    sizes, flips = set(), set()
    with tf.Session() as sess:
        for _ in range(20):
            (s_image, s_label), (f_image, f_label) = sess.run([scaled, flipped])
            height, width = s_label.shape[:2]
            assert s_image.shape[:2] == (height, width)
            assert 3 <= height <= 9 and 5 <= width <= 15
            assert set(np.unique(s_label)) <= set(range(10))
            sizes.add(width)
            flipped_now = f_label[0, 0, 0] == 9
            flips.add(flipped_now)
            expected = columns[:, ::-1] if flipped_now else columns
            np.testing.assert_array_equal(f_label[..., 0], expected)
            np.testing.assert_array_equal(f_image[..., 1], expected)
    assert len(sizes) > 3 and flips == {True, False}


def test_bad_label_met_by_reader_threads_fails_instead_of_hanging(voc_dataset, session):
    data_dir, list_path, names = voc_dataset
    coord, start = session
    write_voc_pair(data_dir, "small", (20, 33))
    os.replace(os.path.join(data_dir, "SegmentationClassAug", "small.png"),
               os.path.join(data_dir, "SegmentationClassAug", "wrong.png"))
    entries = pair_entries(names) + [("/JPEGImages/%s.jpg" % names[0],
                                      "/SegmentationClassAug/wrong.png")]
    write_list(list_path, entries)
    reader = TrainingReader(DataConfig(data_dir, list_path, input_size=(17, 17),
                                       ignore_label=255, shuffle=False), coord=coord)
    image_batch, _ = reader.dequeue(5)
    sess = start(reader)
    with pytest.raises(tf.errors.OpError):
        run(sess, image_batch)
    with pytest.raises(ValueError, match=r"wrong.png is 20x33 but its image .*img0.jpg "
                                         r"is 33x33"):
        reader.raise_if_failed()


def test_label_values_checked_against_num_classes(voc_dataset, session):
    data_dir, list_path, names = voc_dataset
    coord, start = session
    reader = EvaluationReader(EvalDataConfig(data_dir, list_path, ignore_label=255,
                                             num_classes=2), coord=coord)
    sess = start(reader)
    with pytest.raises(tf.errors.OpError):
        run(sess, reader.label)
    with pytest.raises(ValueError, match=r"img0.png has values \[.*\], which are "
                                         r"neither class ids 0..1"):
        reader.raise_if_failed()


def test_check_reads_a_sample_of_pairs_and_names_a_bad_one(voc_dataset, monkeypatch):
    data_dir, list_path, names = voc_dataset
    coord = tf.train.Coordinator()
    reader = TrainingReader(DataConfig(data_dir, list_path, input_size=(33, 33),
                                       ignore_label=255), coord=coord,
                            num_classes=constants.NUM_CLASSES)
    reader.check()
    read = []
    original = label_checks.inspect_pair
    monkeypatch.setattr(label_checks, "inspect_pair",
                        lambda pair, **kw: read.append(pair[1]) or original(pair, **kw))
    reader.check(sample_size=2)
    assert len(read) == 2 and len(set(read)) == 2
    assert set(read) <= set(reader.label_list)
    label = os.path.join(data_dir, "SegmentationClassAug", names[2] + ".png")
    Image.open(label).convert("RGB").save(label)
    with pytest.raises(ValueError, match=names[2] + ".png is a colour image"):
        reader.check()
