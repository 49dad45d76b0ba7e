"""Which kernels each job gets (deeplab_resnet.kernels), and runtime's session pools and start-up.

The family table is pinned with CPU flag tables, not with the probe the code
uses; the scripts' choices are checked in fresh processes against what
TensorFlow actually has on this CPU, so that a change to runtime or to a
script's imports cannot flip a job's kernels silently.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT
from deeplab_resnet import kernels, machine
from deeplab_resnet.runtime import session_config, tf

AVX2_ONLY = frozenset("sse4_2 avx avx2 fma f16c".split())      # Zen 1-3, Haswell-Skylake clients
ZEN4 = AVX2_ONLY | frozenset("avx512f avx512bw avx512vl avx512_vnni avx512_bf16".split())
SAPPHIRE_RAPIDS = ZEN4 | frozenset("amx_bf16 amx_tile amx_int8".split())
SKYLAKE_X = AVX2_ONLY | frozenset("avx512f avx512bw avx512vl avx512cd avx512dq".split())
OLD_X86 = frozenset("sse4_2 avx".split())
SCRIPT_JOBS = {"train.py": "train", "evaluate.py": "inference", "inference.py": "inference",
               "export.py": "inference"}


@pytest.mark.parametrize("flags, train, inference", [
    (AVX2_ONLY, kernels.ONEDNN, kernels.EIGEN),
    (ZEN4, kernels.ONEDNN, kernels.ONEDNN),
    (SAPPHIRE_RAPIDS, kernels.ONEDNN, kernels.ONEDNN),
    (SKYLAKE_X, kernels.ONEDNN, kernels.ONEDNN),
    (OLD_X86, kernels.DEFAULT, kernels.DEFAULT),
    (frozenset(), kernels.DEFAULT, kernels.DEFAULT),    # not x86, or no /proc/cpuinfo
])
def test_the_kernel_family_by_cpu_and_job(flags, train, inference):
    assert kernels.family("train", flags) == train
    assert kernels.family("inference", flags) == inference


def test_an_unknown_job_is_refused():
    with pytest.raises(ValueError, match="unknown job 'serve'"):
        kernels.family("serve", AVX2_ONLY)


def test_cpu_flags_come_from_cpuinfo():
    text = "processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2 fma\n"
    assert machine.cpu_flags(text) == {"fpu", "avx2", "fma"}
    assert machine.cpu_flags("processor\t: 0\n") == frozenset()


def test_forward_only_jobs_on_onednn_assume_frozen_weights():
    """Only inference on oneDNN: training changes its weights at every step,
    and Eigen has no filter reorder to keep."""
    frozen = kernels.FROZEN_ENV
    assert kernels.environment("inference", {}, flags=ZEN4)[frozen] == "1"
    assert frozen not in kernels.environment("train", {}, flags=ZEN4)
    assert frozen not in kernels.environment("inference", {}, flags=AVX2_ONLY)
    child = kernels.environment("train", kernels.environment("inference", {}, flags=ZEN4),
                                flags=ZEN4)
    assert frozen not in child and child["TF_ENABLE_ONEDNN_OPTS"] == "1"
    user = kernels.environment("inference", {frozen: "0"}, flags=ZEN4)
    assert user[frozen] == "0" and kernels.user_setting(user, frozen) == "0"


FROZEN_PROBE = """
import numpy as np
from deeplab_resnet.model import build_model
from deeplab_resnet.runtime import session_config, tf
from deeplab_resnet.testing import TINY_CONFIG
images = tf.placeholder(tf.float32, [1, None, None, 3])
tf.set_random_seed(0)
net, logits = build_model(images, 3, config=TINY_CONFIG, fold_batchnorm=True)
with tf.Session(config=session_config()) as sess:
    sess.run(tf.global_variables_initializer())
    rng = np.random.RandomState(0)
    outs = [sess.run(logits, {images: rng.uniform(-100, 100, (1,) + size + (3,))})
            for size in ((65, 49), (33, 41), (65, 49))]
np.save(%r, np.concatenate([o.ravel() for o in outs]))
"""


def test_a_process_that_declares_no_job_never_assumes_frozen_weights():
    """A notebook that imports the library may train in it too."""
    for flags in (ZEN4, AVX2_ONLY):
        environ = kernels.environment(kernels.DEFAULT_JOB, {}, flags=flags)
        assert kernels.FROZEN_ENV not in environ
        assert (environ.get("TF_ENABLE_ONEDNN_OPTS")
                == kernels.environment("inference", {}, flags=flags)["TF_ENABLE_ONEDNN_OPTS"])


def test_training_is_refused_where_weights_are_assumed_frozen(monkeypatch):
    from deeplab_resnet.training import Trainer
    from deeplab_resnet.training.config import NetworkConfig
    monkeypatch.setenv(kernels.FROZEN_ENV, "1")
    with tf.Graph().as_default():
        images = tf.zeros([1, 33, 33, 3])
        labels = tf.zeros([1, 33, 33, 1], tf.uint8)
        with pytest.raises(RuntimeError, match="assumes frozen weights"):
            Trainer(images, labels, NetworkConfig(num_classes=3))


def test_frozen_weights_give_the_same_logits_at_every_size(tmp_path):
    """The kept filter reorders are those of the right weights whatever the
    input size: logits equal those of a process that reorders every run."""
    results = []
    for setting in ("1", "0"):
        path = str(tmp_path / ("logits%s.npy" % setting))
        env = dict(clean_environment(), DEEPLAB_JOB="inference")
        env[kernels.FROZEN_ENV] = setting
        done = run_python(FROZEN_PROBE % path, env=env)
        assert done.returncode == 0, done.stderr
        results.append(np.load(path))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_a_users_setting_wins_and_a_parents_choice_does_not():
    """The user's TF_ENABLE_ONEDNN_OPTS decides every job; the value the
    project set in a parent (marked) is re-decided for the child's job."""
    user = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    for job in kernels.JOBS:
        assert kernels.environment(job, user, flags=ZEN4)["TF_ENABLE_ONEDNN_OPTS"] == "0"
    parent = kernels.environment("inference", {}, flags=AVX2_ONLY)
    assert parent["TF_ENABLE_ONEDNN_OPTS"] == "0" and kernels.user_setting(parent) is None
    child = kernels.environment("train", parent, flags=AVX2_ONLY)
    assert child["TF_ENABLE_ONEDNN_OPTS"] == "1" and child[kernels.JOB_ENV] == "train"
    neither = kernels.environment("train", {"TF_ENABLE_ONEDNN_OPTS": "1"}, flags=OLD_X86)
    assert neither["TF_ENABLE_ONEDNN_OPTS"] == "1"    # the user's, kept
    assert "TF_ENABLE_ONEDNN_OPTS" not in kernels.environment("train", {}, flags=OLD_X86)


