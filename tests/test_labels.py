"""Custom datasets: label maps, class names, label diagnosis, palettes and
restoring weights trained for another number of classes."""
import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from conftest import TINY_CONFIG, load_script, save_tiny_model, write_voc_pair
from deeplab_resnet.data.config import DataConfig, EvalDataConfig
from deeplab_resnet.data.reader import EvaluationReader, TrainingReader, load_pair
from deeplab_resnet import checkpoints
from deeplab_resnet import constants
from deeplab_resnet.data import label_checks
from deeplab_resnet.data import label_files
from deeplab_resnet.data import label_maps
from deeplab_resnet.images import decode_labels
from deeplab_resnet.model import build_model

# A sess.run that waits longer than this on a queue is a hang, not slowness.
RUN_TIMEOUT_MS = 20000

# Cityscapes-like: ids 7, 8, 11, 12, 13 are trained as 0..4; 0..6 are void.
CITY_MAP_TEXT = """# source -> train id
7 0     # road
8: 1
11-13 2-4
0-6 -> 255
"""
CITY_TRAIN_TO_SOURCE = {0: 7, 1: 8, 2: 11, 3: 12, 4: 13}


def write(path, text):
    with open(str(path), "w") as f:
        f.write(text)
    return str(path)


def to_source_ids(train_ids, seed=0):
    """Train ids -> Cityscapes-like source ids; ignored pixels get 0..6 or 255."""
    rng = np.random.RandomState(seed)
    source = np.zeros_like(train_ids)
    for train_id, value in CITY_TRAIN_TO_SOURCE.items():
        source[train_ids == train_id] = value
    void = train_ids == constants.IGNORE_LABEL
    source[void] = rng.choice([0, 3, 6, 255], size=int(void.sum()))
    return source


# --------------------------------------------------------------- label maps
def test_text_label_map_with_ranges_comments_and_pass_through(tmp_path):
    label_map = label_maps.read_label_map(write(tmp_path / "map.txt", CITY_MAP_TEXT),
                                          num_classes=5)
    expected = np.full(256, -1)
    expected[[7, 8, 11, 12, 13]] = [0, 1, 2, 3, 4]
    expected[0:7] = 255
    expected[255] = 255  # the ignore label passes through
    np.testing.assert_array_equal(label_map.table, expected)
    np.testing.assert_array_equal(label_map.unmapped([0, 7, 9, 200, 255]), [9, 200])


def test_json_label_map_with_default_equals_its_text_form(tmp_path):
    json_map = label_maps.read_label_map(write(tmp_path / "map.json", json.dumps(
        {"7": 0, "8": 1, "11-13": "2-4", "255": 3, "*": 255})), num_classes=5)
    text_map = label_maps.read_label_map(write(tmp_path / "map.txt",
                                               "7 0\n8 1\n11-13 2-4\n255 3\n* 255\n"),
                                         num_classes=5)
    np.testing.assert_array_equal(json_map.table, text_map.table)
    # An explicit entry for the ignore label wins over passing it through.
    assert json_map.table[255] == 3
    assert json_map.table[9] == 255 and not json_map.unmapped(np.arange(256)).size
    label = np.array([[7, 8, 9], [13, 255, 0]], np.uint8)
    np.testing.assert_array_equal(json_map.apply(label), [[0, 1, 255], [4, 3, 255]])
    histogram = np.bincount(label.ravel(), minlength=256)
    np.testing.assert_array_equal(json_map.map_histogram(histogram),
                                  np.bincount(json_map.apply(label).ravel(),
                                              minlength=256))


@pytest.mark.parametrize("text, message", [
    ("7 0\n8 5\n", r"line 2: target 5 is neither a class id 0..4 nor the ignore"),
    ("7 0\n7 1\n", r"value 7 is listed twice \(line 1 and line 2\)"),
    ("300 1\n", r"line 1: source 300 is not an 8-bit label value"),
    ("0-3 0-1\n", r"line 1: 4 source values but 2 targets"),
    ("7 0 1\n", r"line 1: '7 0 1' is not 'SOURCE TARGET'"),
    ("seven 0\n", r"line 1: 'seven' is not a value or a range"),
    ("* 1\n* 2\n", r"'\*' takes one target and may appear once"),
    ("# nothing\n", r"lists no values"),
    ('{"7": 0, "8": [1]}', r"key '8': the target must be a number"),
    ('{"7": 0,}', r"is not valid JSON"),
    ('[[7, 0]]', r"must be a JSON object"),
])
def test_bad_label_maps_say_where(tmp_path, text, message):
    name = "map.json" if text.startswith(("{", "[")) else "map.txt"
    with pytest.raises(ValueError, match=message):
        label_maps.read_label_map(write(tmp_path / name, text), num_classes=5)


