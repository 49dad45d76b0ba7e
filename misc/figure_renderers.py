"""The measured tables of the docs, each made from the records (misc/figure_tables.py writes them).

``TABLES`` maps a block's name to a function of all records returning
(Markdown, [the names of the records it used]). A table with one column per
CPU takes, for each CPU, its newest record holding the figures; records made
with the kernel family forced (TF_ENABLE_ONEDNN_OPTS or ONEDNN_MAX_CPU_ISA
set by hand) feed only the kernels table. Standard library only.
"""
import collections


def default_kernels(record):
    kernels = record.get("kernels") or {}
    return (kernels.get("user_setting") is None and kernels.get("onednn_max_cpu_isa") is None
            and kernels.get("user_frozen_weights") is None)


def newest_per_cpu(records, kind, has, also=None):
    """{cpu: (name, record)}: each CPU's newest ``kind`` record, with the
    project's own kernel choice, whose figures satisfy ``has``; in CPU order.
    With ``also``, one per (cpu, also(figures)) instead, in that order."""
    chosen = {}
    for name, record in records.items():  # oldest first
        figures = record["figures"]
        if record["kind"] == kind and default_kernels(record) and has(figures):
            cpu = record["machine"]["cpu"]
            chosen[cpu if also is None else (cpu, also(figures))] = (name, record)
    return collections.OrderedDict(sorted(chosen.items()))


def dig(mapping, *keys):
    """mapping[k1][k2]... or None where a key is missing."""
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping or mapping[key] is None:
            return None
        mapping = mapping[key]
    return mapping


def seconds(value, digits=2):
    return "-" if value is None else "%.*f s" % (digits, value)


def ratio(ours, theirs):
    return "" if not ours or not theirs else " (%.2fx)" % (ours / theirs)


def gib(value):
    return "-" if value is None else "%.2f GiB" % value


def column_table(columns, rows):
    """Markdown with a row per (label, function of a record's figures -> text)
    and a column per CPU ({cpu: (name, record)}); a row given as (label,
    function, "record") gets the whole record instead of its figures."""
    if not columns:
        return ""
    head = "| | " + " | ".join(columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 1)]
    for label, cell, *of in rows:
        texts = [cell(record if of else record["figures"]) for _, record in columns.values()]
        if any(text not in (None, "-", "") for text in texts):
            lines.append("| %s | %s |" % (label, " | ".join(t or "-" for t in texts)))
    return "\n".join(lines)


def used(columns):
    return [name for name, _ in columns.values()]


# ---------------------------------------------------------------- inference
def _bare(dtype, size):
    def cell(f):
        value = dig(f, "inference_s", dtype, size)
        gflop, peak = dig(f, "model_gflop", size), dig(f, "peak_gflops", dtype)
        if value is None:
            return None
        share = " (%.0f%% of peak)" % (100 * gflop / value / peak) if gflop and peak else ""
        return seconds(value, 3) + share
    return cell


def inference(records):
    columns = newest_per_cpu(records, "benchmark", lambda f: "inference_s" in f)
    size = "513x513"
    rows = [("matmul peak, fp32 / bf16", lambda f: "%s / %s GFLOP/s" % (
                 "%.0f" % dig(f, "peak_gflops", "fp32"), "%.0f" % dig(f, "peak_gflops", "bf16"))
             if dig(f, "peak_gflops", "bf16") else None),
            ("kernels", lambda r: r["kernels"]["inference"], "record")]
    for dtype in ("fp32", "bf16"):
        rows.append(("bare network, %s, %s" % (dtype, size), _bare(dtype, size)))
    rows += [
        ("frozen export in TensorFlow, fp32", lambda f: seconds(dig(
            f, "onnx", size, "frozen_graph_s"), 3)),
        ("onnxruntime on its model.onnx, fp32", lambda f: seconds(dig(
            f, "onnx", size, "onnxruntime_s"), 3)),
        ("OpenCV DNN, same Caffe model, fp32", lambda f: seconds(dig(f, "opencv_s", size), 3)),
        ("PyTorch peer, eager, BatchNorm folded, fp32", lambda f: seconds(dig(
            f, "peer", "infer", "fp32", "seconds"), 3)),
        ("PyTorch peer, bf16 autocast", lambda f: seconds(dig(
            f, "peer", "infer", "bf16", "seconds"), 3)),
        ("bare network, fp32, 321x321", _bare("fp32", "321x321")),
        ("evaluate.py end to end, fp32, 500x375 (bare network)", lambda f: "%s (%s)" % (
            seconds(dig(f, "evaluate", "fp32_s"), 3), seconds(dig(f, "evaluate", "fp32_bare_s"), 3))
            if dig(f, "evaluate", "fp32_s") else None),
        ("evaluate.py end to end, bf16, 500x375 (bare network)", lambda f: "%s (%s)" % (
            seconds(dig(f, "evaluate", "bf16_s"), 3), seconds(dig(f, "evaluate", "bf16_bare_s"), 3))
            if dig(f, "evaluate", "bf16_s") else None),
    ]
    table = column_table(columns, rows)
    return ("s/image, batch 1, median:\n\n" + table) if table else "", used(columns)


