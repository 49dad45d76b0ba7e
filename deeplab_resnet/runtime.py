"""TensorFlow as this project runs it: tf.compat.v1 in graph mode, sessions sized to the cores.

Every module that builds graphs takes TensorFlow from here
(``from deeplab_resnet.runtime import tf``), so v2 behaviour is disabled in
this one place, before any graph exists, whichever module is imported first.
Modules that need only numpy (constants, label tools, the CRF workers) never
import this one, and so never pay for TensorFlow.
"""
import logging
import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) hides
# the progress lines users care about; they can still opt back in.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with
# AVX512_VNNI/BF16 or AMX; on AVX2-only CPUs it runs Eigen's, which are
# slower at every convolution and differentiate dilated ones through
# space-to-batch. The switch is read once, when TensorFlow is imported, so it
# is set here, before the import; TF_ENABLE_ONEDNN_OPTS=0 in the environment
# still turns it off. docs/speed.md has what it buys.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# By default TensorFlow sizes one intra-op pool for the whole process from
# the first session it creates, whatever later sessions ask for; a tiny
# one-thread session (the CPU gradient probe in training.gradients) then left
# every training step on one core. With this, each session's devices own the
# pool its ConfigProto asks for (session_config). docs/speed.md has the figures.
os.environ.setdefault("TF_OVERRIDE_GLOBAL_THREADPOOL", "1")

import tensorflow.compat.v1 as tf  # noqa: E402

from deeplab_resnet.machine import available_cores  # noqa: E402

# Switching says "non-resource variables are not supported in the long
# term", once per process, before any script could set up its logging.
_tf_logger = logging.getLogger("tensorflow")
_level = _tf_logger.level
_tf_logger.setLevel(logging.ERROR)
tf.disable_v2_behavior()
_tf_logger.setLevel(_level)


def session_config(intra_op_threads=0, inter_op_threads=0):
    """A ConfigProto with explicit thread pools.

    One intra-op thread per core keeps the big convolutions at the GEMM peak;
    more inter-op threads than that only make ops fight for the same cores.
    """
    config = tf.ConfigProto(
        intra_op_parallelism_threads=intra_op_threads or available_cores(),
        inter_op_parallelism_threads=inter_op_threads or 2,
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
