"""Which convolution kernels TensorFlow runs: oneDNN's or Eigen's, by CPU and job.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported, and
the choice then holds for the whole process. Neither family wins everywhere,
so the project decides per CPU and per job, here, and ``runtime`` applies
the decision right before it imports TensorFlow:

- **AVX-512** (``avx512f`` with ``avx512bw``/``avx512vl``, the ``avx512_core``
  of oneDNN): oneDNN for every job. Its direct ``jit:avx512`` convolutions
  run fp32 inference near the matmul peak, its bf16 kernels use AVX512_BF16
  or AMX natively, and its backprops differentiate dilated convolutions.
- **AVX2 without AVX-512**: oneDNN has no direct AVX2 kernels for
  TensorFlow's NHWC convolutions, so every forward convolution runs as
  im2col plus a GEMM (``x64:gemm:jit``), slower than Eigen's contraction
  there; but Eigen differentiates a dilated convolution through
  space-to-batch, which costs more in training than oneDNN's GEMM
  convolutions. Hence oneDNN for training (``train``), Eigen for the jobs
  that only run the network forward (``inference``: evaluate.py,
  inference.py, export.py, the benchmark's inference parts).
- **Anything else** (no AVX2, or not x86): TensorFlow's own default.

A training process runs its validation with the training family (one
process, one family); docs/speed.md has what that costs on AVX2 CPUs.
Forward-only jobs on oneDNN also set ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS``:
their weights never change after the restore, so oneDNN may keep each
filter reordered instead of reordering it at every run. A process that
declares no job (``DEFAULT_JOB``: the library in a notebook) gets the
forward jobs' family but never that, since it may train; ``Trainer``
refuses to build in a process that assumes frozen weights.

``TF_ENABLE_ONEDNN_OPTS`` (or ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS``) set by
the user always wins. The project marks the values it sets itself
(``DEEPLAB_ONEDNN_CHOSEN``), so that a child
process it starts, which inherits the environment, still decides for its
own job instead of taking the parent's choice for the user's.

Standard library only: scripts call ``choose`` before anything imports
TensorFlow.
"""
import logging
import os
import sys

from deeplab_resnet import machine

log = logging.getLogger(__name__)

JOBS = ("train", "inference")
ONEDNN, EIGEN, DEFAULT = "oneDNN", "Eigen", "TensorFlow's default"
ENV = "TF_ENABLE_ONEDNN_OPTS"
# oneDNN keeps a constant filter in its blocked layout from the first run
# on, but reorders a variable's at every run: 12% of fp32 inference at
# 513x513 on a Zen 5 EPYC. Forward-only jobs restore their weights before
# their first run and never change them, so they may say so.
FROZEN_ENV = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
MANAGED = (ENV, FROZEN_ENV)
# What the project set of MANAGED ("KEY=VALUE;..."), so that children can
# tell it from a user's setting.
CHOSEN_ENV = "DEEPLAB_ONEDNN_CHOSEN"
# The job of this process, for runtime to apply and for children to inherit
# when they declare none.
JOB_ENV = "DEEPLAB_JOB"
# What a process that declares no job runs: the forward jobs' kernels (a
# notebook predicting), but never frozen weights, since it may also train.
DEFAULT_JOB = "library"
AVX512_CORE = ("avx512f", "avx512bw", "avx512vl")


def family(job, flags):
    """The kernel family (ONEDNN, EIGEN or DEFAULT) for ``job`` on a CPU
    with /proc/cpuinfo ``flags`` (a set of flag names); DEFAULT_JOB's is
    inference's."""
    if job == DEFAULT_JOB:
        job = "inference"
    if job not in JOBS:
        raise ValueError("unknown job %r; choose from %s" % (job, ", ".join(JOBS)))
    if all(flag in flags for flag in AVX512_CORE):
        return ONEDNN
    if "avx2" in flags and "fma" in flags:
        return ONEDNN if job == "train" else EIGEN
    return DEFAULT


def settings(job, flags):
    """{variable: value or None (unset)} of MANAGED for ``job`` on ``flags``."""
    chosen = family(job, flags)
    return {ENV: {ONEDNN: "1", EIGEN: "0"}.get(chosen),
            FROZEN_ENV: "1" if job == "inference" and chosen == ONEDNN else None}


def _chosen(environ):
    return dict(item.split("=", 1) for item in environ.get(CHOSEN_ENV, "").split(";")
                if "=" in item)


def user_setting(environ=None, key=ENV):
    """``key`` (one of MANAGED) as the user set it, or None where the user
    did not (unset, or set by this project in a parent process)."""
    environ = os.environ if environ is None else environ
    value = environ.get(key)
    if value is None or _chosen(environ).get(key) == value:
        return None
    return value


def environment(job, environ=None, flags=None):
    """``environ`` (default: this process's) changed so that a Python
    process started with it runs ``job``'s kernels: a copy, for
    ``subprocess`` or for spawning. A variable of MANAGED the user set
    stays as it is."""
    environ = dict(os.environ if environ is None else environ)
    flags = machine.cpu_flags() if flags is None else flags
    environ[JOB_ENV] = job
    chosen = {}
    for key, value in settings(job, flags).items():
        if user_setting(environ, key) is not None:
            continue
        environ.pop(key, None)
        if value is not None:
            environ[key] = chosen[key] = value
    environ.pop(CHOSEN_ENV, None)
    if chosen:
        environ[CHOSEN_ENV] = ";".join("%s=%s" % item for item in sorted(chosen.items()))
    return environ


def frozen_weights():
    """Whether TensorFlow in this process assumes frozen weights (read at its
    import): a process that trains must not."""
    return os.environ.get(FROZEN_ENV, "").strip().lower() in ("1", "true", "yes")


def tensorflow_imported():
    return "tensorflow" in sys.modules


def _set(environ):
    """This process's job and kernel switch as in ``environ``."""
    for key in (JOB_ENV, CHOSEN_ENV) + MANAGED:
        if key in environ:
            os.environ[key] = environ[key]
        else:
            os.environ.pop(key, None)


def choose(job):
    """Declare this process's job; call before TensorFlow is imported.

    After the import it is too late to change the family: if ``job`` would
    have chosen another one than the process runs, say so and keep it.
    """
    wanted = environment(job)
    if tensorflow_imported():
        if describe(wanted.get(ENV)) != describe(current()):
            log.warning("TensorFlow was imported before this %s job was declared, so it "
                        "keeps running %s kernels instead of %s. Import deeplab_resnet's "
                        "graph modules after kernels.choose().", job,
                        describe(current()), describe(wanted.get(ENV)))
        os.environ[JOB_ENV] = job
        return
    _set(wanted)


def apply():
    """Set TF_ENABLE_ONEDNN_OPTS for this process's job (DEFAULT_JOB unless
    ``choose`` or a parent named one), unless the user set it; runtime calls
    this right before it imports TensorFlow."""
    if not tensorflow_imported():
        _set(environment(os.environ.get(JOB_ENV, DEFAULT_JOB)))


def current():
    """TF_ENABLE_ONEDNN_OPTS as this process has it now (None: unset)."""
    return os.environ.get(ENV)


def describe(value):
    """The family a TF_ENABLE_ONEDNN_OPTS value selects, in words."""
    if value is None:
        return DEFAULT
    return EIGEN if value.strip().lower() in ("0", "false", "off", "no") else ONEDNN
