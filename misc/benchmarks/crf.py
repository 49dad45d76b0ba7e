"""The crf part: the dense CRF's two backends side by side, their memory, evaluate.py --crf.

Both backends, pydensecrf and TensorFlow (crf.backend_tf), run with DeepLab's
parameters on a 500x375 photo (--voc-sample's, turned and resized, or a
generated photo-like scene) with 21-class probabilities like a network's
(its label pooled to 1/8, blurred, upsampled): each backend's s/image and
the TensorFlow speed-up, how often their labels agree, their largest
marginal difference and the share of labels the CRF changes; each
backend's peak memory (VmHWM, the peak resident set, of a fresh process
running one CRF) at 500x375 and at --crf-large-size; and evaluate.py
--crf's s/image on --crf-eval-images generated pairs with each backend and
its default --crf-workers, fp32 and bf16 (bf16 also pydensecrf on one
worker, the baseline of its target), timed by ``evaluate.ImageClock``.
"""
import argparse
import collections
import json
import logging
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from deeplab_resnet import cli, crf
from misc.benchmarks.common import (DTYPES, EVAL_SIZE, ROOT, format_bytes,
                                    process_failure, size_name)
from misc.benchmarks.evaluate import timed_evaluate
from misc.benchmarks.inputs import crf_inputs, write_eval_data

log = logging.getLogger("benchmark")

CRF_SPEEDUP_TARGET = 3.0
EVALUATE_CRF_SPEEDUP_TARGET = 2.0
# One CRF in a fresh interpreter; argv: an .npz of image and probs, the backend.
# It imports numpy and deeplab_resnet.crf alone, TensorFlow only for the
# 'tensorflow' backend, so that its peak memory is what a process running that
# backend needs. An 8x8 crop goes first, untimed: it builds TensorFlow's graph.
# The peak is VmHWM (Linux), that of the process's own address space:
# ru_maxrss would not do, as Linux carries the parent's peak over into it
# through fork and exec (a child of this ~1 GiB process started at 1 GiB).
CRF_PROCESS = """
import json, sys, time
import numpy as np
from deeplab_resnet import crf
inputs = np.load(sys.argv[1])
image, probs = inputs["image"], inputs["probs"]
crf.dense_crf(image[:8, :8], probs[:8, :8], backend=sys.argv[2])
start = time.perf_counter()
crf.dense_crf(image, probs, backend=sys.argv[2])
seconds = time.perf_counter() - start
with open("/proc/self/status") as status:
    kib = [line.split()[1] for line in status if line.startswith("VmHWM:")]
print(json.dumps({"seconds": seconds, "peak_bytes": 1024 * int(kib[0])}))
"""


def crf_backend_seconds(image, probs, repeats):
    """({backend: median s/image of ``crf.dense_crf``}, {backend: marginals}).

    Each backend first runs once untimed (TensorFlow builds its graph then);
    then they take turns, run by run, so that both see the same load.
    """
    marginals = {b: crf.dense_crf(image, probs, crf.DEFAULTS, b) for b in crf.BACKENDS}
    times = collections.defaultdict(list)
    for _ in range(repeats):
        for backend in crf.BACKENDS:
            start = time.perf_counter()
            crf.dense_crf(image, probs, crf.DEFAULTS, backend)
            times[backend].append(time.perf_counter() - start)
    return {b: statistics.median(t) for b, t in times.items()}, marginals


def crf_agreement(probs, marginals):
    """How alike the backends' marginals are: the share of pixels whose
    labels (argmax) agree and the largest absolute difference; and, so that
    agreement means something, the share of labels each CRF changes."""
    reference, ours = marginals["pydensecrf"], marginals["tensorflow"]
    before = probs.argmax(axis=2)
    return {"label_agreement": float(np.mean(reference.argmax(axis=2) == ours.argmax(axis=2))),
            "max_abs_difference": float(np.abs(reference - ours).max()),
            "changed": {b: float(np.mean(m.argmax(axis=2) != before))
                        for b, m in marginals.items()}}