def test_missing_label_map_is_an_io_error(tmp_path):
    with pytest.raises(IOError, match="--label-map .*nope.txt.* cannot be read"):
        label_maps.read_label_map(str(tmp_path / "nope.txt"), num_classes=5)


@pytest.fixture
def city_dataset(tmp_path):
    """Two copies of one dataset: labels in train ids, and in source ids.

    Returns (data_dir, train_list, source_list, map_path).
    """
    root = str(tmp_path / "city")
    train_lines, source_lines = [], []
    os.makedirs(os.path.join(root, "SourceIds"))
    for i in range(3):
        name = "im%d" % i
        _, label = write_voc_pair(root, name, (25 + 2 * i, 30 - i), num_classes=5,
                                  seed=20 + i, label_mode="L")
        Image.fromarray(to_source_ids(label, seed=i)).save(
            os.path.join(root, "SourceIds", name + ".png"))
        train_lines.append("/JPEGImages/%s.jpg /SegmentationClassAug/%s.png\n"
                           % (name, name))
        source_lines.append("/JPEGImages/%s.jpg /SourceIds/%s.png\n" % (name, name))
    train_list = write(os.path.join(root, "train_ids.txt"), "".join(train_lines))
    source_list = write(os.path.join(root, "source_ids.txt"), "".join(source_lines))
    map_path = write(os.path.join(root, "map.txt"), CITY_MAP_TEXT)
    return root, train_list, source_list, map_path


def fetch_labels(reader, count, fetch):
    coord = reader.coord
    with tf.Session() as sess:
        threads = reader.start(sess)
        try:
            return [sess.run(fetch, options=tf.RunOptions(timeout_in_ms=RUN_TIMEOUT_MS))
                    for _ in range(count)]
        finally:
            coord.request_stop()
            try:
                coord.join(threads, stop_grace_period_secs=5)
            except tf.errors.OpError:
                pass  # A reader failure the test provoked and checks.


def test_reader_maps_labels_as_it_reads_them(city_dataset):
    root, train_list, source_list, map_path = city_dataset
    reader = EvaluationReader(EvalDataConfig(root, source_list, ignore_label=255,
                                             num_classes=5, label_map=map_path),
                              coord=tf.train.Coordinator())
    reader.check()
    fetched = fetch_labels(reader, 3, reader.label)
    for label, path in zip(fetched, reader.label_list):
        source = np.array(Image.open(path))
        assert set(np.unique(source)) - {0, 3, 6, 255, 7, 8, 11, 12, 13} == set()
        expected = np.full_like(source, 255)
        for train_id, value in CITY_TRAIN_TO_SOURCE.items():
            expected[source == value] = train_id
        np.testing.assert_array_equal(label[0, ..., 0], expected)


def test_training_reader_maps_and_pads_with_ignore(city_dataset):
    root, _, source_list, map_path = city_dataset
    reader = TrainingReader(DataConfig(root, source_list, input_size=(40, 40),
                                       random_mirror=True, ignore_label=255,
                                       label_map=map_path), coord=tf.train.Coordinator(),
                            num_classes=5)
    _, label_batch = reader.dequeue(3)
    for batch in fetch_labels(reader, 2, label_batch):
        assert set(np.unique(batch)) <= {0, 1, 2, 3, 4, 255}
        assert ((batch >= 1) & (batch <= 4)).any()
        # Images are at most 29x30: the rest is padding.
        assert (batch[:, 29:] == 255).all() and (batch[:, :, 30:] == 255).all()


