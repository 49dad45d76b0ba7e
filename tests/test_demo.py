"""The README's demo pipeline, end to end, meets its promise: val mIoU >= 0.7.

Runs scripts/demo.py (what scripts/demo.sh runs after setting up the
environment) into tmp_path. The whole demo (2000 steps) takes two to three
minutes on 2 idle cores, too long for the fast suite: there the same pipeline
runs 40 steps (data, train.py, evaluate.py, inference.py and what each
writes), and the slow set holds the promise on the whole demo.
"""
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO_ROOT, load_script


def run_demo(out, *train_flags):
    """scripts/demo.py into ``out``: (its output, the val mIoU)."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "scripts", "demo.py"),
         "--output-dir", str(out), "--train-flags", " ".join(train_flags)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:]
    scores = re.findall(r"^mIoU (\d\.\d+)$", result.stdout, re.MULTILINE)
    assert len(scores) == 1, result.stdout[-3000:]
    return result.stdout, float(scores[0])


@pytest.mark.slow
def test_demo_trained_multi_scale_still_meets_its_promise(tmp_path):
    # Four summed losses give about four times the gradient: a quarter of the
    # demo's from-scratch rate, and half as many steps again to train as far
    # (with the demo's one reader thread, 2000 steps ended at 0.69 here and
    # 3000 at 0.90; 0.01 gave 0.67 at 2000 steps).
    output, miou = run_demo(tmp_path / "demo", "--train-scales", "1,0.75,0.5",
                            "--learning-rate", "0.0025", "--num-steps", "3000")
    assert re.search(r"loss=\S+ \(1=\S+ 0\.75=\S+ 0\.5=\S+ max=\S+\)", output)
    assert miou >= 0.7


# bfloat16 must not cost accuracy: its demo may end at most this much below
# float32's mIoU (5 classes, 100 val images). Measured on two seeds, each run
# deterministic: float32 0.872 and 0.858, bf16 0.916 and 0.903, so bf16 ended
# 0.044 and 0.045 *above* float32 (its rounding noise, like a regulariser on
# 300 training images); a test of |difference| <= 0.02 would fail on the side
# that is not a problem.
BF16_MIOU_TOLERANCE = 0.02


@pytest.mark.slow
def test_demo_trains_evaluates_and_segments_and_bf16_reaches_the_float32_miou(tmp_path):
    """The demo as the README runs it meets its promise, and so does it in bf16."""
    _, fp32 = run_demo(tmp_path / "fp32")
    assert fp32 >= 0.7
    assert_demo_outputs(tmp_path / "fp32")
    _, bf16 = run_demo(tmp_path / "bf16", "--bf16")
    assert bf16 >= 0.7
    assert bf16 >= fp32 - BF16_MIOU_TOLERANCE, (fp32, bf16)


def assert_demo_outputs(out):
    """A val prediction per val image; a mask and an overlay per inference photo."""
    val_list = (out / "data" / "val.txt").read_text().split("\n")
    assert len(os.listdir(out / "val_predictions")) == len([l for l in val_list if l])
    for name in ("val_00000", "val_00001", "val_00002"):
        photo = Image.open(out / "data" / "JPEGImages" / (name + ".jpg"))
        for suffix in ("_mask.png", "_overlay.png"):
            written = Image.open(out / "inference" / (name + suffix))
            assert written.size == photo.size


def test_demo_pipeline_trains_evaluates_and_segments(tmp_path):
    """The demo's pipeline on 40 steps: every stage runs and writes its files
    (the mIoU of so short a training is not the demo's promise)."""
    out = tmp_path / "demo"
    output, miou = run_demo(out, "--num-steps", "40", "--save-pred-every", "20",
                            "--log-every", "20")
    assert re.search(r"^.*step 40/40 loss=", output, re.MULTILINE), output[-3000:]
    assert 0.0 <= miou <= 1.0
    assert_demo_outputs(out)


def test_train_flags_may_start_with_dashes():
    demo = load_script(os.path.join("scripts", "demo"))
    assert demo.joined_train_flags(["--train-flags", "--bf16", "--output-dir", "d"]) == [
        "--train-flags=--bf16", "--output-dir", "d"]
    assert demo.joined_train_flags(["--train-flags=--bf16"]) == ["--train-flags=--bf16"]
