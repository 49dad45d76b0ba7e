"""The workers' agreement on flags (training/agreement.py), without starting workers.

Two workers' settings are encoded and reduced as the collective would (the
largest of each entry, and minus the smallest); each setting that differs
must be refused naming its flag. A train.py flag that is neither agreed nor
listed in ``agreement.MAY_DIFFER`` fails here, so a new flag needs a decision.
"""
import os

import numpy as np
import pytest

from conftest import load_script
from deeplab_resnet.training import agreement

train_script = load_script("train")
flag_tables = load_script(os.path.join("misc", "flag_tables"))

LIST = ("/JPEGImages/a.jpg /SegmentationClassAug/a.png\n"
        "/JPEGImages/b.jpg /SegmentationClassAug/b.png\n")
MAP = "0 0\n1 1\n2 2\n* 255\n"
SWAPPED_MAP = "0 0\n1 2\n2 1\n* 255\n"

# For each agreed setting: the second worker's flags (the first runs with none).
OTHER = {
    "--blocks": ["--blocks", "1,1,1,2"], "--base-depth": ["--base-depth", "32"],
    "--aspp-rates": ["--aspp-rates", "6,12"], "--num-classes": ["--num-classes", "5"],
    "--ignore-label": ["--ignore-label", "254"], "--input-size": ["--input-size", "321,320"],
    "--train-scales": ["--train-scales", "1,0.5"], "--train-last-only": ["--train-last-only"],
    "--is-training": ["--is-training"], "--bf16": ["--bf16"],
    "--batch-size": ["--batch-size", "12"], "--learning-rate": ["--learning-rate", "1e-3"],
    "--momentum": ["--momentum", "0.8"], "--power": ["--power", "1"],
    "--num-steps": ["--num-steps", "100"], "--weight-decay": ["--weight-decay", "0"],
    "--grad-update-every": ["--grad-update-every", "2"], "--num-gpus": ["--num-gpus", "2"],
    "--random-scale": ["--random-scale"], "--scale-set": ["--scale-set", "0.5,1"],
    "--random-mirror": ["--random-mirror"], "--no-shuffle": ["--no-shuffle"],
    "--skip-bad-images": ["--skip-bad-images"], "--save-pred-every": ["--save-pred-every", "7"],
    "--label-map": ["--label-map", "{swapped}"], "--data-list": ["--data-list", "{reordered}"],
}


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, text in (("list", LIST), ("reordered", "".join(reversed(LIST.splitlines(True)))),
                       ("same_list", LIST.replace("\n", "  \r\n") + "\n\n"),
                       ("map", MAP), ("swapped", SWAPPED_MAP), ("same_map", "# a comment\n" + MAP)):
        paths[name] = str(tmp_path / (name + ".txt"))
        with open(paths[name], "w", newline="") as f:
            f.write(text)
    return paths


def worker_settings(files, *argv):
    argv = [a.format(**files) for a in argv]
    base = ["--data-list", files["list"], "--label-map", files["map"]]
    return agreement.settings(train_script.train_config(train_script.get_arguments(base + argv)))


def reduce(*vectors):
    """What the agreement collective returns: [max, -min] over the workers."""
    stacked = np.stack(vectors)
    return np.stack([stacked.max(axis=0), (-stacked).max(axis=0)])


def refusal(first, second):
    """The error of ``agreement.check`` on each worker, or None where none."""
    reduced = reduce(agreement.encode(first), agreement.encode(second))
    messages = []
    for pairs in (first, second):
        try:
            agreement.check(pairs, reduced)
            messages.append(None)
        except ValueError as err:
            messages.append(str(err))
    return messages


def test_every_setting_has_a_case_here(files):
    assert [flag for flag, _ in worker_settings(files)] == list(OTHER)


@pytest.mark.parametrize("flag", sorted(OTHER))
def test_each_setting_that_differs_is_refused_naming_its_flag(files, flag):
    first, second = worker_settings(files), worker_settings(files, *OTHER[flag])
    for message in refusal(first, second):
        assert message is not None and message.startswith("%s differs between the workers ("
                                                          % flag), message


def test_the_same_settings_agree_and_files_count_by_content(files):
    first = worker_settings(files)
    same = worker_settings(files, "--label-map", files["same_map"],
                           "--data-list", files["same_list"], "--data-dir", "/elsewhere")
    assert refusal(first, same) == [None, None]


def test_a_long_scale_set_travels_as_a_digest(files):
    long_set = ",".join("%g" % (0.5 + 0.1 * i) for i in range(11))
    first = worker_settings(files, "--scale-set", long_set)
    assert refusal(first, worker_settings(files, "--scale-set", long_set)) == [None, None]
    message = refusal(first, worker_settings(files, "--scale-set", long_set + ",2"))[0]
    assert message.startswith("--scale-set differs between the workers (content ")


def test_every_train_flag_is_agreed_or_listed_as_free_to_differ(files):
    """A new train.py flag must be decided: added to ``agreement.settings`` if it
    changes the model or the update, else to ``MAY_DIFFER`` with the reason."""
    parser = flag_tables.script_parser("train.py", "get_arguments")
    flags = {action.option_strings[-1] for action in parser._actions
             if action.option_strings and action.dest != "help"}
    agreed = {flag for flag, _ in worker_settings(files)}
    free = set(agreement.MAY_DIFFER)
    assert not agreed & free, agreed & free
    assert flags - agreed - free == set(), "undecided train.py flags"
    assert (agreed | free) - flags == set(), "not train.py flags"
