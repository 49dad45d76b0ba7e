"""The package's layout promises: light modules stay free of TensorFlow, and graph mode is on;
test modules share helpers through tests/helpers/, never through each other."""
import ast
import glob
import os
import subprocess
import sys

from conftest import REPO_ROOT

# Modules the dataset tools and the CRF workers import: numpy (and PIL) only.
NUMPY_ONLY = (
    "deeplab_resnet", "deeplab_resnet.constants", "deeplab_resnet.images",
    "deeplab_resnet.cli", "deeplab_resnet.files", "deeplab_resnet.metrics",
    "deeplab_resnet.progress", "deeplab_resnet.machine", "deeplab_resnet.messages",
    "deeplab_resnet.process", "deeplab_resnet.kernels", "deeplab_resnet.data.safe_tar",
    "deeplab_resnet.crf", "deeplab_resnet.crf.pool", "deeplab_resnet.crf.params",
    "deeplab_resnet.crf.backend_pydensecrf", "deeplab_resnet.crf.pruning",
    "deeplab_resnet.caffe.wire",
    "deeplab_resnet.caffe.prototxt", "deeplab_resnet.data.lists",
    "deeplab_resnet.data.label_maps", "deeplab_resnet.data.label_files",
    "deeplab_resnet.data.label_checks", "deeplab_resnet.data.voc_aug",
    "deeplab_resnet.data.demo", "deeplab_resnet.data.config")


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_numpy_only_modules_import_without_tensorflow():
    result = run_python(
        "import sys\n"
        "import %s\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
        "print(len(loaded))" % ", ".join(NUMPY_ONLY))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]


def test_scripts_with_crf_workers_import_without_tensorflow():
    """CRF workers re-import the main script: evaluate.py and inference.py
    load TensorFlow only when they run."""
    result = run_python(
        "import importlib.util, sys\n"
        "for name in ('evaluate', 'inference'):\n"
        "    spec = importlib.util.spec_from_file_location(name, name + '.py')\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(len([m for m in sys.modules if m.split('.')[0] == 'tensorflow']))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]


def test_any_graph_module_switches_tensorflow_to_graph_mode():
    for module in ("deeplab_resnet.network", "deeplab_resnet.checkpoints",
                   "deeplab_resnet.data.reader"):
        result = run_python("import %s\nimport tensorflow as tf\n"
                            "print(tf.executing_eagerly())" % module)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-1] == "False", module


def test_test_modules_import_no_other_test_module():
    """Shared test code lives in tests/helpers/: importing a test module
    from another one runs its module-level code (its skips included) there too."""
    found = []
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "tests", "**", "*.py"),
                                 recursive=True)):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += ["%s imports %s" % (os.path.relpath(path, REPO_ROOT), name)
                      for name in names if name.split(".")[0].startswith("test_")]
    assert found == []
