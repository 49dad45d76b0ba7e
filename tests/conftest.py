"""Shared fixtures: small VOC-layout datasets and a tiny DeepLab configuration.

Nothing here downloads anything; every file is written to ``tmp_path``. Also
the CI guard (under ``CI=true`` a skip not on ``ALLOWED_SKIPS`` fails the run)
and ``reserve_ports`` (free ports that nobody else can take meanwhile).
"""
import collections
import os
import resource
import runpy
import socket
import sys

import numpy as np
import pytest
from PIL import Image

from deeplab_resnet import kernels

# One process runs the tests of training and of inference alike: it takes
# training's kernels (oneDNN on AVX2-only CPUs too), as the suite always has;
# each script's own choice is tested in a fresh process (tests/test_kernels.py).
kernels.choose("train")

from deeplab_resnet import constants, testing  # noqa: E402
from deeplab_resnet.runtime import tf  # noqa: E402
from deeplab_resnet.testing import TINY_CONFIG, save_tiny_model  # noqa: E402
from helpers.voc_download import write_fake_download  # noqa: E402

pytest_plugins = ["pytester"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_SAMPLE = os.path.join(REPO_ROOT, os.pardir, "shared", "data", "voc_sample")


# ------------------------------------------------------------------ CI guard
# Tests that may skip in CI, by node id (parameters stripped), each with the
# reason. A skip anywhere else under CI=true fails the run: CI must not go
# green by skipping. OpenCV, pydensecrf and ../shared are present in CI, so
# the tests that skip without them are deliberately not listed.
ALLOWED_SKIPS = {
    "tests/test_towers.py::test_flags_refuse_uneven_batches_and_missing_gpus":
        "its second half checks the refusal of --num-gpus on a machine without "
        "GPUs and skips on one with GPUs",
}


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


_UNEXPECTED_SKIPS = []


def _record_skip(report):
    """Keep a skip (of a test or of a whole module) that CI does not allow."""
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    nodeid = report.nodeid
    if nodeid in ALLOWED_SKIPS or nodeid.split("[", 1)[0] in ALLOWED_SKIPS:
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    _UNEXPECTED_SKIPS.append((nodeid, reason))


def pytest_runtest_logreport(report):
    _record_skip(report)


def pytest_collectreport(report):
    _record_skip(report)


def pytest_terminal_summary(terminalreporter):
    if _UNEXPECTED_SKIPS:
        terminalreporter.section("skips not allowed in CI (ALLOWED_SKIPS, tests/conftest.py)")
        for nodeid, reason in _UNEXPECTED_SKIPS:
            terminalreporter.line("%s: %s" % (nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true an unexpected skip fails a run that passed (or ran nothing)."""
    if _UNEXPECTED_SKIPS and exitstatus in (pytest.ExitCode.OK,
                                            pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ------------------------------------------------------------------ timeouts
# pytest.ini gives every test 600 s (pytest-timeout). These take longer on a
# busy 2-core machine: their durations there under a load of 6-10 are in the
# comments (an idle machine is several times faster). The demos' limits sit
# above their own subprocess limit (2400 s per demo, tests/test_demo.py).
# test_multiworker.py sets its own limit, above its workers' deadlines. The
# other slow tests took at most 139 s there (export), well inside 600 s.
LONG_TIMEOUTS = {
    # three scales: ~40 minutes under load
    "tests/test_demo.py::test_demo_trained_multi_scale_still_meets_its_promise": 2700,
    # two demos, one in emulated bfloat16
    "tests/test_demo.py::test_demo_trains_evaluates_and_segments_and_bf16_reaches_the_float32_miou":
        3600,
    # 278 s under load: the full ResNet-101 with accumulation
    "tests/test_train.py::test_resnet101_trains_with_accumulation_and_batch_statistics": 900,
    # 545 s under load: the full ResNet-101 at 513x513 in fp32 and emulated bf16
    "tests/test_speed_paths.py::test_resnet101_bf16_prediction_matches_float32": 1800,
}


def pytest_collection_modifyitems(items):
    _check_over_a_minute_reasons(items)
    for item in items:
        seconds = LONG_TIMEOUTS.get(item.nodeid.split("[", 1)[0])
        if seconds and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(seconds))


# --------------------------------------------------------------- time budget
# The fast suite (the README's command, CI's first stage) must stay within
# 10 minutes on 2 cores, so a test in it that runs longer than this fails,
# unless it says why it needs the time: @pytest.mark.over_a_minute("reason").
# What takes longer and does not need to run on every change belongs in the
# slow set (@pytest.mark.slow), which this limit leaves alone. "Longer" is by
# the wall clock and by the CPU time the test used (its own threads and the
# processes it waited for) alike: on a shared, loaded machine the wall clock
# alone stretches every test several-fold, which is not the test's doing.
FAST_TEST_SECONDS = 60.0
_CPU_SECONDS = pytest.StashKey()


def cpu_seconds():
    """CPU time of this process's threads and of the children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    start = cpu_seconds()
    yield
    item.stash[_CPU_SECONDS] = cpu_seconds() - start


def _over_budget(item, report):
    """The failure text for a fast-suite test past FAST_TEST_SECONDS, or None."""
    if report.when != "call" or report.failed or report.duration <= FAST_TEST_SECONDS:
        return None
    cpu = item.stash.get(_CPU_SECONDS, 0.0)
    if cpu <= FAST_TEST_SECONDS:
        return None
    if item.get_closest_marker("slow") or item.get_closest_marker("over_a_minute"):
        return None
    return ("%s took %.0f s (%.0f s of CPU), more than the fast suite allows a test "
            "(%.0f s, tests/conftest.py FAST_TEST_SECONDS). Make it cheaper, move it to "
            "the slow set (@pytest.mark.slow), or mark it @pytest.mark.over_a_minute(\"why\")."
            % (item.nodeid, report.duration, cpu, FAST_TEST_SECONDS))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    problem = _over_budget(item, report)
    if problem:
        report.outcome, report.longrepr = "failed", problem


def _check_over_a_minute_reasons(items):
    """A test may pass the limit only with a reason (collection error otherwise)."""
    for item in items:
        marker = item.get_closest_marker("over_a_minute")
        if marker is not None and not (marker.args and str(marker.args[0]).strip()):
            raise pytest.UsageError("%s: @pytest.mark.over_a_minute needs the reason "
                                    "the test needs more than a minute." % item.nodeid)


# --------------------------------------------------------------------- ports
_RESERVED = []


def reserve_ports(count):
    """``count`` distinct free ports on 127.0.0.1, held until the test ends.

    Each port stays bound by a socket with SO_REUSEADDR that never listens:
    gRPC servers (tf.distribute.Server) bind their port with SO_REUSEADDR,
    which Linux allows beside a bound, non-listening socket, while any other
    binder (bind to 0 included) gets EADDRINUSE, so the port cannot be taken
    between this call and the server's start. SO_REUSEPORT does not do: TF's
    server does not set it and then fails with 'Could not start gRPC server'
    (tests/test_ci_hooks.py checks both claims).
    """
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    _RESERVED.extend(sockets)
    return [s.getsockname()[1] for s in sockets]


@pytest.fixture(autouse=True)
def release_reserved_ports():
    """Close the sockets ``reserve_ports`` held for this test."""
    yield
    while _RESERVED:
        _RESERVED.pop().close()


# -------------------------------------------------------------------- graphs
@pytest.fixture(autouse=True)
def fresh_graph():
    """Each test builds into its own default graph."""
    tf.reset_default_graph()
    yield
    tf.reset_default_graph()


@pytest.fixture
def tiny_config():
    return TINY_CONFIG


def write_voc_pair(root, name, size, num_classes=constants.NUM_CLASSES, seed=0,
                   label_mode="P"):
    """Write JPEGImages/<name>.jpg and SegmentationClassAug/<name>.png.

    The label is a few rectangles of random classes on background with a
    255 border, like VOC's; ``label_mode`` 'P' (palette) or 'L' (grayscale).
    Returns (image RGB uint8 [H, W, 3], label uint8 [H, W]).
    """
    rng = np.random.RandomState(seed)
    height, width = size
    image = rng.randint(0, 256, (height, width, 3)).astype(np.uint8)
    label = np.zeros((height, width), np.uint8)
    for _ in range(3):
        y0, x0 = rng.randint(0, height // 2), rng.randint(0, width // 2)
        y1, x1 = y0 + rng.randint(3, height // 2 + 3), x0 + rng.randint(3, width // 2 + 3)
        label[y0:y1, x0:x1] = rng.randint(1, num_classes)
    label[0, :] = constants.IGNORE_LABEL
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    os.makedirs(os.path.join(root, "SegmentationClassAug"), exist_ok=True)
    Image.fromarray(image).save(os.path.join(root, "JPEGImages", name + ".jpg"),
                                quality=95)
    label_image = Image.fromarray(label, mode="L")
    if label_mode == "P":
        label_image = label_image.convert("P")
        label_image.putpalette(constants.PALETTE.ravel().tolist())
    label_image.save(os.path.join(root, "SegmentationClassAug", name + ".png"))
    return image, label


def write_voc_dataset(root, count=4, num_classes=constants.NUM_CLASSES, palette_first=True):
    """``count`` 33x33 image/label pairs, palette and grayscale labels in turn
    (palette first or second), and their list ``root``/train.txt.

    Returns (list_path, names).
    """
    names = ["img%d" % i for i in range(count)]
    for i, name in enumerate(names):
        palette = (i % 2 == 0) == palette_first
        write_voc_pair(root, name, (33, 33), num_classes=num_classes, seed=i,
                       label_mode="P" if palette else "L")
    list_path = os.path.join(root, "train.txt")
    with open(list_path, "w") as f:
        for name in names:
            f.write("/JPEGImages/%s.jpg /SegmentationClassAug/%s.png\n" % (name, name))
    return list_path, names


@pytest.fixture
def voc_dataset(tmp_path):
    """Four 33x33 image/label pairs (two palette, two grayscale) and a list file.

    Returns (data_dir, list_path, names).
    """
    root = str(tmp_path / "voc")
    list_path, names = write_voc_dataset(root)
    return root, list_path, names


TrainPaths = collections.namedtuple("TrainPaths", ["data_dir", "list_path", "snapshot_dir"])


@pytest.fixture
def train_paths(tmp_path):
    """What most training tests start from: tmp_path/data with test_train's
    four-image dataset (``write_dataset``), and tmp_path/snap, not yet made.

    Returns ``TrainPaths(data_dir, list_path, snapshot_dir)``.
    """
    data_dir = str(tmp_path / "data")
    list_path, _ = write_voc_dataset(data_dir, palette_first=False)
    return TrainPaths(data_dir, list_path, str(tmp_path / "snap"))


@pytest.fixture
def shared_sample():
    """The real VOC photo and labels in ../shared/data; skipped when absent."""
    if not os.path.isdir(SHARED_SAMPLE):
        pytest.skip("../shared/data/voc_sample is not present in this checkout")
    return {
        "image": os.path.join(SHARED_SAMPLE, "2007_000129.jpg"),
        "label": os.path.join(SHARED_SAMPLE, "2007_000129.png"),
        "label_gray": os.path.join(SHARED_SAMPLE, "2007_000129_gray.png"),
    }


@pytest.fixture
def fake_download(tmp_path):
    """A tiny VOCdevkit/VOC2012 and benchmark_RELEASE/dataset
    (``helpers.voc_download``).

    Returns (voc_dir, sbd_dir, voc_labels, sbd_labels): label arrays by name.
    """
    return write_fake_download(tmp_path)


@pytest.fixture
def server():
    """A threaded HTTP server on 127.0.0.1 (``helpers.download_server.serve``)."""
    from helpers.download_server import serve  # the download extra, only where needed
    yield from serve()


@pytest.fixture
def small(fake_download, tmp_path, server):
    """The fake download as the two real archives, served and in tmp_path/archives
    (``helpers.download_server.small_archives``)."""
    from helpers.download_server import small_archives
    return small_archives(fake_download, tmp_path, server)


def load_script(name):
    """Import a top-level script (e.g. 'evaluate') to call its functions."""
    return testing.load_script(os.path.join(REPO_ROOT, name + ".py"))


TinyModel = collections.namedtuple("TinyModel", ["directory", "prefix", "npz"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 21-class TINY_CONFIG model (``save_tiny_model``), once per module.

    Returns ``TinyModel(directory, prefix, npz)``: the checkpoint directory,
    its checkpoint prefix and the same weights as a .npz.
    """
    directory = str(tmp_path_factory.mktemp("tiny_model"))
    prefix, npz = save_tiny_model(directory)
    return TinyModel(directory, prefix, npz)


def run_script(path, argv):
    """Run a script in-process as `python path argv...`; return its exit code."""
    old_argv = sys.argv
    sys.argv = [path] + list(argv)
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exit_:
        return exit_.code
    finally:
        sys.argv = old_argv
    raise AssertionError("%s returned without sys.exit" % path)
