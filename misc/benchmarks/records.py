"""Records: one JSON file per measuring run, naming the machine, the code and the command.

A figure in README.md or docs/ is generated from a record (misc/figure_tables.py),
never typed: the record says on which CPU, on which commit, under which load
and by which command it was measured. Records are small and committed, in
``results/``. Kinds:

- ``benchmark``: ``misc/benchmark.py --record``; its figures are the JSON
  report (``--save-json``'s), the PyTorch peer's included when it ran.
- ``demo``, ``tests``: ``misc/record.py`` timing a command (the README's demo
  and test commands) and the figures it prints (mIoU, pytest's summary).

Standard library only, so that the docs' generator and its test load records
without TensorFlow.
"""
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys

from deeplab_resnet import files, kernels, machine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIRECTORY = os.path.join(ROOT, "results")
SCHEMA = 1
KINDS = ("benchmark", "demo", "tests")
# The CPU flags that decide kernels and bfloat16 support (kernels, machine).
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
         "amx_bf16", "amx_tile")
# Paths whose changes leave the measured code as committed: records and prose.
NOT_CODE = ("results/", "docs/", "README.md")


def machine_facts():
    """The CPU (name, family, model, the flags that matter), cores used, memory."""
    cpu = machine.cpu_info()
    flags = machine.cpu_flags()
    return {"cpu": machine.cpu_name(cpu), "model_name": cpu["model_name"],
            "family": cpu["family"], "model": cpu["model"],
            "flags": sorted(flag for flag in FLAGS if flag in flags),
            "native_bf16": cpu["bf16"], "cores": machine.available_cores(),
            "memory_gib": round(_memory_bytes() / 2.0 ** 30, 1),
            # Real-time tasks' share of each second (-1: unthrottled): chrt'd
            # timings near a second lose up to 50 ms to the default.
            "sched_rt_runtime_us": _read_int("/proc/sys/kernel/sched_rt_runtime_us")}


def _read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _memory_bytes():
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return 1024 * int(line.split()[1])
    except OSError:
        pass
    return 0


def _version(module):
    """A module's version if it is installed, else None (nothing imported
    that the caller did not: records stay light)."""
    from importlib import metadata
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def software_facts(extra=None):
    """Python, TensorFlow, numpy (and ``extra``: e.g. the peer's torch)."""
    facts = {"python": platform.python_version(),
             "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
             "numpy": _version("numpy")}
    facts.update(extra or {})
    return facts


def git_facts(root=ROOT):
    """The commit measured and whether the code differed from it (changes
    to records and prose, ``NOT_CODE``, do not count)."""
    def git(*args):
        return subprocess.run(("git",) + args, cwd=root, capture_output=True,
                               text=True, check=True).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    dirty = any(not path.startswith(NOT_CODE) for path in changed)
    return {"commit": commit, "dirty": dirty}


def kernel_facts():
    """The kernel family each job gets in this environment (kernels.family,
    or the user's TF_ENABLE_ONEDNN_OPTS), and oneDNN's ISA cap if set."""
    facts = {job: kernels.describe(kernels.environment(job).get(kernels.ENV))
             for job in kernels.JOBS}
    facts["user_setting"] = kernels.user_setting()
    facts["inference_frozen_weights"] = kernels.environment("inference").get(kernels.FROZEN_ENV)
    facts["user_frozen_weights"] = kernels.user_setting(key=kernels.FROZEN_ENV)
    facts["onednn_max_cpu_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return facts


def load_average():
    return [round(value, 2) for value in os.getloadavg()]


def make(kind, figures, command, load_before, software=None, started=None):
    """A record of ``figures`` measured by ``command`` (a list of arguments),
    with the machine, the software, the commit, the kernels and the load."""
    if kind not in KINDS:
        raise ValueError("unknown record kind %r; choose from %s" % (kind, ", ".join(KINDS)))
    started = started or datetime.datetime.now(datetime.timezone.utc)
    return {"schema": SCHEMA, "kind": kind,
            "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(command), "machine": machine_facts(),
            "software": software_facts(software), "git": git_facts(),
            "kernels": kernel_facts(),
            "load": {"before": load_before, "after": load_average()},
            "figures": figures}


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def record_name(record):
    """'2026-12-07T1415-benchmark-amd-epyc-zen-5-f26m2': date, kind, CPU."""
    m = record["machine"]
    cpu = slug(m["cpu"].split(" (")[0])
    return "%s-%s-%s-f%sm%s" % (record["date"][:16].replace(":", ""), record["kind"], cpu,
                                m["family"], m["model"])


def write(record, directory=DIRECTORY):
    """Write ``record`` as DIRECTORY/<record_name>.json; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, record_name(record) + ".json")
    text = json.dumps(record, indent=1, sort_keys=True, default=lambda value: value.item())
    files.write_bytes(path, text + "\n", mode="w")
    return path


def load_all(directory=DIRECTORY):
    """{name: record} of every record in ``directory``, oldest first."""
    records = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as f:
            record = json.load(f)
        if record.get("schema") != SCHEMA or record.get("kind") not in KINDS:
            raise ValueError("%s is not a record of schema %d (misc/benchmarks/records.py)"
                             % (path, SCHEMA))
        records[os.path.splitext(os.path.basename(path))[0]] = record
    return dict(sorted(records.items(), key=lambda item: item[1]["date"]))


def command_line(argv=None):
    """This process's command line, as a user would type it from the root."""
    argv = list(sys.argv if argv is None else argv)
    script = os.path.relpath(os.path.abspath(argv[0]), ROOT) if argv else ""
    return ["python", script] + argv[1:]
