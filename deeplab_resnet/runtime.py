"""TensorFlow as this project runs it: tf.compat.v1 in graph mode, sessions sized to the cores.

Every module that builds graphs takes TensorFlow from here
(``from deeplab_resnet.runtime import tf``), so v2 behaviour is disabled in
this one place, before any graph exists, whichever module is imported first.
Modules that need only numpy (constants, label tools, the CRF workers) never
import this one, and so never pay for TensorFlow.
"""
import logging
import os
import sys
import tempfile
import warnings

from deeplab_resnet import kernels

# Set before TensorFlow's import, which reads them once: too late after it.
if kernels.tensorflow_imported():
    warnings.warn(
        "TensorFlow was imported before deeplab_resnet.runtime, so the project's "
        "environment switches (the kernel family for this CPU and job, per-session "
        "thread pools) do nothing in this process: import deeplab_resnet's modules "
        "first.", RuntimeWarning, stacklevel=2)
# oneDNN's kernels or Eigen's, for this CPU and this process's job
# (kernels.choose); TF_ENABLE_ONEDNN_OPTS in the environment still decides.
kernels.apply()
# By default TensorFlow sizes one intra-op pool for the whole process from
# the first session it creates, whatever later sessions ask for; a tiny
# one-thread session (the CPU gradient probe in training.gradients) then left
# every training step on one core. With this, each session's devices own the
# intra-op pool its ConfigProto asks for, and session_config gives each its
# own inter-op pool. docs/speed.md has the figures.
os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")

# Lines TensorFlow writes to stderr while it is imported that say nothing a
# user can act on (absl's notice that logging is not set up yet, oneDNN's
# "custom operations are on", the CPU feature guard). TF_CPP_MIN_LOG_LEVEL
# no longer hides them: they come before absl's logging is initialised.
STARTUP_CHATTER = ("All log messages before absl::InitializeLog",
                   "oneDNN custom operations are on", "cpu_feature_guard",
                   "To enable the following instructions",
                   "rebuild TensorFlow with the appropriate compiler flags")


def _import_tensorflow_quietly():
    """``tensorflow.compat.v1``, with the start-up chatter dropped from
    stderr and every other line passed on; with TF_CPP_MIN_LOG_LEVEL set to
    0 or 1 (asking for TensorFlow's information lines) nothing is dropped."""
    import importlib
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1"):
        return importlib.import_module("tensorflow.compat.v1")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return importlib.import_module("tensorflow.compat.v1")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace")
                    .splitlines(True) if not any(c in line for c in STARTUP_CHATTER)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


# TensorFlow's own INFO/WARNING lines hide the progress lines users care
# about; they can still opt back in.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = _import_tensorflow_quietly()

from deeplab_resnet.machine import available_cores  # noqa: E402

# Switching says "non-resource variables are not supported in the long
# term", once per process, before any script could set up its logging.
_tf_logger = logging.getLogger("tensorflow")
_level = _tf_logger.level
_tf_logger.setLevel(logging.ERROR)
tf.disable_v2_behavior()
_tf_logger.setLevel(_level)


def session_config(intra_op_threads=0, inter_op_threads=0):
    """A ConfigProto with explicit thread pools, the session's own.

    One intra-op thread per core keeps the big convolutions at the GEMM peak;
    more inter-op threads than that only make ops fight for the same cores.
    Every session gets the pools it asks for: the intra-op pool through
    TF_OVERRIDE_GLOBAL_THREADPOOL (above), the inter-op pool through
    ``use_per_session_threads``; by TensorFlow's default both would be the
    process's, sized by its first session (a one-thread probe, or the
    network's session where the CRF's wants one thread per core).
    """
    config = tf.ConfigProto(
        intra_op_parallelism_threads=intra_op_threads or available_cores(),
        inter_op_parallelism_threads=inter_op_threads or 2,
        use_per_session_threads=True,
        allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    return config


# What the operating system says when a write fails, as TensorFlow passes it on.
OS_CAUSES = ("No space left on device", "Permission denied", "Read-only file system",
             "Disk quota exceeded")


def first_error_line(err):
    """The line of an error worth one log line, without TensorFlow's op context.

    TensorFlow's errors open with "Graph execution error:" and the stack of
    the op; the line that says what went wrong is the first one naming an
    error, else the first line. Up to 300 characters.
    """
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        # The operating system's reason (a full disk) beats TensorFlow's frame.
        if any(cause in line for cause in OS_CAUSES):
            return line[:300]
    for line in lines:
        if "error" in line.lower() and "Graph execution error" not in line:
            return line[:300]
    return lines[0][:300] if lines else type(err).__name__
