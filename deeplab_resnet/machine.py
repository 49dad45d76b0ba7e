"""What the machine offers this process: how many cores it may run on.

Standard library only: the dataset tools, the CRF workers and the
TensorFlow session set-up all ask, and none of them should pay for an import
to do so.
"""
import os


def available_cores():
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
