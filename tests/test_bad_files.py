"""A bad file given to a flag ends a script with one line naming the file and
the flag: binary text files, empty weight files, a list with no readable pair."""
import logging
import os

import pytest

from conftest import REPO_ROOT, run_script
from deeplab_resnet.data import label_maps
from deeplab_resnet.data.lists import read_labeled_image_list
from helpers.training import run_train, train_argv, write_dataset

BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


def errors_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def binary_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BINARY)
    return str(path)


# ------------------------------------------------------------ text files
def test_a_binary_list_file_names_the_file_and_data_list(tmp_path, caplog):
    data_dir = str(tmp_path / "data")
    write_dataset(data_dir)
    list_path = binary_file(tmp_path, "train.txt")
    assert run_train(train_argv(data_dir, list_path, str(tmp_path / "snap"))) == 2
    errors = errors_of(caplog)
    assert len(errors) == 1, errors
    assert "--data-list %s is not UTF-8 text (byte 0x89 at offset 0)" % list_path \
        in errors[0]
    assert "\n" not in errors[0]
    with pytest.raises(ValueError, match="--data-list .*train.txt is not UTF-8 text"):
        read_labeled_image_list(data_dir, list_path)


def test_binary_label_map_and_class_names_name_the_file_and_flag(tmp_path):
    path = binary_file(tmp_path, "map.txt")
    with pytest.raises(ValueError, match=r"^--label-map .*map.txt is not UTF-8 text "
                       r"\(byte 0x89 at offset 0\); give a text file.$"):
        label_maps.read_label_map(path, num_classes=21)
    path = binary_file(tmp_path, "names.txt")
    with pytest.raises(ValueError, match=r"^--class-names .*names.txt is not UTF-8 text"):
        label_maps.class_names(21, path)


# ---------------------------------------------------------- weight files
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04"])
def test_an_empty_or_truncated_npz_to_train_names_it_and_restore_from(
        tmp_path, caplog, content):
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    weights = tmp_path / "init.npz"
    weights.write_bytes(content)
    assert run_train(train_argv(data_dir, list_path, str(tmp_path / "snap"),
                                "--restore-from", str(weights))) == 2
    errors = errors_of(caplog)
    assert len(errors) == 1, errors
    assert "--restore-from %r is not a weight file written by convert.py" \
        % str(weights) in errors[0]


def test_an_empty_npz_to_export_is_one_line(tmp_path, caplog):
    weights = tmp_path / "model.npz"
    weights.write_bytes(b"")
    status = run_script(os.path.join(REPO_ROOT, "export.py"),
                        ["--restore-from", str(weights), "--output-dir",
                         str(tmp_path / "out")])
    assert status == 2
    errors = errors_of(caplog)
    assert len(errors) == 1 and "--restore-from %r" % str(weights) in errors[0], errors


# ---------------------------------------------------- --skip-bad-images
def test_skip_bad_images_with_no_readable_pair_refuses_before_step_1(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    images = os.path.join(data_dir, "JPEGImages")
    for name in os.listdir(images):
        with open(os.path.join(images, name), "r+b") as f:
            f.truncate(os.path.getsize(f.name) // 2)
    snapshot_dir = str(tmp_path / "snap")
    assert run_train(train_argv(data_dir, list_path, snapshot_dir,
                                "--skip-bad-images")) == 2
    errors = errors_of(caplog)
    assert len(errors) == 1, errors
    assert ("No image/label pair listed in %s (--data-list) can be read" % list_path
            in errors[0])
    assert not any(r.getMessage().startswith("step ") for r in caplog.records)
    assert not os.path.exists(snapshot_dir)
