"""One training process on its unhappy paths: kill -9 and resume, SIGTERM once and
twice, validation data elsewhere, the validation scalars TensorBoard gets, the
emulated-bf16 warning.

Tiny network, the 33x33 test data (``helpers.training``); train.py runs in this
process (``run_train``) except where it must be killed.
"""
import logging
import os
import re
import signal

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from conftest import write_voc_pair
from deeplab_resnet import files
from deeplab_resnet.data.config import EvalDataConfig
from deeplab_resnet.evaluation.evaluate import evaluate
from deeplab_resnet.training import loop as training_loop
from deeplab_resnet.training import towers
from helpers.training import SignalOnLine, run_signalled, run_train, script, train_argv, write_dataset

NUM_CLASSES = 5


def errors_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ SIGTERM
def test_sigterm_to_one_process_snapshots_the_step_and_stops(train_paths, caplog):
    """A scheduler's SIGTERM: the step in progress ends, its snapshot is
    written, the run exits 130 saying how to resume."""
    caplog.set_level(logging.INFO)
    data_dir, list_path, snapshot_dir = train_paths
    status = run_signalled(
        train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "1000",
                   "--log-every", "1", "--learning-rate", "1e-4"),
        SignalOnLine(r"^step 3/1000 ", signal.SIGTERM))
    assert status == training_loop.INTERRUPTED_STATUS, caplog.text
    assert "SIGTERM: saving a snapshot after this step" in caplog.text
    step = int(re.search(r"interrupted at step (\d+); rerun the same command",
                         caplog.text).group(1))
    assert step >= 3
    assert tf.train.latest_checkpoint(snapshot_dir).endswith("model.ckpt-%d" % step)


def test_a_second_signal_while_the_first_is_handled_stops_at_once_without_a_snapshot(
        train_paths, caplog):
    """The second SIGTERM comes while the first one's handler runs: the run
    stops there (exit 130, 'interrupted'), with no snapshot of that step."""
    caplog.set_level(logging.INFO)
    data_dir, list_path, snapshot_dir = train_paths
    status = run_signalled(
        train_argv(data_dir, list_path, snapshot_dir, "--num-steps", "1000",
                   "--log-every", "1", "--learning-rate", "1e-4"),
        SignalOnLine(r"^step 3/1000 ", signal.SIGTERM),
        SignalOnLine(r"^SIGTERM: saving a snapshot", signal.SIGTERM))
    assert status == training_loop.INTERRUPTED_STATUS, caplog.text
    assert caplog.text.count("SIGTERM: saving a snapshot") == 1, caplog.text
    assert "interrupted at step" not in caplog.text
    assert tf.train.latest_checkpoint(snapshot_dir) is None
    # The handlers are put back once the run is over.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ------------------------------------------------------------ kill -9, resume
def leftovers(snapshot_dir):
    """What an interrupted save leaves: TF's .tempstate files, hidden .tmp files."""
    return [n for n in os.listdir(snapshot_dir)
            if ".tempstate" in n or files.is_temporary(n)]


@pytest.mark.slow
def test_kill_9_mid_training_then_the_same_command_resumes_the_newest_snapshot(
        train_paths):
    data_dir, list_path, snapshot_dir = train_paths
    argv = train_argv(data_dir, list_path, snapshot_dir, "--learning-rate", "0.001",
                      "--is-training", "--save-pred-every", "2", "--keep-checkpoints", "3")
    first = script(argv + ["--num-steps", "1000000"])
    lines = []
    try:
        for line in first.stdout:
            lines.append(line)
            if re.search(r"saved .*model\.ckpt-4$", line.rstrip()):
                break
        # Whatever step it is at now, maybe mid-save: no handler runs.
        first.send_signal(signal.SIGKILL)
        lines.append(first.communicate(timeout=60)[0])
    finally:
        first.kill()
    assert first.returncode == -signal.SIGKILL, "".join(lines)
    newest = tf.train.latest_checkpoint(snapshot_dir)
    last = int(newest.rsplit("-", 1)[1])
    assert last >= 4 and last % 2 == 0, newest

    second = script(argv + ["--num-steps", str(last + 2)])
    output = second.communicate(timeout=180)[0]
    assert second.returncode == 0, output
    assert "resuming from %s at step %d" % (newest, last) in output, output
    assert re.search(r"step %d/%d loss=" % (last + 1, last + 2), output), output
    assert re.search(r"step %d/%d loss=" % (last + 2, last + 2), output), output
    assert tf.train.latest_checkpoint(snapshot_dir).endswith("model.ckpt-%d" % (last + 2))
    final = tf.train.load_checkpoint(tf.train.latest_checkpoint(snapshot_dir))
    assert final.get_tensor("global_step") == last + 2
    assert leftovers(snapshot_dir) == [], os.listdir(snapshot_dir)


