"""The collectives interface: Local and Cluster both fit interface.Collectives,
and the adapter of TensorFlow's private collective ops fits this TensorFlow."""
import inspect

import numpy as np
import pytest

from deeplab_resnet.distributed import interface, tf_collectives
from deeplab_resnet.distributed.collectives import Cluster, Local
from deeplab_resnet.runtime import tf

METHODS = sorted(name for name, value in vars(interface.Collectives).items()
                 if inspect.isfunction(value) and not name.startswith("_"))
ATTRIBUTES = sorted(interface.Collectives.__annotations__)


def test_the_interface_names_what_the_library_calls():
    assert {"all_reduce", "all_reduce_sum", "all_reduce_max", "broadcast", "barrier",
            "agreement", "join", "sum_array", "stop_after_step", "watch_peers",
            "stop_watching", "lost_peer", "describe_failure", "session"} == set(METHODS)
    assert ATTRIBUTES == ["index", "is_chief", "num_workers", "shard"]


@pytest.mark.parametrize("side", [Local, Cluster])
@pytest.mark.parametrize("method", METHODS)
def test_both_sides_have_every_method_with_its_parameters(side, method):
    """Each method is there, takes the interface's parameters by the same
    names in the same order, and any parameter of its own has a default."""
    assert callable(getattr(side, method, None)), (side.__name__, method)
    wanted = list(inspect.signature(getattr(interface.Collectives, method)).parameters)
    got = inspect.signature(getattr(side, method)).parameters
    assert list(got)[:len(wanted)] == wanted, (side.__name__, method, list(got))
    extra = list(got.values())[len(wanted):]
    assert all(p.default is not inspect.Parameter.empty for p in extra), (side, method)


def test_local_has_every_attribute():
    local = Local()
    for name in ATTRIBUTES:
        assert hasattr(local, name), name
    assert (local.index, local.num_workers, local.is_chief, local.shard) == (0, 1, True, (0, 1))


def test_cluster_sets_every_attribute():
    source = inspect.getsource(Cluster)
    for name in ATTRIBUTES:
        assert "self.%s" % name in source or "def %s(" % name in source, name


def test_local_sums_over_one_process_are_their_inputs():
    local = Local()
    with tf.Graph().as_default():
        x = tf.constant([1.0, 2.0])
        assert local.all_reduce(x) is x
        assert local.all_reduce_sum([x]) == [x]
        assert local.all_reduce_max([x]) == [x]
        with tf.Session() as sess:
            np.testing.assert_array_equal(sess.run(local.agreement(x)), [[1, 2], [-1, -2]])
    np.testing.assert_array_equal(local.sum_array(np.array([3, 4])), [3, 4])
    assert local.lost_peer(tf.errors.UnknownError(None, None, "x")) is None
    assert local.stop_after_step(True, False) and not local.stop_after_step(False, False)


def test_the_collective_ops_adapter_was_checked_on_this_tensorflow():
    """tf_collectives reaches into TensorFlow's private modules; it names the
    versions it was checked on. A new TensorFlow fails here first: check the
    multi-worker tests on it (tests/test_multiworker.py), then add it."""
    assert tf_collectives.checked_here(), (tf.version.VERSION, tf_collectives.CHECKED_ON)
    # collectives.py passes the first ones by position, the rest by name.
    used = {"all_reduce": ["t", "group_size", "group_key", "instance_key", "merge_op",
                           "final_op", "subdiv_offsets", "communication_hint", "timeout"],
            "broadcast_send": ["t", "shape", "dtype", "group_size", "group_key",
                               "instance_key", "communication_hint", "timeout"],
            "broadcast_recv": ["shape", "dtype", "group_size", "group_key",
                               "instance_key", "communication_hint", "timeout"]}
    for name, parameters in used.items():
        got = list(inspect.signature(getattr(tf_collectives, name)).parameters)
        assert got[:len(parameters)] == parameters, (name, got)


def test_a_watchdog_watches_from_its_making_until_it_stops():
    """watchdog.WATCHING holds the watchdogs exit_process must stop (and whose
    peers it tells why): a stopped one is let go, not kept for the process's life."""
    from deeplab_resnet.distributed import watchdog
    from deeplab_resnet.distributed.task import WorkerTask
    cluster = type("FakeCluster", (), {"task": WorkerTask(("127.0.0.1:1", "127.0.0.1:2"), 0)})
    dog = watchdog.Watchdog(cluster())
    assert dog in watchdog.WATCHING.active()
    dog.stop()
    assert dog not in watchdog.WATCHING.active()
    dog.stop()  # twice is harmless
