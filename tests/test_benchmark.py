"""misc/benchmark.py and its parts (misc/benchmarks/): the table of parts, the FLOP count,
the crf part's inputs and measurements on small images, the reports.

The figures themselves come from running the benchmark; these tests check
that the table names a module for each part and refuses others, that FLOPs
are counted as by hand, that the probabilities look like a network's, that
the two backends are compared on the same inputs, that the fresh-process
memory figure is the child's own, and that the table and targets read the
report.
"""
import argparse
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from deeplab_resnet import testing
from deeplab_resnet.runtime import tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Loading the script puts the repository on sys.path, so misc.benchmarks imports.
benchmark = testing.load_script(os.path.join(REPO_ROOT, "misc", "benchmark.py"))
from misc.benchmarks import (common, crf as crf_part, crf_eval, crf_pruning,  # noqa: E402
                             evaluate as evaluate_part, flops, inference as inference_part,
                             inputs, options, parts, peer as peer_part, report, runner,
                             train as train_part)
from deeplab_resnet import crf  # noqa: E402
from deeplab_resnet.crf import pruning  # noqa: E402


def test_parts_table_names_a_module_for_each_part(capsys):
    assert parts.NAMES == ("peak", "flops", "inference", "opencv", "onnx", "evaluate",
                           "train", "peer", "crf")
    for part in parts.PARTS:
        module = parts.module(part.name)
        assert module.__file__ == os.path.join(REPO_ROOT, "misc", "benchmarks",
                                               part.module + ".py")
        for function in ("measure", "lines", "targets"):
            assert callable(getattr(module, function)), (part.name, function)
    with pytest.raises(SystemExit):
        benchmark.get_arguments(["--help"])
    help_text = capsys.readouterr().out
    for part in parts.PARTS:
        assert "  %-10s %s" % (part.name, part.description) in help_text


def test_unknown_part_is_refused_with_the_list_of_parts(capsys):
    with pytest.raises(argparse.ArgumentTypeError,
                       match="unknown parts nope; choose from "
                             "peak,flops,inference,opencv,onnx,evaluate,train,peer,crf"):
        parts.parse_parts("train,nope")
    with pytest.raises(SystemExit):
        benchmark.get_arguments(["--parts", "train,nope"])
    assert "choose from peak,flops,inference" in capsys.readouterr().err
    # Chosen parts come in the table's order, each once.
    assert parts.parse_parts("crf, train,crf") == ["train", "crf"]


def test_runner_runs_the_chosen_parts_in_the_table_order(monkeypatch):
    calls = []

    def fake(name):
        return types.SimpleNamespace(
            measure=lambda run: calls.append(name) or {name: run.settings.num_classes},
            lines=lambda result: [], targets=lambda result: [])
    monkeypatch.setattr(parts, "module", lambda part: fake(getattr(part, "name", part)))
    settings = options.Settings.from_args(benchmark.get_arguments(
        ["--parts", "crf,peak", "--num-classes", "5"]))
    result = runner.measure(settings)
    assert calls == ["peak", "crf"]
    assert result["peak"] == result["crf"] == 5 and result["targets"] == []


def test_graph_flops_of_one_convolution_match_a_hand_count():
    height, width, c_in, c_out, k = 8, 6, 3, 4, 3
    forward = 2 * height * width * c_in * c_out * k * k
    with tf.Graph().as_default() as graph:
        x = tf.random_uniform((1, height, width, c_in))
        w = tf.Variable(tf.random_normal((k, k, c_in, c_out)))
        y = tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME")
        assert flops.graph_flops(graph, [y]) == (forward, {"Conv2D": forward})
        dx, dw = tf.gradients(y, [x, w])
        total, by_type = flops.graph_flops(graph, [y, dx, dw])
    # Each backprop costs what the forward convolution does.
    assert by_type == {"Conv2D": forward, "Conv2DBackpropInput": forward,
                       "Conv2DBackpropFilter": forward}
    assert total == 3 * forward