# ---------------------------------------------------------------- validation
def validation_data(tmp_path, count=2):
    """Training data in tmp_path/data, validation pairs val<i> (other pictures)
    in tmp_path/val, listed relative to that directory. Returns (data_dir,
    train list, val_dir, val list)."""
    data_dir = str(tmp_path / "data")
    list_path = write_dataset(data_dir, num_classes=NUM_CLASSES)
    val_dir = str(tmp_path / "val")
    for i in range(count):
        write_voc_pair(val_dir, "val%d" % i, (41, 37), num_classes=NUM_CLASSES,
                       seed=100 + i)
    val_list = str(tmp_path / "val.txt")
    with open(val_list, "w") as f:
        f.writelines("/JPEGImages/val%d.jpg /SegmentationClassAug/val%d.png\n" % (i, i)
                     for i in range(count))
    return data_dir, list_path, val_dir, val_list


def validated_run(tmp_path, caplog, *extra):
    """Two steps with validation at step 2 on tmp_path/val: (status, paths)."""
    caplog.set_level(logging.INFO)
    data_dir, list_path, val_dir, val_list = validation_data(tmp_path)
    snapshot_dir = str(tmp_path / "snap")
    status = run_train(train_argv(data_dir, list_path, snapshot_dir, "--num-classes",
                                  str(NUM_CLASSES), "--is-training", "--learning-rate",
                                  "0.01", "--val-list", val_list, "--val-every", "2",
                                  *extra))
    return status, (data_dir, list_path, val_dir, val_list, snapshot_dir)


def miou_of(data_dir, list_path, snapshot):
    confusion = evaluate(EvalDataConfig(data_dir, list_path, num_classes=NUM_CLASSES), snapshot)
    with np.errstate(invalid="ignore"):  # 0/0: a class neither labelled nor predicted
        iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1)
                                    - np.diag(confusion))
    return float(np.nanmean(iou))


def test_validation_reads_its_list_relative_to_val_data_dir(tmp_path, caplog):
    status, paths = validated_run(tmp_path, caplog, "--val-data-dir",
                                  str(tmp_path / "val"))
    data_dir, list_path, val_dir, val_list, snapshot_dir = paths
    assert status == 0, caplog.text
    logged = re.findall(r"validation at step 2: mIoU=(\S+) on 2 images of %s" %
                        re.escape(val_list), caplog.text)
    assert len(logged) == 1, caplog.text
    snapshot = os.path.join(snapshot_dir, "model.ckpt-2")
    with tf.Graph().as_default():
        on_val = miou_of(val_dir, val_list, snapshot)
    with tf.Graph().as_default():
        on_train = miou_of(data_dir, list_path, snapshot)
    # The score is that of the validation pictures, not of the training ones.
    assert float(logged[0]) == pytest.approx(on_val, abs=1e-4)
    assert abs(on_val - on_train) > 1e-3, (on_val, on_train)


def test_a_val_list_not_under_data_dir_is_refused_before_step_1_without_val_data_dir(
        tmp_path, caplog):
    status, paths = validated_run(tmp_path, caplog)
    snapshot_dir = paths[-1]
    assert status == 2
    error = errors_of(caplog)[-1]
    assert error.startswith("error: --val-list: "), error
    # The list was read relative to --data-dir, and the message says so.
    assert os.path.join(paths[0], "JPEGImages", "val0.jpg") in error, error
    assert "Check --val-data-dir" in error, error
    assert "step 1/" not in caplog.text
    assert tf.train.latest_checkpoint(snapshot_dir) is None


def scalars(snapshot_dir, prefix):
    """{(step, tag): value} of the scalar summaries whose tag starts with ``prefix``."""
    values = {}
    for name in os.listdir(snapshot_dir):
        if name.startswith("events.out.tfevents"):
            for event in tf.train.summary_iterator(os.path.join(snapshot_dir, name)):
                for value in event.summary.value:
                    if value.tag.startswith(prefix) and value.HasField("simple_value"):
                        values[event.step, value.tag] = value.simple_value
    return values


