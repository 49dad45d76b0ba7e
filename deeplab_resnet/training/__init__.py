"""Training DeepLab-v2: gradients, the loss, Caffe's solver, and the loop train.py runs.

* ``gradients``: Conv2D's gradient for CPU training;
* ``loss``: softmax cross-entropy summed over labelled pixels, per tower;
* ``solver``: poly-rate momentum SGD with DeepLab's multipliers, towers over
  devices, gradient accumulation (``Trainer``);
* ``config``: ``TrainConfig`` in parts (data, network, solver, snapshots,
  validation, runtime);
* ``loop``: ``train(TrainConfig(...))``, resume, progress, snapshots.
"""
from deeplab_resnet.training.config import TrainConfig
from deeplab_resnet.training.loop import INTERRUPTED_STATUS, train
from deeplab_resnet.training.solver import Trainer

__all__ = ["INTERRUPTED_STATUS", "TrainConfig", "Trainer", "train"]
