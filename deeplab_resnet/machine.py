"""What the machine offers this process: its cores, its CPU flags, how to start helpers.

Standard library only: the dataset tools, the CRF workers and the
TensorFlow session set-up all ask, and none of them should pay for an import
to do so.
"""
import multiprocessing
import os


def available_cores():
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpuinfo_fields(text=None):
    """The first value of each key of /proc/cpuinfo (or ``text`` in its
    format): the first processor's; empty where there is no such file."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                text = cpuinfo.read()
        except OSError:
            text = ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags(text=None):
    """The CPU's feature flags (``avx2``, ``avx512f``, ``amx_bf16``, ...) from
    /proc/cpuinfo, or from ``text`` in its format; empty where there is none."""
    return frozenset(_cpuinfo_fields(text).get("flags", "").split())


# /proc/cpuinfo flags of native bfloat16 arithmetic, and how reports name them.
BF16_FLAGS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512_BF16"))
# AMD's CPU family/model numbers, by the name of their core, where the model
# name alone ("AMD EPYC") does not tell them apart.
AMD_CORES = {(23, 1): "Zen 1", (23, 49): "Zen 2", (25, 1): "Zen 3", (25, 17): "Zen 4",
             (26, 2): "Zen 5"}


def cpu_info(text=None):
    """The CPU from /proc/cpuinfo (or ``text`` in its format): model name,
    family and model numbers (which name e.g. Zen 4 where the model name is
    just "AMD EPYC"), and its bfloat16 support: 'AMX', 'AVX512_BF16', both
    ('AMX + AVX512_BF16') or 'none' (TensorFlow then emulates bfloat16)."""
    info = _cpuinfo_fields(text)
    flags = set(info.get("flags", "").split())
    native = [name for flag, name in BF16_FLAGS if flag in flags]
    return {"model_name": info.get("model name", "unknown CPU"),
            "family": info.get("cpu family"), "model": info.get("model"),
            "bf16": " + ".join(native) or "none"}


def cpu_name(cpu):
    """'AMD EPYC 9B14 (family 25, model 17)' from ``cpu_info()``; AMD's
    core name too where it is known: 'AMD EPYC (Zen 5, family 26, model 2)'."""
    if cpu["family"] is None or cpu["model"] is None:
        return cpu["model_name"]
    core = None
    if cpu["model_name"].startswith("AMD"):
        core = AMD_CORES.get((int(cpu["family"]), int(cpu["model"])))
    return "%s (%sfamily %s, model %s)" % (cpu["model_name"], core + ", " if core else "",
                                            cpu["family"], cpu["model"])


def fresh_process_context(preload=()):
    """A multiprocessing context whose workers are never a plain fork of the caller.

    The caller may run TensorFlow (train.py checks its labels before step 1),
    whose thread pools may hold locks at any moment; a forked child inherits
    those locks but not the threads. A forkserver is a fresh interpreter that
    forks the workers; it imports the ``preload`` modules once (keep them
    light: numpy, not TensorFlow). Without forkserver (Windows), workers are
    spawned.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
        return context
    return multiprocessing.get_context("spawn")
