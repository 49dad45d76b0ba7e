"""evaluate.py end to end with and without the dense CRF, in one run, for the crf part.

On --crf-eval-images generated 500x375 pairs, per dtype: evaluate.py
without the CRF, and with each backend's default CRF (pruned at the default
threshold) on its default --crf-workers; in fp32 also pydensecrf unpruned
(DeepLab's CRF) on its default workers, and in bf16 pydensecrf on one
worker, the baseline of the bf16 target. Timed by ``evaluate.ImageClock``
from the first result to the last, so that the one-time costs stay out;
each variant's best of ``ROUNDS`` interleaved rounds.
"""
import argparse
import logging
import os

from deeplab_resnet import cli, crf
from misc.benchmarks.common import DTYPES, EVAL_SIZE, size_name
from misc.benchmarks.evaluate import timed_evaluate
from misc.benchmarks.inputs import write_eval_data

log = logging.getLogger("benchmark")

EVALUATE_CRF_SPEEDUP_TARGET = 2.0
ROUNDS = 2


def default_crf_workers(backend):
    """evaluate.py's --crf-workers default for a CRF backend."""
    return cli.crf_workers(argparse.Namespace(crf_backend=backend, crf_workers=None))


def crf_eval_variants(dtype_name):
    """[(CRF backend or None, CRF workers, prune threshold)] evaluate.py runs
    at a dtype (see the module doc)."""
    default = crf.DEFAULTS.prune_threshold
    found = [(None, 0, None)]
    found += [(backend, default_crf_workers(backend), default) for backend in crf.BACKENDS]
    if dtype_name == "fp32":
        found.append(("pydensecrf", default_crf_workers("pydensecrf"), 0.0))
    else:
        found.append(("pydensecrf", 1, default))
    return found


def evaluate_with_crf(run):
    """evaluate.py's s/image (``ImageClock.seconds_per_image``) for each
    dtype and ``crf_eval_variants``, on --crf-eval-images generated pairs.

    The variants run in ``ROUNDS`` rounds, each round every variant once in
    turn, and each keeps its best round: on a shared machine one run's load
    moved these figures by ~5%, as much as the differences they compare.
    """
    images = run.settings.crf_eval_images
    data_dir = os.path.join(run.directory, "crf_data")
    list_path = write_eval_data(data_dir, images, EVAL_SIZE, run.settings.num_classes)
    runs = [{"dtype": name, "backend": backend, "workers": workers,
             "prune_threshold": threshold, "rounds": []}
            for name in DTYPES for backend, workers, threshold in crf_eval_variants(name)]
    for round_ in range(ROUNDS):
        for figures in runs:
            log.info("evaluate.py (%s, CRF %s on %d workers, threshold %s) on %d images, "
                     "round %d of %d", figures["dtype"], figures["backend"], figures["workers"],
                     figures["prune_threshold"], images, round_ + 1, ROUNDS)
            stage = None
            if figures["backend"]:
                stage = crf.CrfStage(crf.CrfConfig(prune_threshold=figures["prune_threshold"]),
                                 backend=figures["backend"], workers=figures["workers"])
            clock = timed_evaluate(run.weights()["npz"], data_dir, list_path, run,
                                   figures["dtype"] == "bf16", crf=stage)
            figures["rounds"].append(clock.seconds_per_image())
    for figures in runs:
        figures["seconds"] = min(figures["rounds"])
    return {"images": images, "size": size_name(EVAL_SIZE), "rounds": ROUNDS, "runs": runs}


def crf_eval_seconds(report, dtype_name, backend, workers=None, threshold=None):
    """The s/image of one ``evaluate_with_crf`` run in the crf report, or None.
    ``workers`` and ``threshold`` default to the backend's defaults."""
    if backend is not None:
        workers = default_crf_workers(backend) if workers is None else workers
        threshold = crf.DEFAULTS.prune_threshold if threshold is None else threshold
    for run in report.get("evaluate", {}).get("runs", ()):
        if (run["dtype"], run["backend"], run["workers"], run["prune_threshold"]) == (
                dtype_name, backend, workers if backend else 0, threshold):
            return run["seconds"]
    return None


def lines(report):
    """The lines of evaluate.py's runs in the crf report."""
    evaluate_report = report.get("evaluate")
    if not evaluate_report:
        return []
    out = ["", "evaluate.py end to end, with and without the CRF (%d generated %s JPEG/PNG "
           "pairs; s/image from the first result to the last, the best of %d rounds)"
           % (evaluate_report["images"], evaluate_report["size"],
              evaluate_report.get("rounds", 1)),
           "%-7s %-11s %12s %10s %9s" % ("dtype", "CRF backend", "CRF workers",
                                         "threshold", "s/image")]
    out += ["%-7s %-11s %12s %10s %9.3f" % (
        run["dtype"], run["backend"] or "none", run["workers"] if run["backend"] else "",
        "" if run["prune_threshold"] is None else "%g" % run["prune_threshold"],
        run["seconds"]) for run in evaluate_report["runs"]]
    for name in DTYPES:
        ours, theirs = (crf_eval_seconds(report, name, b) for b in ("tensorflow", "pydensecrf"))
        plain = crf_eval_seconds(report, name, None)
        if ours and theirs:
            out.append("evaluate.py %s: tensorflow CRF speed-up over pydensecrf (defaults): "
                       "%.2fx" % (name, theirs / ours))
        if plain:
            out.append("evaluate.py %s: the default CRF's share of the time per image: %s" % (
                name, ", ".join("%s %.0f%%" % (b, 100 * (1 - plain / s)) for b, s in (
                    ("pydensecrf", theirs), ("tensorflow", ours)) if s)))
    return out


def targets(report):
    """evaluate.py --crf: tensorflow at least as fast as pydensecrf (fp32,
    defaults), and in bf16 2x pydensecrf on one worker."""
    found = []
    ours, theirs = (crf_eval_seconds(report, "fp32", b) for b in ("tensorflow", "pydensecrf"))
    if ours and theirs:
        found.append(("evaluate.py --crf fp32: tensorflow >= pydensecrf (default workers)",
                      "%.2fx (%.2f vs %.2f s/image)" % (theirs / ours, ours, theirs),
                      theirs / ours >= 1.0))
    ours = crf_eval_seconds(report, "bf16", "tensorflow")
    baseline = crf_eval_seconds(report, "bf16", "pydensecrf", 1)
    if ours and baseline:
        found.append(("evaluate.py --crf --bf16: tensorflow >= %.0fx faster than "
                      "pydensecrf on 1 worker" % EVALUATE_CRF_SPEEDUP_TARGET,
                      "%.2fx (%.2f vs %.2f s/image)" % (baseline / ours, ours, baseline),
                      baseline / ours >= EVALUATE_CRF_SPEEDUP_TARGET))
    return found
