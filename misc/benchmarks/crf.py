"""The crf part: the dense CRF's backends, pruned and unpruned, side by side; memory; evaluate.py --crf.

Both backends, pydensecrf and TensorFlow (crf.backend_tf), run with DeepLab's
parameters unpruned (``prune_threshold`` 0, DeepLab's CRF) and pruned at the
default threshold (``crf.pruning``) on a 500x375 photo (--voc-sample's,
turned and resized, or a generated photo-like scene) with 21-class
probabilities like a network's (``testing.network_like_probs``: its label
pooled to 1/8, blurred, upsampled): per variant its median s/image, the
classes it kept, how often its labels agree with unpruned pydensecrf's,
its largest marginal difference from them, and the share of labels it
changes; each variant's peak memory (VmHWM, the peak resident set, of a
fresh process running one CRF) at 500x375 and at --crf-large-size; the
bare network's s/image at the same size in fp32 and bf16, timed around the
CRF runs, so that the CRF's cost reads beside the network's; what pruning
does to labels and mIoU (``crf_pruning``); and evaluate.py end to end
(``crf_eval``).
"""
import collections
import json
import logging
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from deeplab_resnet import crf
from deeplab_resnet.crf import pruning
from misc.benchmarks import crf_eval, crf_pruning
from misc.benchmarks.common import (DTYPES, EVAL_SIZE, ROOT, format_bytes,
                                    process_failure, size_name)
from misc.benchmarks.inference import BareNetwork
from misc.benchmarks.inputs import crf_inputs

log = logging.getLogger("benchmark")

# pydensecrf unpruned (DeepLab's CRF) over the default CRF of each backend.
PRUNED_SPEEDUP_TARGET = 3.0
AGREEMENT_TARGET = 0.999
REFERENCE = "pydensecrf"
# One CRF in a fresh interpreter; argv: an .npz of image and probs, the backend,
# the prune threshold. It imports numpy and deeplab_resnet.crf alone,
# TensorFlow only for the 'tensorflow' backend, so that its peak memory is
# what a process running that backend needs. An 8x8 crop goes first, untimed:
# it builds TensorFlow's graph. The peak is VmHWM (Linux), that of the
# process's own address space: ru_maxrss would not do, as Linux carries the
# parent's peak over into it through fork and exec (a child of this ~1 GiB
# process started at 1 GiB).
CRF_PROCESS = """
import json, sys, time
import numpy as np
from deeplab_resnet import crf
inputs = np.load(sys.argv[1])
image, probs = inputs["image"], inputs["probs"]
params = crf.CrfConfig(prune_threshold=float(sys.argv[3]))
crf.dense_crf(image[:8, :8], probs[:8, :8], params, backend=sys.argv[2])
start = time.perf_counter()
crf.dense_crf(image, probs, params, backend=sys.argv[2])
seconds = time.perf_counter() - start
with open("/proc/self/status") as status:
    kib = [line.split()[1] for line in status if line.startswith("VmHWM:")]
print(json.dumps({"seconds": seconds, "peak_bytes": 1024 * int(kib[0])}))
"""


def variants(threshold=None):
    """{name: (backend, prune threshold)}: each backend unpruned and pruned."""
    threshold = crf.DEFAULTS.prune_threshold if threshold is None else threshold
    found = collections.OrderedDict()
    for backend in crf.BACKENDS:
        found[backend] = (backend, 0.0)
        found[backend + "_pruned"] = (backend, threshold)
    return found


def crf_variant_seconds(image, probs, repeats, chosen=None):
    """({variant: median s/image of ``crf.dense_crf``}, {variant: marginals}).

    Each variant first runs once untimed (TensorFlow builds its graph then);
    then they take turns, run by run, so that all see the same load.
    """
    chosen = chosen or variants()
    configs = {name: (backend, crf.CrfConfig(prune_threshold=threshold))
               for name, (backend, threshold) in chosen.items()}
    marginals = {name: crf.dense_crf(image, probs, params, backend)
                 for name, (backend, params) in configs.items()}
    times = collections.defaultdict(list)
    for _ in range(repeats):
        for name, (backend, params) in configs.items():
            start = time.perf_counter()
            crf.dense_crf(image, probs, params, backend)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, marginals


