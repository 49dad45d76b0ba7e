"""The CI machinery in tests/conftest.py: the skip guard and reserve_ports.

The guard runs in a separate pytest (pytester) on a tiny test file whose
conftest takes conftest.py's hooks, with CI set or not; the port claims run
against a real tf.distribute.Server in a fresh process (its servers cannot
be stopped).
"""
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import conftest

INNER_CONFTEST = """
import importlib.util
import os
import sys
sys.path.insert(0, os.path.dirname({path!r}))  # conftest.py imports tests/helpers
spec = importlib.util.spec_from_file_location("ci_guard", {path!r})
guard = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard)
guard.ALLOWED_SKIPS["test_inner.py::test_allowed"] = "this is the allowed one"
pytest_runtest_logreport = guard.pytest_runtest_logreport
pytest_collectreport = guard.pytest_collectreport
pytest_terminal_summary = guard.pytest_terminal_summary
pytest_sessionfinish = guard.pytest_sessionfinish
"""


def run_inner(pytester, monkeypatch, ci, body):
    pytester.makeconftest(INNER_CONFTEST.format(path=os.path.abspath(conftest.__file__)))
    pytester.makepyfile(test_inner="import pytest\n\n" + textwrap.dedent(body))
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")


UNEXPECTED = """
def test_runs():
    pass

def test_unexpected():
    pytest.skip("pydensecrf is not installed")
"""

ALLOWED = """
@pytest.mark.parametrize("n", [1, 2])
def test_allowed(n):
    pytest.skip("this machine has GPUs")

def test_runs():
    pass
"""


def test_an_unexpected_skip_fails_the_run_in_ci(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, True, UNEXPECTED)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*skips not allowed in CI*",
        "test_inner.py::test_unexpected: pydensecrf is not installed"])


def test_the_same_skip_passes_outside_ci(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, False, UNEXPECTED)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.no_fnmatch_line("*skips not allowed in CI*")


def test_an_allowed_skip_passes_in_ci(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, True, ALLOWED)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.no_fnmatch_line("*skips not allowed in CI*")


def test_a_skipped_module_fails_the_run_in_ci(pytester, monkeypatch):
    result = run_inner(pytester, monkeypatch, True, """
        pytest.importorskip("no_such_module_for_the_ci_guard")

        def test_never_runs():
            pass
        """)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_inner.py: *no_such_module_for_the_ci_guard*"])


SERVER = """
import socket, sys
import tensorflow as tf
port = int(sys.argv[1])
server = tf.distribute.Server(tf.train.ClusterSpec({"worker": ["127.0.0.1:%d" % port]}),
                              job_name="worker", task_index=0, start=True)
with tf.compat.v1.Session(server.target) as session:
    print("served", session.run(tf.constant(7)))
"""


def run_server(port):
    return subprocess.run([sys.executable, "-c", SERVER, str(port)], capture_output=True,
                          text=True, timeout=120)


def test_a_reserved_port_is_refused_to_others_and_taken_by_a_tf_server():
    port, = conftest.reserve_ports(1)
    other = socket.socket()
    with pytest.raises(OSError):
        other.bind(("127.0.0.1", port))
    other.close()
    result = run_server(port)
    assert result.returncode == 0 and "served 7" in result.stdout, result.stderr[-3000:]


def test_a_reuseport_reservation_would_not_do():
    """Why reserve_ports does not use SO_REUSEPORT: TF's server then cannot bind."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    try:
        result = run_server(holder.getsockname()[1])
    finally:
        holder.close()
    assert result.returncode != 0 and "Could not start gRPC server" in result.stderr


@pytest.mark.parametrize("table", ["ALLOWED_SKIPS", "LONG_TIMEOUTS"])
def test_the_tables_name_tests_that_exist(table):
    """A renamed test must not silently lose its allowance or its limit."""
    for nodeid in getattr(conftest, table):
        path, name = nodeid.split("::")
        with open(os.path.join(conftest.REPO_ROOT, path)) as f:
            assert "\ndef %s(" % name in f.read(), (table, nodeid)


def test_a_long_timeouts_entry_limits_its_test(pytester):
    pytester.makeconftest(INNER_CONFTEST.format(path=os.path.abspath(conftest.__file__))
                          + 'guard.LONG_TIMEOUTS["test_inner.py::test_limited"] = 1\n'
                          + "pytest_collection_modifyitems = guard.pytest_collection_modifyitems\n")
    pytester.makepyfile(test_inner="""
        import time

        def test_limited():
            time.sleep(4)

        def test_free():
            time.sleep(4)
        """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "timeout_method=signal")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Timeout (>1.0s) from pytest-timeout*", "FAILED test_inner.py::test_limited*"])


def test_a_fast_test_over_the_limit_fails_unless_marked_with_a_reason(pytester):
    """conftest.FAST_TEST_SECONDS (here 1 s): a test past it in wall-clock and
    CPU time fails, naming the way out; one marked slow, or over_a_minute
    with a reason, passes, and so does one that only waits (a loaded machine
    stretches the wall clock, not the CPU time)."""
    pytester.makeconftest(INNER_CONFTEST.format(path=os.path.abspath(conftest.__file__))
                          + "guard.FAST_TEST_SECONDS = 1.0\n"
                          + "pytest_runtest_call = guard.pytest_runtest_call\n"
                          + "pytest_runtest_makereport = guard.pytest_runtest_makereport\n"
                          + "pytest_collection_modifyitems = guard.pytest_collection_modifyitems\n")
    pytester.makepyfile(test_inner="""
        import time
        import pytest

        def busy(seconds=2.0):
            start = time.process_time()
            while time.process_time() - start < seconds:
                pass

        def test_long():
            busy()

        @pytest.mark.over_a_minute("it must compute for two seconds")
        def test_long_and_justified():
            busy()

        @pytest.mark.slow
        def test_long_and_slow():
            busy()

        def test_waiting():
            time.sleep(2)

        def test_short():
            pass
        """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines([
        "*test_inner.py::test_long took * s (2 s of CPU), more than the fast suite allows a "
        "test (1 s*",
        "FAILED test_inner.py::test_long*"])


def test_over_a_minute_without_a_reason_is_refused(pytester):
    pytester.makeconftest(INNER_CONFTEST.format(path=os.path.abspath(conftest.__file__))
                          + "pytest_collection_modifyitems = guard.pytest_collection_modifyitems\n")
    pytester.makepyfile(test_inner="""
        import pytest

        @pytest.mark.over_a_minute
        def test_unexplained():
            pass
        """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_unexplained: @pytest.mark.over_a_minute needs the "
                                 "reason*"])
