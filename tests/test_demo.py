"""The README's demo pipeline, end to end, meets its promise: val mIoU >= 0.7.

Runs scripts/demo.py (what scripts/demo.sh runs after setting up the
environment) into tmp_path: about two to three minutes on 2 cores.
"""
import os
import re
import subprocess
import sys

from PIL import Image

from conftest import REPO_ROOT


def test_demo_trains_evaluates_and_segments(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "scripts", "demo.py"),
         "--output-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:]
    scores = re.findall(r"^mIoU (\d\.\d+)$", result.stdout, re.MULTILINE)
    assert len(scores) == 1, result.stdout[-3000:]
    assert float(scores[0]) >= 0.7

    val_list = (out / "data" / "val.txt").read_text().split("\n")
    assert len(os.listdir(out / "val_predictions")) == len([l for l in val_list if l])
    for name in ("val_00000", "val_00001", "val_00002"):
        photo = Image.open(out / "data" / "JPEGImages" / (name + ".jpg"))
        for suffix in ("_mask.png", "_overlay.png"):
            written = Image.open(out / "inference" / (name + suffix))
            assert written.size == photo.size
