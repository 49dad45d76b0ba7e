"""TensorFlow's collective ops, the one module that imports them from TensorFlow's internals.

``tensorflow.python.ops.collective_ops`` is private: its functions are the
v1 collective ops (``CollectiveReduce``, ``CollectiveBcastSend`` / ``Recv``)
with their group and instance keys, which graph-mode between-graph
replication needs and no public v1 API offers. Should a TensorFlow release
move or change them, this module and ``tests/test_collectives.py`` (which
checks the parameters used here against the running TensorFlow and names
the versions this was checked on) are the places to look.
"""
from deeplab_resnet.runtime import tf  # first: its switches precede TensorFlow's import
from tensorflow.python.ops import collective_ops as _collective_ops  # noqa: E402

# TensorFlow versions this adapter was checked on (the multi-worker tests
# passed on them).
CHECKED_ON = ("2.21.0",)



def checked_here():
    """True if the running TensorFlow is one this adapter was checked on."""
    return tf.version.VERSION in CHECKED_ON


all_reduce = _collective_ops.all_reduce
broadcast_send = _collective_ops.broadcast_send
broadcast_recv = _collective_ops.broadcast_recv