# ---------------------------------------------------------------- kernels
def kernel_families(records):
    """Every benchmark record's 513x513 fp32 inference and training step, by
    CPU, oneDNN's ISA cap and the kernel family each ran."""
    lines = ["| CPU | oneDNN ISA cap | chosen by | inference kernels | 513x513 fp32 inference | "
             "training kernels | fp32 training step |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    names = []
    for name, record in records.items():
        f, k = record["figures"], record["kernels"]
        infer = _bare("fp32", "513x513")(f)
        steps = ["batch %d: %s" % (r["batch"], seconds(r["seconds"]))
                 for r in dig(f, "train", "runs") or []
                 if r["variant"] == "fp32" and r["grad_update_every"] == 1 and "seconds" in r]
        if record["kind"] != "benchmark" or not (infer or steps):
            continue
        names.append(name)
        chosen = ("`TF_ENABLE_ONEDNN_OPTS=%s`" % k["user_setting"]
                  if k.get("user_setting") is not None else "the project")
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            record["machine"]["cpu"], k.get("onednn_max_cpu_isa") or "none", chosen,
            k["inference"], infer or "-", k["train"], ", ".join(steps) or "-"))
    return "\n".join(lines), names


# ---------------------------------------------------------------- training
def _has_train(f):
    return bool(dig(f, "train", "runs"))


def _step(variant, batch, k=1):
    def find(f):
        for run in dig(f, "train", "runs") or []:
            if (run["variant"], run["batch"], run["grad_update_every"]) == (variant, batch, k):
                return run
        return None
    return find


def train_peer(records):
    """Training step against PyTorch, a row per CPU, batch and dtype."""
    lines = ["| CPU | batch | dtype | PyTorch s/step, peak | this project s/step, peak |",
             "| --- | --- | --- | --- | --- |"]
    names = []
    for name, record in records.items():
        f = record["figures"]
        peer = dig(f, "peer", "train")
        if record["kind"] != "benchmark" or not default_kernels(record) or not peer:
            continue
        batch = f["peer"]["train_batch"]
        for dtype, theirs in peer.items():
            ours = _step(dtype, batch)(f)
            if not ours or "seconds" not in ours or "seconds" not in theirs:
                continue
            if name not in names:
                names.append(name)
            lines.append("| %s | %d | %s | %s, %s | **%s**%s, %s |" % (
                record["machine"]["cpu"], batch, dtype, seconds(theirs["seconds"]),
                gib(theirs["peak_gib"]), seconds(ours["seconds"]),
                ratio(ours["seconds"], theirs["seconds"]), gib(ours["peak_bytes"] / 2.0 ** 30)))
    return "\n".join(lines), names


def train_variants(records):
    """Each CPU's newest record with several variants: s/step, GFLOP/s, memory."""
    columns = newest_per_cpu(records, "benchmark", lambda f: len(
        {r["variant"] for r in dig(f, "train", "runs") or []}) > 2)
    rows = []
    labels = collections.OrderedDict()
    for _, record in columns.values():
        for run in record["figures"]["train"]["runs"]:
            key = (run["variant"], run["batch"], run["grad_update_every"])
            labels[key] = "%s, batch %d%s" % (run["variant"], run["batch"], (
                " x --grad-update-every %d" % run["grad_update_every"])
                if run["grad_update_every"] > 1 else "")

    def cell(key):
        def text(f):
            run = _step(*key)(f)
            if not run:
                return None
            if "seconds" not in run:
                return run.get("error", "-")
            return "%s (%.0f GFLOP/s), %s" % (seconds(run["seconds"]), run["gflops"],
                                              gib(run["peak_bytes"] / 2.0 ** 30))
        return text
    rows = [(label, cell(key)) for key, label in labels.items()]
    table = column_table(columns, rows)
    return ("s/step (GFLOP/s), peak memory, 321x321:\n\n" + table) if table else "", used(columns)


