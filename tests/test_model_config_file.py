"""A corrupt model_config.json is one line naming the file and what to do, in every script."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT, run_script
from deeplab_resnet import checkpoints, constants
from helpers.training import TINY_FLAGS, write_dataset

GOOD = {"blocks": [1, 1, 1, 1], "base_depth": 8, "aspp_rates": [6, 12], "num_classes": 21}
BAD = [
    ({"blocks": 5}, "'blocks' must be a list of four positive integers (res2..res5), got 5"),
    ({"blocks": [1, 1, 1]}, "'blocks' must be a list of four"),
    ({"blocks": [1, 0, 1, 1]}, "'blocks' must be a list of four"),
    ({"blocks": [1, True, 1, 1]}, "'blocks' must be a list of four"),
    ({"base_depth": "8"}, "'base_depth' must be a positive integer, got \"8\""),
    ({"base_depth": 8.0}, "'base_depth' must be a positive integer, got 8.0"),
    ({"base_depth": -8}, "'base_depth' must be a positive integer, got -8"),
    ({"aspp_rates": []}, "'aspp_rates' must be a non-empty list"),
    ({"aspp_rates": [6, "x"]}, "'aspp_rates' must be a non-empty list"),
    ({"num_classes": 0}, "'num_classes' must be a positive integer or null, got 0"),
    ({"extra": 1}, "unknown key(s) 'extra'"),
]


def write_config(directory, text):
    with open(os.path.join(directory, constants.MODEL_CONFIG_FILE), "w") as f:
        f.write(text)


@pytest.mark.parametrize("change, message", BAD)
def test_each_bad_value_is_named_with_the_file(tmp_path, change, message):
    write_config(str(tmp_path), json.dumps(dict(GOOD, **change)))
    with pytest.raises(ValueError) as error:
        checkpoints.load_model_config(str(tmp_path))
    text = str(error.value)
    assert text.startswith(str(tmp_path / constants.MODEL_CONFIG_FILE) + ": ")
    assert message in text
    assert "delete the file" in text


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object, not list"),
    ('{"blocks": [1, 1, 1, 1]}', "key(s) 'base_depth', 'aspp_rates' missing")])
def test_a_file_that_is_not_a_config_object_is_named(tmp_path, text, message):
    write_config(str(tmp_path), text)
    with pytest.raises(ValueError, match=str(tmp_path)) as error:
        checkpoints.load_model_config(str(tmp_path))
    assert message in str(error.value)


def test_a_good_file_reads(tmp_path):
    write_config(str(tmp_path), json.dumps(GOOD))
    classes, config = checkpoints.load_model_config(str(tmp_path))
    assert classes == 21 and config.blocks == (1, 1, 1, 1) and config.aspp_rates == (6, 12)


@pytest.mark.parametrize("script", ["train", "evaluate", "inference", "export"])
def test_every_script_stops_on_it_in_one_line(tiny_model, tmp_path, script, caplog, capsys):
    snap = str(tmp_path / "snap")
    shutil.copytree(tiny_model.directory, snap)
    write_config(snap, json.dumps(dict(GOOD, blocks=5)))
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir)
    prefix = os.path.join(snap, "model.ckpt-0")
    photo = str(tmp_path / "photo.png")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(photo)
    argv = {
        "train": ["--data-dir", data_dir, "--data-list", list_path, "--snapshot-dir", snap,
                  "--input-size", "33,33", "--batch-size", "2", "--num-steps", "1"]
                 + TINY_FLAGS,
        "evaluate": ["--data-dir", data_dir, "--data-list", list_path,
                     "--restore-from", prefix],
        "inference": [photo, "--model-weights", prefix, "--save-dir", str(tmp_path / "out")],
        "export": ["--restore-from", prefix, "--output-dir", str(tmp_path / "exported")],
    }[script]
    assert run_script(os.path.join(REPO_ROOT, script + ".py"), argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= 40]
    assert len(errors) == 1 and "model_config.json: 'blocks' must be" in errors[0], errors
    assert "Traceback" not in capsys.readouterr().err