def crf_processes(size, num_classes, directory, voc_sample=None):
    """{backend: {peak_bytes, seconds}}: ``CRF_PROCESS`` on ``crf_inputs(size)``,
    one fresh process per backend; {'error': ...} for one that failed."""
    image, probs, _ = crf_inputs(size, num_classes, voc_sample)
    path = os.path.join(directory, "crf_inputs.npz")
    np.savez(path, image=image, probs=probs)
    del image, probs
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    results = {}
    for backend in crf.BACKENDS:
        log.info("CRF peak memory: %s at %s, in a fresh process", backend, size_name(size))
        done = subprocess.run([sys.executable, "-c", CRF_PROCESS, path, backend],
                              env=env, capture_output=True, text=True)
        results[backend] = (json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0
                            else process_failure(done.returncode, done.stderr))
    os.remove(path)
    return results


def default_crf_workers(backend):
    """evaluate.py's --crf-workers default for a CRF backend."""
    return cli.crf_workers(argparse.Namespace(crf_backend=backend, crf_workers=None))


def crf_eval_variants(dtype_name):
    """[(CRF backend, CRF workers)] evaluate.py --crf runs at a dtype: each
    backend with evaluate.py's default --crf-workers and, at bf16, pydensecrf
    on one worker, the baseline of the bf16 CRF target."""
    variants = [(backend, default_crf_workers(backend)) for backend in crf.BACKENDS]
    if dtype_name == "bf16" and ("pydensecrf", 1) not in variants:
        variants.append(("pydensecrf", 1))
    return variants


def evaluate_with_crf(run):
    """evaluate.py --crf's s/image (``ImageClock.seconds_per_image``) for each
    dtype and ``crf_eval_variants``, on --crf-eval-images generated pairs.

    The TensorFlow CRF's graph, built by ``crf_backend_seconds`` before, is
    reused, as evaluate.py reuses it after its first image.
    """
    images = run.settings.crf_eval_images
    data_dir = os.path.join(run.directory, "crf_data")
    list_path = write_eval_data(data_dir, images, EVAL_SIZE, run.settings.num_classes)
    runs = []
    for name in DTYPES:
        for backend, workers in crf_eval_variants(name):
            log.info("evaluate.py --crf (%s, %s on %d workers) on %d images", name,
                     backend, workers, images)
            clock = timed_evaluate(run.weights()["npz"], data_dir, list_path, run,
                                   name == "bf16", crf=crf.DEFAULTS, crf_backend=backend,
                                   crf_workers=workers)
            runs.append({"dtype": name, "backend": backend, "workers": workers,
                         "seconds": clock.seconds_per_image()})
    return {"images": images, "size": size_name(EVAL_SIZE), "runs": runs}


def measure(run):
    settings = run.settings
    image, probs, source = crf_inputs(EVAL_SIZE, settings.num_classes, settings.voc_sample)
    report = {"input": source, "size": size_name(EVAL_SIZE),
              "classes": settings.num_classes, "iterations": crf.DEFAULTS.iterations}
    log.info("dense CRF, %s: %s", ", ".join(crf.BACKENDS), source)
    report["seconds"], marginals = crf_backend_seconds(image, probs, settings.repeats)
    report.update(crf_agreement(probs, marginals))
    sizes = [EVAL_SIZE] + ([settings.crf_large_size] if settings.crf_large_size else [])
    report["fresh_process"] = {
        size_name(s): crf_processes(s, settings.num_classes, run.directory,
                                    settings.voc_sample) for s in sizes}
    if settings.crf_eval_images:
        report["evaluate"] = evaluate_with_crf(run)
    return {"crf": report}


def crf_eval_seconds(report, dtype_name, backend, workers):
    """The s/image of one ``evaluate_with_crf`` run in the crf report, or None."""
    for run in report.get("evaluate", {}).get("runs", ()):
        if (run["dtype"], run["backend"], run["workers"]) == (dtype_name, backend, workers):
            return run["seconds"]
    return None


