"""Training helpers the test modules share: train.py's flags for the tiny
network, train.py run in this process or as a script, small datasets."""
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from conftest import REPO_ROOT, TINY_CONFIG, load_script, write_voc_dataset
from deeplab_resnet import cli, constants
from deeplab_resnet.training.config import NetworkConfig

TINY_FLAGS = ["--blocks", ",".join(map(str, TINY_CONFIG.blocks)),
              "--base-depth", str(TINY_CONFIG.base_depth),
              "--aspp-rates", ",".join(map(str, TINY_CONFIG.aspp_rates))]


train_script = load_script("train")


def tiny_network(num_classes, **fields):
    """The ``NetworkConfig`` of the tiny network with ``num_classes`` classes."""
    return NetworkConfig(num_classes=num_classes, model=TINY_CONFIG, **fields)


def train_argv(data_dir, list_path, snapshot_dir, *extra):
    return (["--data-dir", data_dir, "--data-list", list_path,
             "--snapshot-dir", snapshot_dir, "--input-size", "33,33",
             "--batch-size", "2", "--num-steps", "2", "--save-pred-every", "1000"]
            + TINY_FLAGS + list(extra))


def run_train(argv):
    """train.py's main in this process, through run_main: its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(lambda: train_script.main(argv))
    return exit_info.value.code


def write_dataset(root, num_classes=constants.NUM_CLASSES, count=4):
    """conftest.write_voc_dataset, grayscale labels first; returns the list path."""
    return write_voc_dataset(root, count=count, num_classes=num_classes,
                             palette_first=False)[0]


def random_batch(rng, count, num_classes, size=33):
    """Small-valued images (logits stay O(1)) and labels with ignored pixels."""
    images = rng.normal(0.0, 1.0, (count, size, size, 3)).astype(np.float32)
    labels = rng.randint(0, num_classes, (count, size, size, 1)).astype(np.uint8)
    return images, labels


def read_events(snapshot_dir):
    tags = set()
    for name in os.listdir(snapshot_dir):
        if name.startswith("events.out.tfevents"):
            for event in tf.train.summary_iterator(os.path.join(snapshot_dir, name)):
                tags |= {value.tag for value in event.summary.value}
    return tags


def script(argv):
    command = [sys.executable, os.path.join(REPO_ROOT, "train.py")] + argv
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


class SignalOnLine(logging.Handler):
    """Sends this process ``signum`` when a log line matches ``pattern``
    (the handler runs in the thread that logs: the loop, or the signal
    handler itself)."""

    def __init__(self, pattern, signum):
        super().__init__()
        self.pattern, self.signum, self.sent = pattern, signum, 0

    def emit(self, record):
        if not self.sent and re.search(self.pattern, record.getMessage()):
            self.sent += 1
            os.kill(os.getpid(), self.signum)


def run_signalled(argv, *handlers):
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    try:
        return run_train(argv)
    finally:
        for handler in handlers:
            root.removeHandler(handler)
