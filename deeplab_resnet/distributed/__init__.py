"""Several machines, one synchronous run: the task (TF_CONFIG, server), collectives, the watchdog.

``task`` reads TF_CONFIG and starts this worker's server; ``collectives``
is the one interface the training loop talks to (``Local`` for one process,
``Cluster`` on TensorFlow's collective ops for many); ``watchdog`` ends a
worker that lost a peer. The names below are the package's surface.
"""
from deeplab_resnet.distributed.collectives import (PACK_BYTES, Cluster, Local, connect,
                                                    start)
from deeplab_resnet.distributed.task import WorkerTask, start_server, task_from_env
from deeplab_resnet.distributed.watchdog import (EXIT_LOST_WORKER, RESTART_ADVICE,
                                                 Watchdog, exit_process, lost_message,
                                                 port_open)

__all__ = ["PACK_BYTES", "Cluster", "Local", "connect", "start", "WorkerTask", "start_server",
           "task_from_env", "EXIT_LOST_WORKER", "RESTART_ADVICE", "Watchdog",
           "exit_process", "lost_message", "port_open"]