def test_cpu_info_names_the_native_bfloat16_support():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
            "model name\t: Intel(R) Xeon(R) Platinum 8481C\n"
            "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    cpu = common.cpu_info(text)
    assert cpu == {"model_name": "Intel(R) Xeon(R) Platinum 8481C", "family": "6",
                   "model": "143", "bf16": "AMX + AVX512_BF16"}
    assert common.cpu_name(cpu) == "Intel(R) Xeon(R) Platinum 8481C (family 6, model 143)"
    assert common.cpu_info("model name\t: AMD EPYC\nflags\t: avx2 avx512_bf16\n")[
        "bf16"] == "AVX512_BF16"
    assert common.cpu_info("model name\t: AMD EPYC\nflags\t: avx2 fma\n")["bf16"] == "none"


def test_image_clock_times_the_loop_from_the_first_result_to_the_last():
    clock = evaluate_part.ImageClock()
    # Four results, the first two in one burst (as CRF workers hand them back).
    for seconds in (10.0, 10.0, 13.0, 16.0):
        clock.times.append(seconds)
    assert clock.seconds_per_image() == pytest.approx(2.0)
    assert clock.median_interval() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="at least 2 images"):
        evaluate_part.ImageClock().seconds_per_image()


def train_run(variant, batch, seconds, step_gflop=40.0, grad_update_every=1):
    return {"variant": variant, "batch": batch, "grad_update_every": grad_update_every,
            "seconds": seconds, "forward_seconds": seconds / 4, "peak_bytes": 3 * 2 ** 30,
            "seconds_per_image": seconds / batch / grad_update_every,
            "step_gflop": step_gflop, "gflops": step_gflop / seconds}


def test_train_table_and_json_keys():
    runs = [train_run("fp32", 2, 20.0), train_run("bf16", 2, 12.5),
            train_run("fp32", 1, 24.0, grad_update_every=2)]
    speedups = train_part.bf16_speedups(runs)
    assert speedups == [{"batch": 2, "fp32_seconds": 20.0, "bf16_seconds": 12.5,
                         "speedup": 1.6}]
    result = {"machine": "test", "train": {
        "size": 321, "runs": runs, "flop_count": train_part.FLOP_COUNT,
        "bf16_speedup": speedups, "cpu": common.cpu_info(
            "model name\t: AMD EPYC 9B14\ncpu family\t: 25\nmodel\t: 17\n"
            "flags\t: avx512_bf16\n")}}
    result["targets"] = report.check_targets(result)
    table = report.format_table(result)
    for text in ("CPU: AMD EPYC 9B14 (Zen 4, family 25, model 17); native bfloat16: AVX512_BF16",
                 "training bf16 speed-up over fp32: 1.60x (batch 2)",
                 "GFLOP/step: TensorFlow's per-op FLOP registry",
                 "[met]    batch-2 321x321 training step fits in 24 GiB"):
        assert text in table, text
    # s/step, s/image, GFLOP/step, GFLOP/s, backward/forward, peak memory
    assert "bf16       2                      1    12.50     6.25       40.0      3.2 " \
           "            3.00      3.0 GiB" in table


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


def test_crf_inputs_from_a_voc_sample_directory(tmp_path):
    photo = np.zeros((50, 30, 3), np.uint8)
    photo[:25] = (200, 30, 30)
    label = np.zeros((50, 30), np.uint8)
    label[:25] = 15
    Image.fromarray(photo).save(str(tmp_path / "2007_000129.jpg"), quality=95)
    Image.fromarray(label).save(str(tmp_path / "2007_000129.png"))
    image, probs, source = inputs.crf_inputs((30, 40), 21, str(tmp_path))
    assert source == "VOC sample %s, turned and resized" % (tmp_path / "2007_000129")
    assert image.shape == (30, 40, 3) and probs.shape == (30, 40, 21)
    # Turned a quarter anticlockwise: the person (15) on the left, in red.
    assert (probs[:, :16].argmax(axis=2) == 15).all()
    assert image[:, :16, 0].mean() > 150 > image[:, -16:, 0].mean()
    (tmp_path / "2007_000129.png").unlink()
    with pytest.raises(IOError, match="--voc-sample .* no NAME.jpg with its label"):
        inputs.crf_inputs((30, 40), 21, str(tmp_path))


