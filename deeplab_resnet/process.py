"""How a script's process leaves: sys.exit, unless a part of the library replaced it."""
import sys

_leave = None


def set_exit(leave):
    """Make ``leave(status, reason)`` (which never returns) the way ``exit`` leaves."""
    global _leave
    _leave = leave


def exit(status, reason=None):
    """Leave the process with ``status``, the way the library set (sys.exit by default).

    ``reason``: the one-line error the process stops on, if any; a worker
    of several tells it to the others before it leaves.
    """
    if _leave is None:
        sys.exit(status)
    _leave(status, reason)