def test_unmapped_values_are_errors_naming_the_file(city_dataset, tmp_path):
    root, _, source_list, _ = city_dataset
    partial = write(tmp_path / "partial.txt", "7 0\n8 1\n11 2\n12 3\n13 4\n")
    reader = EvaluationReader(EvalDataConfig(root, source_list, ignore_label=255,
                                             num_classes=5, label_map=partial),
                              coord=tf.train.Coordinator())
    with pytest.raises(ValueError, match=r"im0.png has values \[.*\] that "
                                         r"--label-map .*partial.txt does not list"
                                         r".*'\* 255'"):
        reader.check()
    with pytest.raises(tf.errors.OpError):
        fetch_labels(reader, 1, reader.label)
    with pytest.raises(ValueError, match="im0.png has values .* does not list"):
        reader.raise_if_failed()


def test_evaluate_with_a_label_map_scores_as_on_premapped_labels(city_dataset, tmp_path,
                                                                 capsys):
    root, train_list, source_list, map_path = city_dataset
    model_dir = str(tmp_path / "model")
    save_tiny_model(model_dir, num_classes=5, seed=4)
    evaluate = load_script("evaluate")
    results = []
    for data_list, extra in ((train_list, []), (source_list, ["--label-map", map_path])):
        confusion = str(tmp_path / ("c%d.npy" % len(results)))
        assert evaluate.main(["--data-dir", root, "--data-list", data_list,
                              "--restore-from", model_dir, "--num-classes", "5",
                              "--save-confusion", confusion] + extra) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        results.append((float(last.split()[1]), np.load(confusion)))
    (premapped_miou, premapped), (mapped_miou, mapped) = results
    np.testing.assert_array_equal(mapped, premapped)
    assert mapped_miou == premapped_miou
    assert premapped.sum() > 0 and 0 < premapped_miou < 1
    # The source ids alone are no class ids: without the map it is an error.
    with pytest.raises(ValueError, match=r"has values \[.*\], which are neither"):
        evaluate.main(["--data-dir", root, "--data-list", source_list,
                       "--restore-from", model_dir, "--num-classes", "5"])


# -------------------------------------------------------------- class names
def test_class_names_from_file_voc_or_generic(tmp_path):
    path = write(tmp_path / "names.txt", "sky\n\nroad\ncar\n")
    assert label_maps.class_names(3, path) == ["sky", "road", "car"]
    assert label_maps.class_names(21) == list(constants.VOC_CLASSES)
    assert label_maps.class_names(3) == ["class_0", "class_1", "class_2"]
    with pytest.raises(ValueError, match="has 3 names but --num-classes is 4"):
        label_maps.class_names(4, path)
    with pytest.raises(IOError, match="--class-names .*nope.txt.* cannot be read"):
        label_maps.class_names(3, str(tmp_path / "nope.txt"))


# ------------------------------------------------------------------ palette
def test_palette_follows_the_voc_bit_rule_for_all_256_values():
    # VOCdevkit's labelcolormap: bit 3k+c of the id is bit 7-k of channel c.
    for value in range(256):
        expected = [sum(((value >> (3 * k + c)) & 1) << (7 - k) for k in range(3))
                    for c in range(3)]
        assert list(constants.PALETTE[value]) == expected
    assert len({tuple(c) for c in constants.PALETTE}) == 256
    ids = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    np.testing.assert_array_equal(label_files.colour_to_ids(decode_labels(ids)[0]),
                                  ids[0])


# ------------------------------------------------------------- diagnosis
def histogram_of(*value_counts):
    histogram = np.zeros(256, np.int64)
    for value, count in value_counts:
        histogram[value] = count
    return histogram


@pytest.mark.parametrize("histogram, message, fix", [
    (histogram_of((0, 90), (200, 10)), r"has values \[200\]",
     r"Only 0 and 200 occur: .*binary .*mask saved as 0/200.*'200 1'"),
    (histogram_of((0, 90), (10, 5), (120, 5), (255, 3)), r"has values \[120\]",
     r"multiple of 10 and dividing by 10 gives ids 0..12"),
    (histogram_of((0, 90), (38, 5), (75, 5), (220, 3)), r"has values \[38, 75, 220\]",
     r"gray levels of VOC's colours"),
    (histogram_of(*[(v, 1) for v in range(0, 250, 3)]),
     r"has values \[21, 24, .*\] \(77 values\)", r"84 distinct values.*JPEG"),
    (histogram_of((0, 90), (23, 4), (31, 4)), r"has values \[23, 31\]",
     r"--num-classes must be at least 32"),
])
def test_value_problems_explain_the_likely_cause(histogram, message, fix):
    problem = label_checks.value_problem("x.png", histogram, 21, 255)
    assert problem.kind == label_files.VALUES
    assert "neither class ids 0..20 nor the ignore label 255" in problem.message
    assert re.search(message, problem.message), problem.message
    assert re.search(fix, problem.fix), problem.fix
    assert label_checks.value_problem("x.png", histogram_of((0, 5), (20, 5), (255, 1)),
                                      21, 255) is None


