"""Distributed evaluation refuses a list shorter than the workers before connecting,
and a stopped evaluation is not told to resume from a snapshot."""
import pytest

from conftest import write_voc_dataset
from deeplab_resnet import constants, distributed
from deeplab_resnet.distributed import watchdog
from deeplab_resnet.distributed.task import WorkerTask
from deeplab_resnet.data.config import EvalDataConfig
from deeplab_resnet.evaluation.evaluate import evaluate


def test_fewer_images_than_workers_is_one_line_before_any_server(tiny_model, tmp_path,
                                                                 monkeypatch):
    list_path, _ = write_voc_dataset(str(tmp_path / "data"), count=2)
    monkeypatch.setattr(distributed, "connect", lambda *a, **k: pytest.fail("connected"))
    task = WorkerTask(("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"), 2)
    with pytest.raises(ValueError, match=r"lists 2 image\(s\), fewer than the 3 workers of "
                                         r"TF_CONFIG. Evaluate in one process \(no TF_CONFIG\) "
                                         r"or on at most 2 workers"):
        evaluate(EvalDataConfig(str(tmp_path / "data"), list_path,
                                num_classes=constants.NUM_CLASSES), tiny_model.npz, task=task)


def test_the_restart_advice_fits_evaluation_too():
    assert "training resumes from the chief's last snapshot, an evaluation starts again" in (
        watchdog.RESTART_ADVICE)
