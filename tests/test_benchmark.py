"""misc/benchmark.py's crf part: its inputs, its measurements on small images, its report.

The figures themselves come from running the benchmark; these tests check
that the probabilities look like a network's, that the two backends are
compared on the same inputs, that the fresh-process memory figure is the
child's own, and that the table and targets read the report.
"""
import os

import numpy as np
import pytest

from deeplab_resnet import testing

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
benchmark = testing.load_script(os.path.join(REPO_ROOT, "misc", "benchmark.py"))


def test_network_like_probs_are_a_blurry_softmax_of_the_label():
    label = np.zeros((64, 96), np.uint8)
    label[:, 48:] = 7
    label[0] = 255
    probs = testing.network_like_probs(label, 21)
    assert probs.shape == (64, 96, 21) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=2), 1.0, rtol=1e-5)
    # Inside the regions: the right class at softmax(4) against 20 zeros;
    # void counts as background.
    np.testing.assert_allclose(probs[:, :16, 0], np.e ** 4 / (np.e ** 4 + 20), rtol=1e-4)
    assert (probs[:, -16:].argmax(axis=2) == 7).all()
    # Across the boundary the two classes blend, as a network's output does.
    assert probs[:, 44:52, [0, 7]].max(axis=2).min() < 0.5
    assert (probs.argmax(axis=2) == np.where(label == 255, 0, label)).mean() > 0.9


def test_crf_inputs_and_backends_on_a_small_photo():
    pytest.importorskip("pydensecrf.densecrf")
    image, probs, source = benchmark.crf_inputs((30, 40), 21)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    assert probs.shape == (30, 40, 21)
    assert source.startswith("VOC sample" if os.path.exists(benchmark.VOC_SAMPLE + ".jpg")
                             else "synthetic")
    seconds, marginals = benchmark.crf_backend_seconds(image, probs, repeats=1)
    assert set(seconds) == set(marginals) == {"pydensecrf", "tensorflow"}
    agreement = benchmark.crf_agreement(probs, marginals)
    assert agreement["label_agreement"] >= 0.99
    assert agreement["max_abs_difference"] < 1e-3
    assert set(agreement["changed"]) == {"pydensecrf", "tensorflow"}


def test_crf_processes_measure_their_own_peak(tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    # A large array here must not show in the children's figures (Linux
    # carries a parent's peak over into its children's ru_maxrss).
    ballast = np.ones(2 ** 28 // 8 * 3, np.float64)  # 768 MiB
    results = benchmark.crf_processes((24, 32), 21, str(tmp_path))
    del ballast
    assert set(results) == {"pydensecrf", "tensorflow"}
    for run in results.values():
        assert "error" not in run, run
        assert 0 < run["seconds"] and 10 * 2 ** 20 < run["peak_bytes"]
    # pydensecrf's process holds numpy alone; TensorFlow's holds TensorFlow.
    assert results["pydensecrf"]["peak_bytes"] < 300 * 2 ** 20
    assert results["pydensecrf"]["peak_bytes"] < results["tensorflow"]["peak_bytes"]
    assert os.listdir(str(tmp_path)) == []


def crf_report(pydensecrf_s=2.5, tensorflow_s=2.0):
    return {
        "input": "VOC sample 2007_000129, turned and resized", "size": "375x500",
        "classes": 21, "iterations": 10,
        "seconds": {"pydensecrf": pydensecrf_s, "tensorflow": tensorflow_s},
        "label_agreement": 0.9999, "max_abs_difference": 2e-5,
        "changed": {"pydensecrf": 0.0326, "tensorflow": 0.0325},
        "fresh_process": {
            "375x500": {"pydensecrf": {"seconds": 2.1, "peak_bytes": 236 * 2 ** 20},
                        "tensorflow": {"seconds": 3.4, "peak_bytes": 862 * 2 ** 20}},
            "1500x2000": {"pydensecrf": {"seconds": 41.0, "peak_bytes": 2.45 * 2 ** 30},
                          "tensorflow": {"error": "the process failed (exit code -9), "
                                                  "killed: out of memory?"}}},
    }


def test_crf_table_and_targets():
    report = {"machine": "test", "crf": crf_report()}
    default = benchmark.default_crf_workers("pydensecrf")
    report["crf"]["evaluate"] = {"images": 3, "size": "375x500", "runs": [
        {"dtype": "fp32", "backend": "pydensecrf", "workers": default, "seconds": 6.0},
        {"dtype": "fp32", "backend": "tensorflow", "workers": 0, "seconds": 5.0},
        {"dtype": "bf16", "backend": "pydensecrf", "workers": default, "seconds": 5.0},
        {"dtype": "bf16", "backend": "tensorflow", "workers": 0, "seconds": 4.0},
        {"dtype": "bf16", "backend": "pydensecrf", "workers": 1, "seconds": 8.4}]}
    report["targets"] = benchmark.check_targets(report)
    assert [(met, measured) for _, measured, met in report["targets"]] == [
        (False, "1.25x"), (True, "2.10x (4.00 vs 8.40 s/image)")]
    assert "1 worker" in report["targets"][1][0]
    table = benchmark.format_table(report)
    for text in ("tensorflow CRF speed-up over pydensecrf: 1.25x",
                 "labels agree on 99.990% of pixels; marginals differ by at most 2.0e-05",
                 "236 MiB, 2.10 s", "2.45 GiB, 41.00 s", "out of memory",
                 "evaluate.py bf16: tensorflow CRF speed-up over pydensecrf (default "
                 "workers): 1.25x", "[MISSED]", "[met]"):
        assert text in table, text


def test_crf_targets_without_evaluate_runs():
    report = {"machine": "test", "crf": crf_report(pydensecrf_s=6.0)}
    (description, measured, met), = benchmark.check_targets(report)
    assert "3x" in description and measured == "3.00x" and met


def test_crf_flags():
    args = benchmark.get_arguments(["--parts", "crf"])
    assert args.crf_large_size == (1500, 2000) and args.crf_eval_images == 3
    args = benchmark.get_arguments(["--parts", "crf", "--crf-large-size", "0",
                                    "--crf-eval-images", "0"])
    assert args.crf_large_size is None and args.crf_eval_images == 0
    for bad in (["--crf-large-size", "321,513"], ["--crf-eval-images", "-1"]):
        with pytest.raises(SystemExit):
            benchmark.get_arguments(["--parts", "crf"] + bad)
