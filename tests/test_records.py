"""Figures are records: the records' form, and the docs' measured tables generated from them.

The first two tests are the guard: a measured table in README.md or docs/
that differs from what results/ gives, or a page citing a record that does
not exist, fails here (run python misc/figure_tables.py).
"""
import json
import os
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, REPO_ROOT)
from misc import figure_renderers, figure_tables  # noqa: E402
from misc.benchmarks import records  # noqa: E402
from deeplab_resnet.testing import load_script  # noqa: E402

record_script = load_script(os.path.join(REPO_ROOT, "misc", "record.py"))


def read(page):
    with open(os.path.join(REPO_ROOT, page)) as f:
        return f.read()


def test_every_generated_block_is_what_the_records_give():
    committed = records.load_all()
    blocks = 0
    for page in figure_tables.PAGES:
        text = read(page)
        blocks += len(figure_tables.BLOCK.findall(text))
        assert figure_tables.render(text, committed) == text, (
            "%s: a measured table differs from results/: run python misc/figure_tables.py"
            % page)
    assert blocks >= len(figure_renderers.TABLES)


def test_every_cited_record_exists_and_every_record_is_used():
    committed = records.load_all()
    cited = set()
    for page in figure_tables.PAGES:
        text = read(page)
        assert figure_tables.missing_records(text, committed) == [], page
        cited.update(figure_tables.RECORD_NAME.findall(text))
    assert committed, "results/ holds no record"
    assert cited, "no page cites a record"


def test_a_block_naming_no_table_is_refused():
    with pytest.raises(ValueError, match="no table called 'speedd'"):
        figure_tables.render("<!-- figures:speedd -->\nx\n<!-- /figures:speedd -->", {})


def test_a_cited_record_that_does_not_exist_is_found():
    text = "as measured (`results/2026-01-01T0000-benchmark-x-f1m1.json`)"
    assert figure_tables.missing_records(text, {}) == ["2026-01-01T0000-benchmark-x-f1m1"]


def fake_record(cpu, date, figures, kind="benchmark", user_setting=None):
    return {"schema": records.SCHEMA, "kind": kind, "date": date, "command": "python x",
            "machine": {"cpu": cpu, "family": "25", "model": "1"},
            "kernels": {"train": "oneDNN", "inference": "Eigen",
                        "user_setting": user_setting, "onednn_max_cpu_isa": None},
            "figures": figures}


def inference_figures(fp32, peer_fp32=None):
    figures = {"inference_s": {"fp32": {"513x513": fp32}, "bf16": {"513x513": fp32 / 2}},
               "model_gflop": {"513x513": 378.0}, "peak_gflops": {"fp32": 200.0, "bf16": 400.0}}
    if peer_fp32:
        figures["peer"] = {"infer": {"fp32": {"seconds": peer_fp32}}, "train": {},
                           "train_batch": 4, "infer_size": "513x513"}
    return figures


def test_a_table_has_a_column_per_cpu_from_its_newest_record():
    """Two CPUs, the first with an older and a newer record and a forced-
    kernels one (which feeds only the kernels table): two columns, the newer
    figures, and the records used named."""
    fake = {"a-old": fake_record("CPU A", "2026-01-01T00:00:00Z", inference_figures(9.0)),
            "a-new": fake_record("CPU A", "2026-02-01T00:00:00Z", inference_figures(1.89, 3.0)),
            "a-forced": fake_record("CPU A", "2026-03-01T00:00:00Z", inference_figures(5.0),
                                    user_setting="0"),
            "b": fake_record("CPU B", "2026-01-15T00:00:00Z", inference_figures(3.78))}
    body, used = figure_renderers.inference(fake)
    assert used == ["a-new", "b"]
    assert "| | CPU A | CPU B |" in body
    # 378 GFLOP in 1.89 s = 200 GFLOP/s, the whole fp32 peak.
    assert "| bare network, fp32, 513x513 | 1.890 s (100% of peak) | 3.780 s (50% of peak) |" \
        in body
    assert "| PyTorch peer, eager, BatchNorm folded, fp32 | 3.000 s | - |" in body
    kernels_body, kernels_used = figure_renderers.kernel_families(fake)
    assert set(kernels_used) == set(fake)
    text = figure_tables.render("<!-- figures:inference -->\nstale 9.9 s\n<!-- /figures:inference -->",
                                fake)
    assert "Records: `results/a-new.json`, `results/b.json`." in text
    assert "stale" not in text