@pytest.mark.parametrize("label_shape, fix", [
    ((40, 30), "Height and width are swapped"),
    ((15, 20), "the label was resized. Resize it to 40x30 with nearest neighbour"),
    ((30, 30), "check that the list pairs the right files"),
])
def test_size_problems(label_shape, fix):
    problem = label_checks.size_problem("l.png", label_shape, "i.jpg", (30, 40))
    assert problem.message == ("Label l.png is %dx%d but its image i.jpg is 30x40 "
                               "(HxW)." % label_shape)
    assert fix in problem.fix
    assert label_checks.size_problem("l.png", (30, 40), "i.jpg", (30, 40, 3)) is None


def test_colour_labels_are_diagnosed_and_voc_colours_convert_back(tmp_path):
    ids = np.array([[0, 1, 15], [20, 255, 7]], np.uint8)
    rendered = str(tmp_path / "rendered.png")
    Image.fromarray(constants.PALETTE[ids]).save(rendered)
    with pytest.raises(ValueError, match=r"rendered.png is a colour image \(mode RGB\)"
                                         r".*VOC palette colours \(ids \[0, 1, 7, 15, "
                                         r"20, 255\]\).*convert_colour_label"):
        label_files.load_label(rendered)
    converted = str(tmp_path / "ids.png")
    label_files.convert_colour_label(rendered, converted)
    np.testing.assert_array_equal(label_files.load_label(converted), ids)
    with pytest.raises(FileExistsError):
        label_files.convert_colour_label(rendered, converted)

    gray_rgb = str(tmp_path / "gray_rgb.png")
    Image.fromarray(np.stack([ids] * 3, axis=-1)).save(gray_rgb)
    with pytest.raises(ValueError, match=r"channels are equal.*convert\('L'\)"):
        label_files.load_label(gray_rgb)
    Image.open(gray_rgb).convert("L").save(gray_rgb)
    np.testing.assert_array_equal(label_files.load_label(gray_rgb), ids)

    own = str(tmp_path / "own.png")
    Image.fromarray(np.array([[[10, 20, 30], [0, 0, 0]]], np.uint8)).save(own)
    with pytest.raises(ValueError, match=r"its 2 colours \(e.g. \(0, 0, 0\), "
                                         r"\(10, 20, 30\)\).*colour table"):
        label_files.load_label(own)
    with pytest.raises(ValueError, match=r"1 colours are not in the palette"):
        label_files.convert_colour_label(own, str(tmp_path / "own_ids.png"))


def test_wide_labels_say_whether_values_fit_8_bits(tmp_path):
    small = str(tmp_path / "small.png")
    Image.fromarray(np.array([[0, 3], [255, 1]], np.uint16)).save(small)
    with pytest.raises(ValueError, match=r"mode I;16.*fits 8 bits \(largest 255\)"):
        label_files.load_label(small)
    big = str(tmp_path / "big.png")
    Image.fromarray(np.array([[0, 3], [1000, 1]], np.uint16)).save(big)
    with pytest.raises(ValueError, match=r"reach 1000, beyond 8 bits"):
        label_files.load_label(big)


def test_load_pair_checks_size_values_and_maps(tmp_path):
    image, label = write_voc_pair(str(tmp_path), "a", (20, 24), num_classes=5)
    image_path = str(tmp_path / "JPEGImages" / "a.jpg")
    label_path = str(tmp_path / "SegmentationClassAug" / "a.png")
    table = np.arange(256)
    table[1] = 4
    label_map = label_maps.LabelMap(table)
    _, mapped = load_pair(image_path, label_path, 5, 255, label_map)
    np.testing.assert_array_equal(mapped, np.where(label == 1, 4, label))
    with pytest.raises(ValueError, match="a.png has values"):
        load_pair(image_path, label_path, 2, 255)