def test_crf_inputs_and_variants_on_a_small_photo():
    pytest.importorskip("pydensecrf.densecrf")
    image, probs, source = inputs.crf_inputs((30, 40), 21)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    assert probs.shape == (30, 40, 21)
    assert source == "a generated photo-like scene (no --voc-sample)"
    chosen = crf_part.variants()
    assert chosen["pydensecrf"] == ("pydensecrf", 0.0)
    assert chosen["tensorflow_pruned"] == ("tensorflow", crf.DEFAULTS.prune_threshold)
    seconds, marginals = crf_part.crf_variant_seconds(image, probs, repeats=1)
    assert set(seconds) == set(marginals) == set(chosen)
    agreement = crf_part.crf_agreement(probs, marginals)
    reference = agreement["pydensecrf"]
    assert reference["label_agreement"] == 1.0 and reference["max_abs_difference"] == 0.0
    assert reference["classes_kept"] == 21
    kept = len(pruning.kept_classes(probs, crf.DEFAULTS.prune_threshold))
    assert agreement["tensorflow_pruned"]["classes_kept"] == kept < 21
    for figures in agreement.values():
        assert figures["label_agreement"] >= 0.99
    assert agreement["tensorflow"]["max_abs_difference"] < 1e-3


def test_crf_processes_measure_their_own_peak(tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    # A large array here must not show in the children's figures (Linux
    # carries a parent's peak over into its children's ru_maxrss).
    ballast = np.ones(2 ** 28 // 8 * 3, np.float64)  # 768 MiB
    chosen = {"pydensecrf": ("pydensecrf", 0.0), "tensorflow_pruned": ("tensorflow", 0.05)}
    results = crf_part.crf_processes((24, 32), 21, str(tmp_path), chosen=chosen)
    del ballast
    assert set(results) == set(chosen)
    for run in results.values():
        assert "error" not in run, run
        assert 0 < run["seconds"] and 10 * 2 ** 20 < run["peak_bytes"]
    # pydensecrf's process holds numpy alone; TensorFlow's holds TensorFlow.
    assert results["pydensecrf"]["peak_bytes"] < 300 * 2 ** 20
    assert results["pydensecrf"]["peak_bytes"] < results["tensorflow_pruned"]["peak_bytes"]
    assert os.listdir(str(tmp_path)) == []


def test_pruning_figures_on_a_few_demo_images():
    pytest.importorskip("pydensecrf.densecrf")
    found = crf_pruning.measure(voc_sample=None, demo_images=3)
    assert found["threshold_default"] == crf.DEFAULTS.prune_threshold
    assert set(found["datasets"]) == {"demo val, T=0.25", "demo val, T=0.1"}
    dataset = found["datasets"]["demo val, T=0.1"]
    assert dataset["images"] == 3 and 0 < dataset["unpruned_miou"] <= 1
    assert set(dataset["pruned"]) == {"0.02", "0.05", "0.1", "0.05 dropped"}
    for figures in dataset["pruned"].values():
        assert 0.99 <= figures["label_agreement"] <= 1
        assert figures["worst_image_agreement"] <= figures["label_agreement"]
        assert 2 <= figures["classes_kept_mean"] <= 5
        assert figures["miou_change_pp"] == pytest.approx(
            100 * (figures["miou"] - dataset["unpruned_miou"]))
    table = "\n".join(crf_pruning.lines(found))
    assert "demo val, T=0.25 (3)" in table and "0.05 dropped" in table


def variant_figures(seconds, kept, agreement):
    return {"seconds": seconds, "classes_kept": kept, "label_agreement": agreement,
            "max_abs_difference": 2e-5, "changed": 0.0326}


def crf_report(pydensecrf_s=2.5, tensorflow_s=2.0, pruned_s=0.8):
    memory = {name: {"seconds": 2.1, "peak_bytes": 236 * 2 ** 20}
              for name in crf_part.variants()}
    large = dict(memory, tensorflow_pruned={"seconds": 30.0, "peak_bytes": 2.0 * 2 ** 30},
                 pydensecrf_pruned={"seconds": 20.0, "peak_bytes": 2.45 * 2 ** 30},
                 tensorflow={"error": "the process failed (exit code -9), "
                                      "killed: out of memory?"})
    return {
        "input": "VOC sample 2007_000129, turned and resized", "size": "375x500",
        "classes": 21, "iterations": 10, "prune_threshold": 0.05,
        "network_s": {"fp32": 0.61, "bf16": 0.33},
        "variants": {"pydensecrf": variant_figures(pydensecrf_s, 21, 1.0),
                     "pydensecrf_pruned": variant_figures(pruned_s, 3, 0.9999),
                     "tensorflow": variant_figures(tensorflow_s, 21, 1.0),
                     "tensorflow_pruned": variant_figures(pruned_s / 2, 3, 0.9985)},
        "fresh_process": {"375x500": memory, "1500x2000": large},
    }


def test_crf_table_and_targets():
    result = {"machine": "test", "crf": crf_report()}
    default = crf_eval.default_crf_workers("pydensecrf")
    assert crf_eval.default_crf_workers("tensorflow") == default
    result["crf"]["evaluate"] = {"images": 10, "size": "375x500", "runs": [
        {"dtype": "fp32", "backend": None, "workers": 0, "prune_threshold": None,
         "seconds": 0.8},
        {"dtype": "fp32", "backend": "pydensecrf", "workers": default,
         "prune_threshold": 0.05, "seconds": 1.0},
        {"dtype": "fp32", "backend": "tensorflow", "workers": default,
         "prune_threshold": 0.05, "seconds": 0.9},
        {"dtype": "bf16", "backend": "tensorflow", "workers": default,
         "prune_threshold": 0.05, "seconds": 4.0},
        {"dtype": "bf16", "backend": "pydensecrf", "workers": 1, "prune_threshold": 0.05,
         "seconds": 8.4}]}
    result["targets"] = report.check_targets(result)
    # The default CRF (tensorflow, pruned) against DeepLab's; each backend's
    # pruned labels; memory; evaluate.py.
    assert [(met, measured) for _, measured, met in result["targets"]] == [
        (True, "6.25x"), (True, "99.9900%"), (False, "99.8500%"),
        (True, "2.00 GiB vs 2.45 GiB"), (True, "1.11x (0.90 vs 1.00 s/image)"),
        (True, "2.10x (4.00 vs 8.40 s/image)")]
    assert result["targets"][0][0].startswith("the default CRF (tensorflow, pruned) >= 3x")
    table = report.format_table(result)
    for text in ("tensorflow_pruned", "0.400", "bf16 0.330", "2.45 GiB, 20.00 s",
                 "out of memory", "pydensecrf unpruned (DeepLab's CRF) over: "
                 "pydensecrf_pruned 3.12x, tensorflow 1.25x, tensorflow_pruned 6.25x",
                 "evaluate.py fp32: tensorflow CRF speed-up over pydensecrf (defaults): "
                 "1.11x", "the default CRF's share of the time per image: pydensecrf 20%, "
                 "tensorflow 11%", "[MISSED]", "[met]"):
        assert text in table, text


def test_crf_targets_without_evaluate_runs():
    result = {"machine": "test", "crf": crf_report(pruned_s=2.0)}
    found = report.check_targets(result)
    assert [measured for _, measured, _ in found][:3] == ["2.50x", "99.9900%", "99.8500%"]
    assert not found[0][2] and found[1][2]
    assert not any("evaluate.py" in description for description, _, _ in found)


def test_crf_flags():
    args = benchmark.get_arguments(["--parts", "crf"])
    assert args.crf_large_size == (1500, 2000) and args.crf_eval_images == 10
    args = benchmark.get_arguments(["--parts", "crf", "--crf-large-size", "0",
                                    "--crf-eval-images", "0"])
    assert args.crf_large_size is None and args.crf_eval_images == 0
    assert args.voc_sample is None
    settings = options.Settings.from_args(benchmark.get_arguments(
        ["--parts", "crf", "--voc-sample", "samples"]))
    assert settings.voc_sample == "samples" and settings.parts == ["crf"]
    # One image gives no interval to time the loop by.
    for bad in (["--crf-large-size", "321,513"], ["--crf-eval-images", "-1"],
                ["--crf-eval-images", "1"]):
        with pytest.raises(SystemExit):
            benchmark.get_arguments(["--parts", "crf"] + bad)


@pytest.mark.parametrize("bf16, mark", [("AVX512_BF16", "[met]"), ("none", "[n/a]")])
def test_the_bf16_speed_up_is_a_target_only_where_the_cpu_has_bfloat16(monkeypatch, bf16, mark):
    """Where TensorFlow emulates bfloat16 the ratio only says how slow fp32
    is: the line says so instead of calling it met or missed."""
    monkeypatch.setattr(inference_part.machine, "cpu_info", lambda: {"bf16": bf16})
    result = {"machine": "test", "inference_s": {"fp32": {"513x513": 2.0},
                                                 "bf16": {"513x513": 1.0}}}
    result["targets"] = report.check_targets(result)
    line = [line for line in report.format_table(result).splitlines()
            if "bf16 >= 1.7x faster than fp32" in line]
    assert len(line) == 1 and line[0].startswith(mark)
    assert ("emulated" in line[0]) == (bf16 == "none")


def test_the_peer_part_says_why_it_measured_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("PEERS_PY", str(tmp_path / "no-python"))
    settings = options.Settings(parts=["peer"])
    found = peer_part.measure(types.SimpleNamespace(settings=settings))
    assert "no peer" in found["peer"]["error"] and "setup.sh" in found["peer"]["error"]
    assert "PyTorch peer: no peer" in "\n".join(peer_part.lines(found))


def test_the_peer_figures_are_read_from_its_output(monkeypatch):
    outputs = iter([
        "torch 2.13.0 infer fp32 513x513 batch 1: median 3.130 s (min 3.1, max 3.2, 5 reps) [x]\n"
        "torch 2.13.0 infer fp32 513x513 batch 1: peak RSS 1.20 GiB\n"])
    monkeypatch.setattr(peer_part.subprocess, "run", lambda *a, **k: types.SimpleNamespace(
        returncode=0, stdout=next(outputs), stderr=""))
    assert peer_part.run_peer("python", [], 2) == {"seconds": 3.13, "torch": "2.13.0",
                                                   "peak_gib": 1.2}
    report_ = {"inference_s": {"fp32": {"513x513": 2.5}},
               "peer": {"infer_size": "513x513", "infer": {"fp32": {"seconds": 3.13}}}}
    assert peer_part.targets(report_) == [("513x513 fp32 inference at most PyTorch's time",
                                           "0.80x", True)]



def test_the_train_part_runs_its_step_from_the_benchmark_script():
    """The script declares an inference job, which may assume frozen weights;
    its training step runs in a spawned process that imports the script
    again and inherits its environment, and must train on live weights
    (Trainer refuses to build where frozen weights are assumed: the train
    part died on every CPU where inference assumes them)."""
    done = subprocess.run(
        [sys.executable, os.path.join("misc", "benchmark.py"), "--parts", "train",
         "--train-batch", "1", "--train-size", "65", "--train-steps", "1",
         "--train-variants", "fp32", "--grad-update-every", "1", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [step] = json.loads(done.stdout)["train"]["runs"]
    assert "error" not in step, step["error"]
    assert step["batch"] == 1 and step["seconds"] > 0