def clean_environment():
    """This process's environment without the kernel switches: what a user's
    shell has."""
    return {key: value for key, value in os.environ.items()
            if key not in (kernels.CHOSEN_ENV, kernels.JOB_ENV) + kernels.MANAGED}


def run_python(code, env=None):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env=env or clean_environment())


@pytest.mark.parametrize("script", sorted(SCRIPT_JOBS))
def test_each_script_runs_its_jobs_kernels_on_this_cpu(script):
    """The script declares its job before TensorFlow is imported, and
    TensorFlow then has the family kernels.family gives on this CPU."""
    done = run_python(
        "import runpy, os\n"
        "runpy.run_path(%r, run_name='imported')\n"
        "from deeplab_resnet import runtime\n"
        "from tensorflow.python.util import _pywrap_util_port as port\n"
        "print(os.environ.get('DEEPLAB_JOB'), port.IsMklEnabled())\n" % script)
    assert done.returncode == 0, done.stderr
    job, onednn = done.stdout.split()[-2:]
    assert job == SCRIPT_JOBS[script]
    wanted = kernels.family(job, machine.cpu_flags())
    if wanted != kernels.DEFAULT:
        assert onednn == str(wanted == kernels.ONEDNN)


def test_the_users_switch_overrides_the_scripts_choice():
    env = dict(clean_environment(), TF_ENABLE_ONEDNN_OPTS="0")
    done = run_python("import runpy\nrunpy.run_path('train.py', run_name='imported')\n"
                      "from deeplab_resnet import runtime\n"
                      "from tensorflow.python.util import _pywrap_util_port as port\n"
                      "print(port.IsMklEnabled())\n", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"


def test_tensorflow_imported_first_is_said_out_loud():
    done = run_python("import tensorflow\nimport deeplab_resnet.runtime\n")
    assert done.returncode == 0, done.stderr
    assert "TensorFlow was imported before deeplab_resnet.runtime" in done.stderr


def test_start_up_prints_none_of_tensorflows_chatter():
    """oneDNN's notice and absl's came twice on every start once oneDNN was
    switched on by the environment; the user sees the project's lines."""
    env = dict(clean_environment(), TF_ENABLE_ONEDNN_OPTS="1")
    done = run_python("import sys\nfrom deeplab_resnet.runtime import tf\n"
                      "print('kept', file=sys.stderr)\n", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "kept"
    assert "oneDNN custom operations" not in done.stderr


def test_the_default_crf_prints_nothing_of_tensorflows():
    """oneDNN's rewrite of an int32 Transpose said "oneDNN supports DT_INT32
    only on platforms with AVX-512" on the first TensorFlow CRF of every
    process (the lattice's index columns; now stacked)."""
    env = dict(clean_environment(), TF_ENABLE_ONEDNN_OPTS="1")
    done = run_python("import numpy as np\nfrom deeplab_resnet import crf\n"
                      "rng = np.random.RandomState(0)\n"
                      "probs = rng.dirichlet(np.ones(4), size=(12, 16)).astype(np.float32)\n"
                      "image = rng.randint(0, 256, (12, 16, 3)).astype(np.uint8)\n"
                      "print(crf.dense_crf(image, probs).shape)\n", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-3:] == ["(12,", "16,", "4)"]
    assert done.stderr == ""


def _parallel_sleeps(config, count=4, seconds=0.5):
    """Wall time of ``count`` independent ``seconds``-long sleeps in one
    session run: they overlap only as far as its inter-op pool allows."""
    with tf.Graph().as_default():
        sleeps = [tf.py_func(lambda: time.sleep(seconds) or 0, [], tf.int64, stateful=True)
                  for _ in range(count)]
        with tf.Session(config=config) as sess:
            sess.run(sleeps)     # warm-up: the pools exist
            start = time.perf_counter()
            sess.run(sleeps)
            return time.perf_counter() - start


def test_every_session_owns_the_inter_op_pool_it_asks_for():
    """A one-thread session first (as the gradient probe is), then one that
    asks for four inter-op threads: its four sleeps overlap (0.5 s). By
    TensorFlow's default the process's pool keeps the first session's size
    and they would run one after the other (2 s)."""
    _parallel_sleeps(session_config(1, 1), count=1)
    assert _parallel_sleeps(session_config(1, 4)) < 1.3