def test_dataset_of_background_and_ignore_only_is_a_problem():
    binary = histogram_of((0, 900), (255, 100))
    problems, warnings = label_checks.dataset_problems(binary, 3, 21, 255)
    assert len(problems) == 1 and not warnings
    assert "10.0% are the ignore label 255" in problems[0].message
    assert "binary masks saved as 0/255" in problems[0].fix
    problems, warnings = label_checks.dataset_problems(histogram_of((0, 900)), 3, 21, 255)
    assert not problems and "Only class 0 occurs" in warnings[0].message
    assert label_checks.dataset_problems(histogram_of((0, 9), (4, 1), (255, 1)),
                                         3, 21, 255) == ([], [])


def test_sample_indices_are_a_sorted_reproducible_subset():
    first = label_checks.sample_indices(50, 10, seed=3)
    assert len(set(first)) == 10 and list(first) == sorted(first)
    np.testing.assert_array_equal(first, label_checks.sample_indices(50, 10, seed=3))
    np.testing.assert_array_equal(label_checks.sample_indices(5, 10), np.arange(5))
    np.testing.assert_array_equal(label_checks.sample_indices(5, None), np.arange(5))


# ----------------------------------------- restoring another class count
@pytest.fixture(scope="module")
def voc_weights(tmp_path_factory):
    """A 21-class TINY_CONFIG .npz."""
    _, npz = save_tiny_model(str(tmp_path_factory.mktemp("voc_model")))
    with np.load(npz) as data:
        return npz, {k: data[k] for k in data.files}


def restore_into_new_net(path, num_classes=5, **kwargs):
    """Restore ``path`` into a fresh TINY_CONFIG net; its variables' values."""
    with tf.Graph().as_default():
        images = tf.placeholder(tf.float32, [1, 33, 33, 3])
        net, _ = build_model(images, num_classes, config=TINY_CONFIG)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            checkpoints.restore(sess, path, net, **kwargs)
            return sess.run(net.variables)


def test_restoring_other_classes_skips_and_logs_the_classifier_variables(
        voc_weights, caplog):
    npz, weights = voc_weights
    caplog.set_level(logging.INFO)
    values = restore_into_new_net(npz, skip_mismatched_classifier=True)
    classifier = sorted(k for k in values if k.startswith("fc1_voc12"))
    assert classifier == ["fc1_voc12_c0/biases", "fc1_voc12_c0/weights",
                          "fc1_voc12_c1/biases", "fc1_voc12_c1/weights"]
    assert "has a classifier for another number of classes" in caplog.text
    text = lambda shape: "x".join(map(str, shape))
    for name in classifier:
        file_shape = weights[name].shape
        assert file_shape[-1] == 21
        assert "%s (file %s, network %s)" % (
            name, text(file_shape), text(file_shape[:-1] + (5,))) in caplog.text
    for name, value in values.items():
        if not name.startswith("fc1_voc12"):
            np.testing.assert_array_equal(value, weights[name])
    assert values["fc1_voc12_c0/biases"].shape == (5,)


def test_restoring_needs_everything_but_the_classifier(voc_weights, tmp_path):
    _, weights = voc_weights
    broken = dict(weights)
    del broken["res2a_branch1/weights"]
    broken["conv1/weights"] = broken["conv1/weights"][:, :, :, :2]
    path = str(tmp_path / "broken.npz")
    np.savez(path, **broken)
    with pytest.raises(ValueError, match=r"variables with no weights: "
                                         r"res2a_branch1/weights.*shape mismatches: "
                                         r"conv1/weights: file \(7, 7, 3, 2\)"):
        restore_into_new_net(path, skip_mismatched_classifier=True)
    with pytest.raises(ValueError, match="variables with no weights: "
                                         "res2a_branch1/weights"):
        restore_into_new_net(path, num_classes=21, skip_classifier=True)


def test_a_file_without_classifier_trains_a_new_one(voc_weights, tmp_path, caplog):
    _, weights = voc_weights
    body = {k: v for k, v in weights.items() if not k.startswith("fc1_voc12")}
    path = str(tmp_path / "init.npz")
    np.savez(path, **body)
    values = restore_into_new_net(path, skip_mismatched_classifier=True)
    assert "has no classifier" in caplog.text
    assert "fc1_voc12_c1/weights (not in the file)" in caplog.text
    np.testing.assert_array_equal(values["conv1/weights"], weights["conv1/weights"])
    with pytest.raises(ValueError, match="variables with no weights: fc1_voc12_c0"):
        restore_into_new_net(path)
