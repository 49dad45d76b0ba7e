"""What the machine offers this process: how many cores it may run on, and how to start helpers.

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
