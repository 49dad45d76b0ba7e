"""What class pruning does to the CRF's labels: the figures the default threshold was chosen by.

On network-like probabilities (``testing.network_like_probs``, at
temperatures 0.25 and 0.1) of the demo dataset's validation images (drawn
as dataset/make_demo.py draws them with its defaults: seed 0, sides 60 to
160, its 5 classes; the raw drawing, not the JPEG) and of the VOC sample
photo (21 classes), pydensecrf runs unpruned (DeepLab's CRF) and pruned at
each of ``THRESHOLDS``, plus the form pruning does not take (the kept
classes renormalised, the pruned mass dropped; see ``crf.pruning``) at the
default threshold. Per dataset and temperature: the classes kept, the share
of labels equal to the unpruned CRF's (over all pixels, and the worst
image), the mIoU against the ground truth unpruned and pruned, and its
change in percentage points.
"""
import os

import numpy as np
from PIL import Image

from deeplab_resnet import crf, metrics, testing
from deeplab_resnet.constants import NUM_CLASSES
from deeplab_resnet.crf import pruning
from deeplab_resnet.data import demo
from misc.benchmarks.inputs import voc_sample_pair

TEMPERATURES = (0.25, 0.1)
THRESHOLDS = (0.02, 0.05, 0.1)
DEMO_VAL_IMAGES = 100  # dataset/make_demo.py's --num-val
UNPRUNED = crf.CrfConfig(prune_threshold=0.0)


def demo_val_pairs(count=DEMO_VAL_IMAGES, seed=0, min_size=60, max_size=160):
    """(image, label) of the demo's first ``count`` validation images."""
    for index in range(count):
        rng = np.random.default_rng([seed, demo.SPLITS.index("val"), index])
        yield demo.draw_sample(rng, min_size, max_size)


def voc_pairs(voc_sample):
    """(image, label) of the VOC sample photo, at its own size."""
    prefix = voc_sample_pair(voc_sample)
    yield (np.asarray(Image.open(prefix + ".jpg").convert("RGB")),
           np.asarray(Image.open(prefix + ".png")))


def dropped(image, probs, threshold):
    """The CRF with the pruned classes dropped and the kept ones renormalised."""
    kept = pruning.kept_classes(probs, threshold)
    kept_probs = probs[..., kept] / probs[..., kept].sum(axis=-1, keepdims=True)
    return pruning.full_marginals(crf.dense_crf(image, kept_probs, UNPRUNED), kept,
                                  probs.shape[-1])


def forms(threshold_default):
    """{name: (function(image, probs) -> marginals, threshold)} of the pruned forms."""
    found = {"%g" % t: (lambda i, p, t=t: crf.dense_crf(i, p, crf.CrfConfig(prune_threshold=t)),
                        t) for t in THRESHOLDS}
    found["%g dropped" % threshold_default] = (
        lambda i, p: dropped(i, p, threshold_default), threshold_default)
    return found


def measure_dataset(pairs, num_classes, temperature, threshold_default):
    """{'unpruned_miou', 'images', 'pruned': {form: figures}} for one dataset
    at one temperature."""
    pruned_forms = forms(threshold_default)
    full_confusion = 0
    tallies = {name: {"equal": 0, "pixels": 0, "worst": 1.0, "kept": [], "confusion": 0}
               for name in pruned_forms}
    images = 0
    for image, label in pairs:
        images += 1
        probs = testing.network_like_probs(label, num_classes, temperature=temperature)
        full = crf.dense_crf(image, probs, UNPRUNED).argmax(-1)
        full_confusion = full_confusion + metrics.confusion_matrix(label, full, num_classes)
        for name, (run, threshold) in pruned_forms.items():
            pred = run(image, probs).argmax(-1)
            tally = tallies[name]
            equal = int(np.sum(pred == full))
            tally["equal"] += equal
            tally["pixels"] += pred.size
            tally["worst"] = min(tally["worst"], equal / pred.size)
            tally["kept"].append(len(pruning.kept_classes(probs, threshold)))
            tally["confusion"] = tally["confusion"] + metrics.confusion_matrix(
                label, pred, num_classes)
    full_miou = metrics.segmentation_scores(full_confusion)["miou"]
    report = {"images": images, "unpruned_miou": full_miou, "pruned": {}}
    for name, tally in tallies.items():
        miou = metrics.segmentation_scores(tally["confusion"])["miou"]
        report["pruned"][name] = {
            "classes_kept_mean": float(np.mean(tally["kept"])),
            "label_agreement": tally["equal"] / tally["pixels"],
            "worst_image_agreement": tally["worst"], "miou": miou,
            "miou_change_pp": 100 * (miou - full_miou)}
    return report


def measure(voc_sample=None, demo_images=DEMO_VAL_IMAGES):
    """{'threshold_default', 'thresholds', 'datasets': {'demo val T=0.25': ...}}."""
    default = crf.DEFAULTS.prune_threshold
    datasets = {}
    for temperature in TEMPERATURES:
        datasets["demo val, T=%g" % temperature] = measure_dataset(
            demo_val_pairs(demo_images), len(demo.DEMO_CLASSES), temperature, default)
        if voc_sample and os.path.isdir(voc_sample):
            datasets["VOC sample, T=%g" % temperature] = measure_dataset(
                voc_pairs(voc_sample), NUM_CLASSES, temperature, default)
    return {"threshold_default": default, "thresholds": list(THRESHOLDS),
            "datasets": datasets}


def lines(report):
    """The table of ``measure``'s report."""
    if not report:
        return []
    out = ["", "class pruning against DeepLab's CRF (pydensecrf, unpruned) on network-like "
           "probabilities; default threshold %g" % report["threshold_default"],
           "%-22s %-13s %6s %11s %11s %9s %9s" % (
               "dataset", "threshold", "kept", "labels eq.", "worst img", "mIoU", "change")]
    for name, dataset in report["datasets"].items():
        out.append("%-22s %-13s %6s %11s %11s %8.3f%% %9s" % (
            "%s (%d)" % (name, dataset["images"]), "unpruned", "", "", "",
            100 * dataset["unpruned_miou"], ""))
        for form, figures in dataset["pruned"].items():
            out.append("%-22s %-13s %6.2f %10.4f%% %10.4f%% %8.3f%% %+8.3fpp" % (
                "", form, figures["classes_kept_mean"], 100 * figures["label_agreement"],
                100 * figures["worst_image_agreement"], 100 * figures["miou"],
                figures["miou_change_pp"]))
    return out