def test_validation_writes_miou_and_each_class_iou_to_tensorboard(tmp_path, caplog):
    status, paths = validated_run(tmp_path, caplog, "--val-data-dir",
                                  str(tmp_path / "val"))
    val_dir, snapshot_dir = paths[2], paths[-1]
    assert status == 0, caplog.text
    events = scalars(snapshot_dir, "val/")
    assert {step for step, _ in events} == {2}, events
    classes = {int(tag[len("val/iou_"):]): value for (_, tag), value in events.items()
               if tag.startswith("val/iou_")}
    # Every class in the validation labels has its IoU (others only if predicted).
    labelled = set()
    for i in range(2):
        label = np.array(Image.open(os.path.join(val_dir, "SegmentationClassAug",
                                                 "val%d.png" % i)))
        labelled |= set(np.unique(label[label != 255]).tolist())
    assert labelled <= set(classes) <= set(range(NUM_CLASSES)), (labelled, classes)
    assert all(0.0 <= v <= 1.0 for v in events.values()), events
    # The same IoUs as the log line, and the mIoU is their mean.
    line = re.search(r"validation at step 2: mIoU=\S+ on .*?; IoU ((?:\d+:\S+ ?)+)",
                     caplog.text).group(1)
    logged = dict(item.split(":") for item in line.split())
    assert {int(c): float(v) for c, v in logged.items()} == pytest.approx(classes,
                                                                         abs=5e-4)
    assert events[2, "val/miou"] == pytest.approx(np.mean(list(classes.values())),
                                                  abs=1e-6)


# ---------------------------------------------------------------------- bf16
BF16_WARNING = "--bf16 on a CPU without native bfloat16"


# Whether a CPU emulates bfloat16, by its /proc/cpuinfo flags: the first row
# whose flags the CPU has all of decides. Written down here, not asked of
# gradients' probe, so that a wrong probe fails the test. None: not pinned
# (AVX-512 without BF16: oneDNN's own choice, no such CPU was at hand).
BF16_BY_CPU_FLAGS = (
    (("amx_bf16",), False),                          # Intel Sapphire Rapids on
    (("avx512_bf16",), False),                       # Intel Cooper Lake, AMD Zen 4 on
    (("avx512f", "avx512bw", "avx512vl"), None),     # AVX-512 without BF16
    (("avx2",), True),                               # AMD Zen 1-3, Intel Haswell on
    ((), True),                                      # older CPUs
)


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_emulates_bfloat16(flags):
    """The table's answer for a CPU with ``flags``."""
    return next(emulated for needed, emulated in BF16_BY_CPU_FLAGS
                if set(needed) <= flags)


def test_the_bf16_table_reads_cpus_as_written():
    assert cpu_emulates_bfloat16({"avx", "avx2", "fma"}) is True
    assert cpu_emulates_bfloat16({"avx2", "avx512f", "avx512bw", "avx512vl",
                                  "avx512_bf16"}) is False
    assert cpu_emulates_bfloat16({"avx2", "amx_bf16"}) is False
    assert cpu_emulates_bfloat16({"sse4_2"}) is True


@pytest.mark.skipif(not os.path.isfile("/proc/cpuinfo"), reason="reads /proc/cpuinfo")
@pytest.mark.parametrize("native", [None, True])
def test_bf16_warns_exactly_where_the_cpu_emulates_bfloat16(train_paths, caplog,
                                                          monkeypatch, native):
    """None: this machine as it is (the warning iff BF16_BY_CPU_FLAGS says its
    CPU emulates bfloat16 and there is no GPU); True: a CPU with native
    bfloat16, as the towers see it."""
    if native is not None:
        monkeypatch.setattr(towers, "gradients", type(
            "NativeBf16", (), {"onednn_handles": staticmethod(lambda dtype: native)}))
        emulated = False
    else:
        emulated = (not tf.config.list_physical_devices("GPU")
                    and cpu_emulates_bfloat16(cpu_flags()))
    data_dir, list_path, snapshot_dir = train_paths
    assert run_train(train_argv(data_dir, list_path, snapshot_dir, "--bf16",
                                "--num-steps", "1")) == 0
    warnings = [r.getMessage() for r in caplog.records if BF16_WARNING in r.getMessage()]
    if emulated is not None:
        assert len(warnings) == (1 if emulated else 0), warnings
    if warnings:
        assert caplog.records[[r.getMessage() for r in caplog.records].index(
            warnings[0])].levelno == logging.WARNING
    caplog.clear()
    assert run_train(train_argv(data_dir, list_path, snapshot_dir + "32",
                                "--num-steps", "1")) == 0
    assert BF16_WARNING not in caplog.text
