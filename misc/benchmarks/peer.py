"""The peer part: DeepLab-v2 ResNet-101 in PyTorch, timed beside this project in the same run.

The peer (``../shared/peers/torch_deeplab.py``: kazuto1011's layout, Caffe's
strides, frozen BatchNorm, channels-last) runs in its own environment
(``--peer-python``, by default ``$PEERS_PY`` or ~/.cache/peers-venv, which
``../shared/peers/setup.sh`` makes), one process per figure: inference at
513x513 (batch 1, BatchNorm folded, as this project's bare network) and a
training step at --train-batch and --train-size, in fp32 and, where the CPU
has native bfloat16 (AVX512_BF16 or AMX), in bf16 autocast. Where the peer or
its environment is missing, the part says so and measures nothing.
"""
import logging
import os
import re
import subprocess

from deeplab_resnet import machine
from misc.benchmarks.common import ROOT, size_name
from misc.benchmarks.inference import TARGET_SIZE

log = logging.getLogger("benchmark")

PEER_SCRIPT = os.path.join(ROOT, os.pardir, "shared", "peers", "torch_deeplab.py")
PEER_PYTHON = os.path.join(os.path.expanduser("~"), ".cache", "peers-venv", "bin", "python")
MEDIAN = re.compile(r"^torch (\S+) .*: median ([0-9.]+) s", re.M)
PEAK = re.compile(r"peak RSS ([0-9.]+) GiB")


def peer_python():
    return os.environ.get("PEERS_PY", PEER_PYTHON)


def dtypes():
    """fp32, and bf16 where neither engine would emulate it."""
    return ("fp32", "bf16") if machine.cpu_info()["bf16"] != "none" else ("fp32",)


def run_peer(python, arguments, threads):
    """One torch_deeplab.py run: {'seconds', 'peak_gib', 'torch'} or {'error'}."""
    command = [python, PEER_SCRIPT, "--channels-last", "--threads", str(threads)] + arguments
    log.info("PyTorch peer: %s", " ".join(arguments))
    done = subprocess.run(command, capture_output=True, text=True)
    median, peak = MEDIAN.search(done.stdout), PEAK.search(done.stdout)
    if done.returncode != 0 or not median:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": "exit code %d: %s" % (done.returncode, last)}
    return {"seconds": float(median.group(2)), "torch": median.group(1),
            "peak_gib": float(peak.group(1)) if peak else None}


def measure(run):
    """The peer's inference and training figures, or why there are none."""
    python, settings = peer_python(), run.settings
    if not (os.path.exists(PEER_SCRIPT) and os.access(python, os.X_OK)):
        return {"peer": {"error": "no peer: %s or %s is missing (bash "
                                  "../shared/peers/setup.sh makes the environment)"
                                  % (PEER_SCRIPT, python)}}
    threads = settings.intra_op_threads or machine.available_cores()
    size = size_name(TARGET_SIZE)
    peer = {"threads": threads, "infer": {}, "train": {}, "infer_size": size,
            "train_batch": settings.train_batch, "train_size": settings.train_size}
    for dtype in dtypes():
        peer["infer"][dtype] = run_peer(python, [
            "--mode", "infer", "--size", size, "--dtype", dtype,
            "--reps", str(settings.repeats)], threads)
        peer["train"][dtype] = run_peer(python, [
            "--mode", "train", "--size", str(settings.train_size), "--dtype", dtype,
            "--batch", str(settings.train_batch), "--reps", str(settings.train_steps),
            "--warmup", "1"], threads)
    versions = {figure["torch"] for runs in (peer["infer"], peer["train"])
                for figure in runs.values() if "torch" in figure}
    peer["torch"] = versions.pop() if len(versions) == 1 else None
    return {"peer": peer}


def lines(report):
    peer = report.get("peer")
    if not peer:
        return []
    if "error" in peer:
        return ["", "PyTorch peer: " + peer["error"]]
    out = ["", "PyTorch %s peer (channels-last, %d threads)" % (peer["torch"], peer["threads"])]
    for mode, what in (("infer", "inference %s, batch 1" % peer["infer_size"]),
                       ("train", "training step %dx%d, batch %d" % (
                           peer["train_size"], peer["train_size"], peer["train_batch"]))):
        for dtype, figure in peer[mode].items():
            out.append("  %-36s %s: %s" % (what, dtype, "%.3f s, peak %.2f GiB" % (
                figure["seconds"], figure["peak_gib"] or 0) if "seconds" in figure
                else figure["error"]))
    return out


def targets(report):
    """This project's fp32 inference and training step at most PyTorch's time."""
    peer, found = report.get("peer") or {}, []
    size = peer.get("infer_size")
    ours = report.get("inference_s", {}).get("fp32", {}).get(size)
    theirs = peer.get("infer", {}).get("fp32", {}).get("seconds")
    if ours and theirs:
        found.append(("%s fp32 inference at most PyTorch's time" % size,
                      "%.2fx" % (ours / theirs), ours <= theirs))
    for run in report.get("train", {}).get("runs", []):
        theirs = peer.get("train", {}).get(run["variant"], {}).get("seconds")
        if (theirs and "seconds" in run and run["batch"] == peer.get("train_batch")
                and run["grad_update_every"] == 1):
            found.append(("training step, batch %d, %s, at most PyTorch's time"
                          % (run["batch"], run["variant"]),
                          "%.2fx" % (run["seconds"] / theirs), run["seconds"] <= theirs))
    return found
