"""What a training run needs, in small parts: data, network, solver, snapshots, validation, runtime.

The defaults are DeepLab-v2's recipe; train.py's flags map one to one onto
the fields (``--batch-size`` -> ``solver.batch_size``) and show these
defaults. Each part goes to the code that needs it alone (``Snapshots``
takes ``SnapshotConfig``, ``Validation`` its ``ValidationConfig``, the
``TrainingReader`` the ``DataConfig``, defined in ``data.config`` beside
the readers, the ``Trainer`` ``NetworkConfig`` and ``SolverConfig``).
"""
import dataclasses
from typing import Optional, Tuple

from deeplab_resnet.constants import NUM_CLASSES
from deeplab_resnet.data.config import DataConfig
from deeplab_resnet.model import ModelConfig


@dataclasses.dataclass
class NetworkConfig:
    """The network trained and its starting point."""
    num_classes: int = NUM_CLASSES
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    restore_from: Optional[str] = None
    not_restore_last: bool = False
    is_training: bool = False
    train_scales: Tuple[float, ...] = (1.0,)
    train_last_only: bool = False
    bf16: bool = False


@dataclasses.dataclass
class SolverConfig:
    """Caffe's solver: the batch, the poly-rate SGD, accumulation and towers."""
    batch_size: int = 10
    learning_rate: float = 2.5e-4
    momentum: float = 0.9
    power: float = 0.9
    num_steps: int = 20001
    weight_decay: float = 0.0005
    grad_update_every: int = 1
    num_gpus: int = 1
    tower_device: str = "gpu"


@dataclasses.dataclass
class SnapshotConfig:
    """Where and how often snapshots, summaries and progress lines go."""
    snapshot_dir: str = "snapshots"
    save_pred_every: int = 1000
    save_num_images: int = 2
    keep_checkpoints: int = 5
    log_every: int = 1


@dataclasses.dataclass
class ValidationConfig:
    """Validation during training (none without ``val_list``)."""
    val_list: Optional[str] = None
    val_data_dir: Optional[str] = None
    val_every: int = 1000
    val_images: Optional[int] = None


@dataclasses.dataclass
class RuntimeConfig:
    """Threads, and the timeouts of several workers (TF_CONFIG; see ``distributed``)."""
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    step_timeout: float = 1800.0
    startup_timeout: float = 300.0
    peer_timeout: float = 45.0


PARTS = {"data": DataConfig, "network": NetworkConfig, "solver": SolverConfig,
         "snapshots": SnapshotConfig, "validation": ValidationConfig,
         "runtime": RuntimeConfig}


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs, by part; the defaults are DeepLab-v2's recipe."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    solver: SolverConfig = dataclasses.field(default_factory=SolverConfig)
    snapshots: SnapshotConfig = dataclasses.field(default_factory=SnapshotConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    @classmethod
    def from_fields(cls, **values):
        """A config from flat field names (``batch_size=...``), each to its part.

        Raises:
          TypeError: a name no part has.
        """
        parts = {name: {} for name in PARTS}
        owner = {f.name: name for name, part in PARTS.items()
                 for f in dataclasses.fields(part)}
        for key, value in values.items():
            if key not in owner:
                raise TypeError("TrainConfig has no field %r." % key)
            parts[owner[key]][key] = value
        return cls(**{name: PARTS[name](**fields) for name, fields in parts.items()})