def crf_agreement(probs, marginals, chosen=None):
    """{variant: figures} against unpruned pydensecrf: the share of pixels
    whose labels agree and the largest marginal difference; the classes the
    variant kept; and, so that agreement means something, the share of
    labels it changes."""
    chosen = chosen or variants()
    reference = marginals[REFERENCE]
    before = probs.argmax(axis=2)
    return {name: {"backend": chosen[name][0], "prune_threshold": chosen[name][1],
                   "classes_kept": len(pruning.kept_classes(probs, chosen[name][1])),
                   "label_agreement": float(np.mean(reference.argmax(2) == m.argmax(2))),
                   "max_abs_difference": float(np.abs(reference - m).max()),
                   "changed": float(np.mean(m.argmax(axis=2) != before))}
            for name, m in marginals.items()}


def crf_processes(size, num_classes, directory, voc_sample=None, chosen=None):
    """{variant: {peak_bytes, seconds}}: ``CRF_PROCESS`` on ``crf_inputs(size)``,
    one fresh process per variant; {'error': ...} for one that failed."""
    image, probs, _ = crf_inputs(size, num_classes, voc_sample)
    path = os.path.join(directory, "crf_inputs.npz")
    np.savez(path, image=image, probs=probs)
    del image, probs
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    results = {}
    for name, (backend, threshold) in (chosen or variants()).items():
        log.info("CRF peak memory: %s at %s, in a fresh process", name, size_name(size))
        done = subprocess.run([sys.executable, "-c", CRF_PROCESS, path, backend,
                               repr(threshold)], env=env, capture_output=True, text=True)
        results[name] = (json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0
                         else process_failure(done.returncode, done.stderr))
    os.remove(path)
    return results


