"""Several machines, one synchronous run: the task (TF_CONFIG, server), collectives, the watchdog.

``task`` reads TF_CONFIG and starts this worker's server; ``collectives``
is the one interface the training loop talks to (``interface.Collectives``:
``Local`` for one process, ``Cluster`` on TensorFlow's collective ops for
many); ``watchdog`` ends a worker that lost a peer. The names below are what
the rest of the library takes from the package; anything else is imported
from its module.
"""
from deeplab_resnet.distributed.collectives import connect
from deeplab_resnet.distributed.interface import Collectives
from deeplab_resnet.distributed.task import task_from_env
from deeplab_resnet.distributed.watchdog import EXIT_LOST_WORKER

__all__ = ["connect", "Collectives", "task_from_env", "EXIT_LOST_WORKER"]