def test_targets_of_a_record_measured_again_are_dropped():
    """A target a newer record no longer checks (renamed or dropped) leaves
    the table once that record measured every figure of the older one;
    another CPU's, and a record with figures of its own, stay."""
    def with_targets(cpu, date, parts, targets):
        figures = dict({part: {} for part in parts}, targets=targets)
        return fake_record(cpu, date, figures)
    fake = {"old": with_targets("CPU A", "2026-01-01", ["crf"], [["old target", "2x", False]]),
            "wide": with_targets("CPU A", "2026-01-02", ["crf", "train"],
                                 [["train target", "0.9x", True]]),
            "new": with_targets("CPU A", "2026-01-03", ["crf"], [["new target", "4x", True]]),
            "b": with_targets("CPU B", "2026-01-01", ["crf"], [["old target", "2x", False]])}
    assert figure_renderers.superseded(fake) == {"old"}
    body, used = figure_renderers.targets(fake)
    assert used == ["b", "new", "wide"]
    assert "| old target | - | **MISSED**: 2x |" in body
    assert "| new target | met: 4x | - |" in body and "| train target | met: 0.9x | - |" in body


def crf_figures(source, seconds, datasets):
    variant = {"seconds": seconds, "classes_kept": 3, "label_agreement": 1.0}
    pruned = {"0.05": {"classes_kept_mean": 3.0, "label_agreement": 1.0,
                       "worst_image_agreement": 1.0, "miou_change_pp": 0.0}}
    return {"crf": {"size": "375x500", "classes": 21, "iterations": 10, "input": source,
                    "prune_threshold": 0.05, "variants": {"tensorflow_pruned": variant},
                    "fresh_process": {}, "network_s": {},
                    "pruning": {"datasets": {name: {"images": 1, "pruned": pruned}
                                             for name in datasets}}}}


def test_crf_tables_keep_each_input_and_the_widest_pruning_study():
    """A run on the benchmark's generated photo after one on the VOC sample
    adds a table beside the VOC one, and leaves the pruning table to the run
    that also measured the VOC sample."""
    voc = crf_figures("VOC sample x.jpg", 0.35, ["demo val", "VOC sample"])
    fake = {"old-voc": fake_record("CPU A", "2026-01-01", crf_figures("VOC sample x.jpg", 0.9,
                                                                       ["demo val", "VOC sample"])),
            "voc": fake_record("CPU A", "2026-01-02", voc),
            "generated": fake_record("CPU A", "2026-01-03", crf_figures(
                "a generated photo-like scene", 0.38, ["demo val"]))}
    body, used = figure_renderers.crf_table(fake)
    assert used == ["voc", "generated"]
    assert body.index("0.350 s") < body.index("0.380 s") and "0.900 s" not in body
    body, used = figure_renderers.crf_pruning(fake)
    assert used == ["voc"] and "| VOC sample (1) | 0.05 |" in body


def test_training_against_the_peer_gives_the_ratio():
    figures = inference_figures(2.0, 2.5)
    figures["peer"]["train"] = {"fp32": {"seconds": 20.0, "peak_gib": 4.5}}
    figures["train"] = {"runs": [{"variant": "fp32", "batch": 4, "grad_update_every": 1,
                                  "seconds": 15.0, "peak_bytes": 3.5 * 2 ** 30, "gflops": 100}]}
    body, used = figure_renderers.train_peer({"r": fake_record("CPU A", "2026-01-01", figures)})
    assert used == ["r"]
    assert "| CPU A | 4 | fp32 | 20.00 s, 4.50 GiB | **15.00 s** (0.75x), 3.50 GiB |" in body
    head, _ = figure_renderers.headline({"r": fake_record("CPU A", "2026-01-01", figures)})
    assert "| CPU A | batch 4: 0.75x | - | 2.00 s against 2.50 s (0.80x) |" in head


def test_a_record_names_the_machine_the_code_and_the_load(tmp_path):
    record = records.make("benchmark", {"x": 1.5}, ["python", "misc/benchmark.py"], [0.1, 0, 0])
    for key in ("date", "command", "machine", "software", "git", "kernels", "load", "figures"):
        assert key in record, key
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"]
    assert record["software"]["tensorflow"] and record["software"]["python"]
    assert set(record["kernels"]) >= {"train", "inference"}
    assert record["load"]["before"] == [0.1, 0, 0] and len(record["load"]["after"]) == 3
    path = records.write(record, str(tmp_path))
    assert os.path.basename(path).startswith(record["date"][:10])
    assert list(records.load_all(str(tmp_path)).values()) == [json.loads(json.dumps(record))]
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="other.json is not a record"):
        records.load_all(str(tmp_path))


def test_records_do_not_make_the_tree_dirty(tmp_path):
    """A change under results/ is not a change to the measured code; any
    other is."""
    import subprocess

    def git(*args):
        subprocess.run(("git",) + args, cwd=str(tmp_path), check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "c")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}")
    assert records.git_facts(str(tmp_path))["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    facts = records.git_facts(str(tmp_path))
    assert facts["dirty"] is True and len(facts["commit"]) == 40


def test_record_script_reads_pytest_and_the_demo():
    output = ("....\n=========== 412 passed, 2 skipped, 3 deselected in 598.21s (0:09:58) "
              "===========\n")
    assert record_script.PYTEST_SUMMARY.findall(output) == ["412 passed, 2 skipped, 3 deselected"]
    assert record_script.MIOU.findall("class 1 0.9\nmIoU 0.8632\n") == ["0.8632"]