def timed_beside_network(run, image, probs):
    """(CRF seconds and marginals as ``crf_variant_seconds``, {dtype: bare
    network median s/image at the image's size}): the network is timed just
    before and just after the CRF runs, so that both see the same load."""
    networks = {name: BareNetwork(dtype, run.settings.num_classes, run.config,
                                  run.weights()["npz"]) for name, dtype in DTYPES.items()}
    half = max(run.settings.repeats // 2, 1)
    try:
        times = {name: net.times(image.shape[:2], half) for name, net in networks.items()}
        seconds, marginals = crf_variant_seconds(image, probs, run.settings.repeats)
        for name, net in networks.items():
            times[name] += net.times(image.shape[:2], half)
    finally:
        for net in networks.values():
            net.close()
    return seconds, marginals, {name: statistics.median(t) for name, t in times.items()}


def measure(run):
    settings = run.settings
    image, probs, source = crf_inputs(EVAL_SIZE, settings.num_classes, settings.voc_sample)
    report = {"input": source, "size": size_name(EVAL_SIZE),
              "classes": settings.num_classes, "iterations": crf.DEFAULTS.iterations,
              "prune_threshold": crf.DEFAULTS.prune_threshold}
    log.info("dense CRF, %s: %s", ", ".join(variants()), source)
    seconds, marginals, report["network_s"] = timed_beside_network(run, image, probs)
    report["variants"] = crf_agreement(probs, marginals)
    for name, value in seconds.items():
        report["variants"][name]["seconds"] = value
    sizes = [EVAL_SIZE] + ([settings.crf_large_size] if settings.crf_large_size else [])
    report["fresh_process"] = {
        size_name(s): crf_processes(s, settings.num_classes, run.directory,
                                    settings.voc_sample) for s in sizes}
    log.info("class pruning against the unpruned CRF: demo val and VOC sample")
    report["pruning"] = crf_pruning.measure(settings.voc_sample)
    if settings.crf_eval_images:
        report["evaluate"] = crf_eval.evaluate_with_crf(run)
    return {"crf": report}


def lines(report):
    """The crf part's lines of the table."""
    report = report.get("crf")
    if not report:
        return []
    out = ["", "dense CRF (%s, %d classes, %d iterations, median s/image) on %s, with "
           "probabilities from its label pooled to 1/8, blurred, upsampled; pruned: "
           "threshold %g" % (report["size"], report["classes"], report["iterations"],
                              report["input"], report["prune_threshold"]),
           "%-19s %8s %6s %20s %12s %9s" % ("variant", "s/image", "kept", "labels = pydensecrf",
                                            "max diff", "changed")]
    for name, figures in report["variants"].items():
        out.append("%-19s %8.3f %6d %19.3f%% %12.1e %8.2f%%" % (
            name, figures["seconds"], figures["classes_kept"],
            100 * figures["label_agreement"], figures["max_abs_difference"],
            100 * figures["changed"]))
    reference = report["variants"][REFERENCE]["seconds"]
    out.append("the bare network at %s (median s/image): %s; each CRF variant's time is "
               "what it adds per image" % (report["size"], ", ".join(
                   "%s %.3f" % item for item in report["network_s"].items())))
    out.append("pydensecrf unpruned (DeepLab's CRF) over: %s" % ", ".join(
        "%s %.2fx" % (name, reference / figures["seconds"])
        for name, figures in report["variants"].items() if name != REFERENCE))
    out += memory_lines(report)
    out += crf_pruning.lines(report.get("pruning"))
    return out + crf_eval.lines(report)


def memory_lines(report):
    names = list(report["variants"])
    out = ["peak memory (VmHWM of a fresh process running one CRF, inputs and, for "
           "tensorflow, TensorFlow's import included) and that run's s/image:",
           "%-11s %s" % ("size", "".join("%-22s" % n for n in names))]
    for size, runs in report["fresh_process"].items():
        out.append("%-11s %s" % (size, "".join(
            "%-22s" % (runs[n]["error"] if "error" in runs[n] else "%s, %.2f s" % (
                format_bytes(runs[n]["peak_bytes"]), runs[n]["seconds"]))
            for n in names)))
    return out


def targets(report):
    """The default CRF (the default backend, pruned) >= 3x faster than
    DeepLab's; each backend's pruned labels 99.9% DeepLab's; the TensorFlow
    CRF's memory; evaluate.py's (crf_eval).

    pydensecrf's pruned CRF has no speed target: its lattice build, single-
    threaded and ~40% of its pruned time, does not shrink with the classes
    (docs/speed.md); it is reported beside the others."""
    report = report.get("crf")
    if not report:
        return []
    found = []
    reference = report["variants"][REFERENCE]["seconds"]
    default = report["variants"][crf.DEFAULT_BACKEND + "_pruned"]
    speedup = reference / default["seconds"]
    found.append(("the default CRF (%s, pruned) >= %.0fx faster than pydensecrf unpruned"
                  % (crf.DEFAULT_BACKEND, PRUNED_SPEEDUP_TARGET), "%.2fx" % speedup,
                  speedup >= PRUNED_SPEEDUP_TARGET))
    for backend in crf.BACKENDS:
        figures = report["variants"][backend + "_pruned"]
        found.append(("%s pruned CRF labels = unpruned pydensecrf's on >= %.1f%%"
                      % (backend, 100 * AGREEMENT_TARGET),
                      "%.4f%%" % (100 * figures["label_agreement"]),
                      figures["label_agreement"] >= AGREEMENT_TARGET))
    for size, runs in report["fresh_process"].items():
        ours, theirs = runs.get("tensorflow_pruned", {}), runs.get("pydensecrf_pruned", {})
        if size != report["size"] and "peak_bytes" in ours and "peak_bytes" in theirs:
            found.append(("%s pruned CRF peak memory: tensorflow <= pydensecrf" % size,
                          "%s vs %s" % (format_bytes(ours["peak_bytes"]),
                                        format_bytes(theirs["peak_bytes"])),
                          ours["peak_bytes"] <= theirs["peak_bytes"]))
    return found + crf_eval.targets(report)