# ---------------------------------------------------------------- demo, tests
def demo(records):
    """Per CPU: the demo's mIoU over all its records (a range, should runs
    differ) and the median time."""
    runs = collections.OrderedDict()
    for name, record in records.items():
        if record["kind"] == "demo" and "miou" in record["figures"]:
            runs.setdefault(record["machine"]["cpu"], []).append((name, record["figures"]))
    if not runs:
        return "", []
    cpus = sorted(runs)
    lines = ["| | " + " | ".join(cpus) + " |", "|" + " --- |" * (len(cpus) + 1)]
    mious = [sorted(f["miou"] for _, f in runs[cpu]) for cpu in cpus]
    lines.append("| val mIoU | %s |" % " | ".join(
        "%.4f" % m[0] if len(m) == 1 else "%.4f in each of %d runs" % (m[0], len(m))
        if m[0] == m[-1] else "%.4f to %.4f (%d runs)" % (m[0], m[-1], len(m))
        for m in mious))
    lines.append("| time (train, evaluate, segment 3 photos), median | %s |" % " | ".join(
        "%.0f s" % sorted(f["seconds"] for _, f in runs[cpu])[len(runs[cpu]) // 2]
        for cpu in cpus))
    return "\n".join(lines), [name for cpu in cpus for name, _ in runs[cpu]]


def tests(records):
    columns = newest_per_cpu(records, "tests", lambda f: "stages" in f)
    rows = []
    for stage in ("fast suite (bash scripts/test.sh)", "slow set (bash scripts/test.sh -m slow)"):
        rows.append((stage, lambda f, s=stage: (
            "%.1f min, %s" % (f["stages"][s]["seconds"] / 60, f["stages"][s]["summary"])
            if s in f["stages"] else None)))
    return column_table(columns, rows), used(columns)


# ---------------------------------------------------------------- headline
def headline(records):
    """The front page's few figures: training and inference against PyTorch."""
    lines = ["| CPU | training step, fp32, vs PyTorch | training step, bf16, vs PyTorch | "
             "513x513 fp32 inference, vs PyTorch |", "| --- | --- | --- | --- |"]
    names, rows = [], collections.OrderedDict()
    for name, record in records.items():
        f = record["figures"]
        if record["kind"] != "benchmark" or not default_kernels(record) or not f.get("peer"):
            continue
        cpu = record["machine"]["cpu"]
        row = rows.setdefault(cpu, {"fp32": {}, "bf16": {}, "infer": None})
        batch = dig(f, "peer", "train_batch")
        for dtype in ("fp32", "bf16"):
            ours, theirs = _step(dtype, batch)(f), dig(f, "peer", "train", dtype, "seconds")
            if ours and "seconds" in ours and theirs:
                row[dtype][batch] = "batch %d: %.2fx" % (batch, ours["seconds"] / theirs)
                names.append(name)
        ours, theirs = dig(f, "inference_s", "fp32", "513x513"), dig(
            f, "peer", "infer", "fp32", "seconds")
        if ours and theirs:
            row["infer"] = "%.2f s against %.2f s (%.2fx)" % (ours, theirs, ours / theirs)
            names.append(name)
    for cpu, row in sorted(rows.items()):
        lines.append("| %s | %s | %s | %s |" % (cpu, ", ".join(
            v for _, v in sorted(row["fp32"].items())) or "-", ", ".join(
            v for _, v in sorted(row["bf16"].items())) or "-", row["infer"] or "-"))
    return ("Time as a fraction of PyTorch 2.13's (below 1: faster), 2 threads, measured "
            "side by side in one run:\n\n" + "\n".join(lines),
            list(collections.OrderedDict.fromkeys(names)))


# ---------------------------------------------------------------- the CRF
def _per_cpu(records, has, table, also=None):
    """``table(figures)`` under a line naming the CPU, for each CPU's newest
    benchmark record whose figures satisfy ``has`` (``newest_per_cpu``)."""
    columns = newest_per_cpu(records, "benchmark", has, also)
    parts = ["%s:\n\n%s" % (record["machine"]["cpu"], table(record["figures"]))
             for _, record in columns.values()]
    return "\n\n".join(parts), used(columns)


def _crf_variants(f):
    crf = f["crf"]
    sizes = list(crf.get("fresh_process", {}))
    lines = ["%s, %d classes, %d iterations, on %s (pruning threshold %g):" % (
        crf["size"], crf["classes"], crf["iterations"], crf["input"], crf["prune_threshold"]),
        "", "| CRF | s/image | classes kept | labels = DeepLab's CRF | %s |" % " | ".join(
            "peak memory, %s" % size for size in sizes),
        "| --- | --- | --- | --- |" + " --- |" * len(sizes)]
    for name, v in crf["variants"].items():
        memory = [crf["fresh_process"][size].get(name, {}) for size in sizes]
        lines.append("| %s | %.3f s | %d | %.3f%% | %s |" % (
            name.replace("_", ", "), v["seconds"], v["classes_kept"],
            100 * v["label_agreement"], " | ".join(
                gib(m["peak_bytes"] / 2.0 ** 30) if "peak_bytes" in m else m.get("error", "-")
                for m in memory)))
    lines += ["", "The bare network at the same size: %s." % ", ".join(
        "%s %.3f s" % item for item in crf.get("network_s", {}).items())]
    return "\n".join(lines)


def crf_table(records):
    """Per CPU, the newest record of each CRF input (the VOC sample photo,
    the benchmark's generated one), VOC sample first."""
    return _per_cpu(records, lambda f: "variants" in (f.get("crf") or {}), _crf_variants,
                    also=lambda f: f["crf"]["input"].startswith("a generated"))


def _crf_evaluate(f):
    runs = f["crf"]["evaluate"]
    rounds = runs.get("rounds", 1)
    lines = ["evaluate.py on %d generated %s pairs, s/image from the first result to the "
             "last%s:" % (runs["images"], runs["size"],
                          ", the best of %d rounds" % rounds if rounds > 1 else ""), "",
             "| dtype | CRF | workers | threshold | s/image |", "| --- | --- | --- | --- | --- |"]
    for run in runs["runs"]:
        lines.append("| %s | %s | %s | %s | %.3f s |" % (
            run["dtype"], run["backend"] or "none", run["workers"] if run["backend"] else "-",
            "-" if run["prune_threshold"] is None else "%g" % run["prune_threshold"],
            run["seconds"]))
    return "\n".join(lines)


def crf_evaluate(records):
    return _per_cpu(records, lambda f: "evaluate" in (f.get("crf") or {}), _crf_evaluate)


def _crf_pruning(f):
    pruning = f["crf"]["pruning"]
    lines = ["| data (images) | threshold | classes kept | labels = DeepLab's CRF | worst image "
             "| mIoU change |", "| --- | --- | --- | --- | --- | --- |"]
    for name, data in pruning["datasets"].items():
        for form, v in data["pruned"].items():
            lines.append("| %s (%d) | %s | %.2f | %.4f%% | %.4f%% | %+.3f pp |" % (
                name, data["images"], form, v["classes_kept_mean"], 100 * v["label_agreement"],
                100 * v["worst_image_agreement"], v["miou_change_pp"]))
    return "\n".join(lines)


def crf_pruning(records):
    """Per CPU, the newest record with the most data sets (a run without
    --voc-sample has the demo's images only)."""
    def widest(f):  # the first of each CPU's in newest_per_cpu's order
        return -len(f["crf"]["pruning"]["datasets"])
    columns = newest_per_cpu(records, "benchmark", lambda f: "pruning" in (f.get("crf") or {}),
                             also=widest)
    first = collections.OrderedDict()
    for (cpu, _), chosen in columns.items():
        first.setdefault(cpu, chosen)
    return "\n\n".join("%s:\n\n%s" % (cpu, _crf_pruning(record["figures"]))
                       for cpu, (_, record) in first.items()), used(first)


# ---------------------------------------------------------------- targets
_NOT_PARTS = {"machine", "sizes", "targets"}


def superseded(records):
    """Names of the benchmark records whose every figure a newer record on
    the same CPU measured again: their targets are the newer one's to judge
    (a target since renamed or dropped goes with them)."""
    runs = [(name, record["machine"]["cpu"], set(record["figures"]) - _NOT_PARTS)
            for name, record in records.items()  # oldest first
            if record["kind"] == "benchmark" and default_kernels(record)]
    return {name for i, (name, cpu, parts) in enumerate(runs)
            if any(cpu == later_cpu and parts <= later_parts
                   for _, later_cpu, later_parts in runs[i + 1:])}


def targets(records):
    """Each target's outcome per CPU, from that CPU's newest record that
    checked it, leaving out ``superseded`` records."""
    outcome, names = collections.OrderedDict(), []
    dropped = superseded(records)
    for name, record in records.items():
        if record["kind"] != "benchmark" or not default_kernels(record) or name in dropped:
            continue
        for description, measured, met in record["figures"].get("targets", []):
            cpu = record["machine"]["cpu"]
            word = {True: "met", None: "n/a", False: "**MISSED**"}[met]
            outcome.setdefault(description, {})[cpu] = ("%s: %s" % (word, measured), name)
    cpus = sorted({cpu for cells in outcome.values() for cpu in cells})
    lines = ["| target | " + " | ".join(cpus) + " |", "|" + " --- |" * (len(cpus) + 1)]
    for description, cells in outcome.items():
        lines.append("| %s | %s |" % (description, " | ".join(
            cells[cpu][0] if cpu in cells else "-" for cpu in cpus)))
        names += [cells[cpu][1] for cpu in cpus if cpu in cells]
    return "\n".join(lines), list(collections.OrderedDict.fromkeys(sorted(names)))


TABLES = {
    "crf": crf_table,
    "crf-evaluate": crf_evaluate,
    "crf-pruning": crf_pruning,
    "targets": targets,
    "inference": inference,
    "kernels": kernel_families,
    "train-peer": train_peer,
    "train-variants": train_variants,
    "demo": demo,
    "tests": tests,
    "headline": headline,
}