def lines(report):
    """The crf part's lines of the table."""
    report = report.get("crf")
    if not report:
        return []
    seconds = report["seconds"]
    out = ["", "dense CRF (%s, %d classes, %d iterations, median s/image) on %s, with "
           "probabilities from its label pooled to 1/8, blurred, upsampled" % (
               report["size"], report["classes"], report["iterations"], report["input"]),
           "%-11s %8s %15s" % ("backend", "s/image", "labels changed")]
    out += ["%-11s %8.3f %14.2f%%" % (b, s, 100 * report["changed"][b])
            for b, s in seconds.items()]
    out += ["tensorflow CRF speed-up over pydensecrf: %.2fx" % (
                seconds["pydensecrf"] / seconds["tensorflow"]),
            "labels agree on %.3f%% of pixels; marginals differ by at most %.1e" % (
                100 * report["label_agreement"], report["max_abs_difference"]),
            "peak memory (VmHWM of a fresh process running one CRF, inputs and, "
            "for tensorflow, TensorFlow's import included) and that run's s/image:",
            "%-11s %s" % ("size", "".join("%-22s" % b for b in crf.BACKENDS))]
    for size, runs in report["fresh_process"].items():
        out.append("%-11s %s" % (size, "".join(
            "%-22s" % (run["error"] if "error" in run else "%s, %.2f s" % (
                format_bytes(run["peak_bytes"]), run["seconds"]))
            for run in (runs[b] for b in crf.BACKENDS))))
    return out + evaluate_lines(report)


def evaluate_lines(report):
    """The lines of evaluate.py --crf's runs in the crf report."""
    evaluate_report = report.get("evaluate")
    if not evaluate_report:
        return []
    out = ["", "evaluate.py --crf end to end (%d generated %s JPEG/PNG pairs; s/image from "
           "the first result to the last, warm-up and CRF workers' start left out)"
           % (evaluate_report["images"], evaluate_report["size"]),
           "%-7s %-11s %12s %9s" % ("dtype", "CRF backend", "CRF workers", "s/image")]
    out += ["%-7s %-11s %12s %9.3f" % (run["dtype"], run["backend"],
                                       run["workers"] or "0 (in loop)", run["seconds"])
            for run in evaluate_report["runs"]]
    for name in DTYPES:
        ours, theirs = (crf_eval_seconds(report, name, b, default_crf_workers(b))
                        for b in ("tensorflow", "pydensecrf"))
        if ours and theirs:
            out.append("evaluate.py %s: tensorflow CRF speed-up over pydensecrf "
                       "(default workers): %.2fx" % (name, theirs / ours))
    return out


def targets(report):
    """The TensorFlow CRF's speed-up alone, and in evaluate.py --crf --bf16."""
    report = report.get("crf")
    if not report:
        return []
    speedup = report["seconds"]["pydensecrf"] / report["seconds"]["tensorflow"]
    found = [("%s TensorFlow CRF >= %.0fx faster than pydensecrf"
              % (report["size"], CRF_SPEEDUP_TARGET), "%.2fx" % speedup,
              speedup >= CRF_SPEEDUP_TARGET)]
    ours = crf_eval_seconds(report, "bf16", "tensorflow", default_crf_workers("tensorflow"))
    baseline = crf_eval_seconds(report, "bf16", "pydensecrf", 1)
    if ours and baseline:
        found.append(("evaluate.py --crf --bf16: tensorflow >= %.0fx faster than "
                      "pydensecrf on 1 worker" % EVALUATE_CRF_SPEEDUP_TARGET,
                      "%.2fx (%.2f vs %.2f s/image)" % (baseline / ours, ours, baseline),
                      baseline / ours >= EVALUATE_CRF_SPEEDUP_TARGET))
    return found
