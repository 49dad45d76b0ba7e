"""What the readers read, as small dataclasses: a training list with its crops, an evaluation list.

``DataConfig`` is training's data part (``training.config.TrainConfig.data``,
train.py's data flags) and goes whole to ``reader.TrainingReader``;
``EvalDataConfig`` is evaluation's (``evaluation.evaluate``, evaluate.py's
data flags, validation during training) and goes to
``reader.EvaluationReader``. Standard library only: train.py reads the
defaults before TensorFlow is imported.
"""
import dataclasses
from typing import Optional, Tuple

from deeplab_resnet.constants import IGNORE_LABEL, NUM_CLASSES


@dataclasses.dataclass
class DataConfig:
    """The training list, its labels, and the random crops taken from it."""
    data_dir: str = "."
    data_list: str = "dataset/train.txt"
    ignore_label: int = IGNORE_LABEL
    label_map: Optional[str] = None
    input_size: Tuple[int, int] = (321, 321)
    random_scale: bool = False
    scale_set: Optional[Tuple[float, ...]] = None
    random_mirror: bool = False
    random_seed: int = 1234
    skip_bad_images: bool = False
    shuffle: bool = True
    reader_threads: int = 4


@dataclasses.dataclass(frozen=True)
class EvalDataConfig:
    """The list scored, its labels, and how much of it: every image whole, in list order.

    num_classes: label values are class ids below it or ``ignore_label``.
    label_map: --label-map (see ``label_maps.read_label_map``), or None.
    num_images: the first ``num_images`` of the list (None: all).
    """
    data_dir: str = "."
    data_list: str = "dataset/val.txt"
    num_classes: int = NUM_CLASSES
    ignore_label: int = IGNORE_LABEL
    label_map: Optional[str] = None
    num_images: Optional[int] = None
