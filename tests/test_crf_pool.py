"""CRF worker pool: same results as the in-process CRF, in order, bounded,
and failures named; evaluate.py and inference.py give identical outputs
with and without workers."""
import argparse
import logging
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image
from deeplab_resnet import cli, machine
from deeplab_resnet import crf
from deeplab_resnet.crf import pool as crf_pool

from conftest import load_script, save_tiny_model, write_voc_pair
from helpers.crf_scenes import synthetic_scene

pytest.importorskip("pydensecrf.densecrf")

FEW_ITERATIONS = crf.CrfConfig(iterations=3)


def scenes():
    """(image, probs) of different sizes; the first is by far the slowest."""
    jobs = [synthetic_scene(seed=0, height=240, width=320)[::2]]
    for i in range(1, 7):
        image, _, probs = synthetic_scene(seed=i, height=20 + 3 * i, width=30 + i)
        jobs.append((image, probs))
    return jobs


@pytest.fixture(scope="module")
def five_class_model(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("model"))
    save_tiny_model(directory, num_classes=5, seed=4)
    return directory


def test_pool_matches_the_serial_crf_in_submission_order():
    jobs = scenes()
    expected = [crf.dense_crf(image, probs, FEW_ITERATIONS, "pydensecrf").argmax(axis=2)
                for image, probs in jobs]
    results, pending = [], []
    with crf_pool.CrfPool(FEW_ITERATIONS, workers=2, max_pending=3,
                          backend="pydensecrf") as pool:
        assert pool.start_method in ("forkserver", "spawn")
        for i, (image, probs) in enumerate(jobs):
            results += pool.submit(image, probs, "scene%d" % i, tag=i)
            pending.append(pool.pending)
        results += list(pool.drain())
    assert max(pending) <= 3  # bounded: submit waited for the oldest
    assert pending[2] == 3  # and really queued while the big one ran
    assert [tag for tag, _ in results] == list(range(len(jobs)))
    for (_, label), want in zip(results, expected):
        assert label.dtype == np.int32
        np.testing.assert_array_equal(label, want)

    with crf_pool.CrfPool(FEW_ITERATIONS, workers=0, backend="pydensecrf") as serial:
        image, probs = jobs[1]
        [(tag, label)] = serial.submit(image, probs, "scene1", tag="here")
        assert serial.pending == 0 and serial.start_method is None
    assert tag == "here"
    np.testing.assert_array_equal(label, expected[1])


@pytest.mark.parametrize("workers", [2, 0])
def test_worker_exception_names_the_image(workers):
    (image, probs), (small, small_probs) = scenes()[1:3]
    jobs = [(image, probs, "good.jpg"), (image, small_probs, "photos/bad.jpg"),
            (small, small_probs, "after.jpg")]
    done = []
    with crf_pool.CrfPool(FEW_ITERATIONS, workers=workers, backend="pydensecrf") as pool:
        # The bad job fails at once, so the error may come from any later
        # call; the good job before it is handed back first either way.
        with pytest.raises(crf_pool.CrfError) as caught:
            for tag, (job_image, job_probs, name) in enumerate(jobs):
                done += pool.submit(job_image, job_probs, name, tag=tag)
            for result in pool.drain():
                done.append(result)
    message = str(caught.value)
    assert "photos/bad.jpg" in message and "ValueError" in message
    assert "size" in message
    assert isinstance(caught.value.__cause__, ValueError)
    assert [tag for tag, _ in done] == [0]


def test_a_killed_worker_is_reported_with_the_image():
    image, _, probs = synthetic_scene(seed=3, height=400, width=400)
    before = set(multiprocessing.active_children())
    with crf_pool.CrfPool(crf.DEFAULTS, workers=1, backend="pydensecrf") as pool:
        pool.submit(image, probs, "huge.png")
        deadline = time.time() + 30
        workers = set(multiprocessing.active_children()) - before
        while not workers and time.time() < deadline:
            time.sleep(0.05)
            workers = set(multiprocessing.active_children()) - before
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(crf_pool.CrfError, match="huge.png.*worker process died"):
            list(pool.drain())


def test_crf_workers_flag():
    parser = argparse.ArgumentParser()
    cli.add_crf_flags(parser)
    params = cli.crf_config(parser.parse_args(["--crf"]))
    assert cli.crf_config(parser.parse_args(["--crf-workers", "3"])) is None
    assert cli.crf_workers(parser.parse_args(["--crf-workers", "3"])) == 3
    workers = cli.crf_workers(parser.parse_args(["--crf", "--crf-backend", "pydensecrf"]))
    assert workers == machine.available_cores()
    pool = crf_pool.CrfPool(params, workers, backend="pydensecrf")
    assert pool.workers == workers
    pool.close()
    pool = crf_pool.CrfPool(params, cli.crf_workers(
        parser.parse_args(["--crf", "--crf-workers", "0"])))
    assert pool.workers == 0
    with pytest.raises(ValueError, match="--crf-workers must be 0"):
        cli.crf_workers(parser.parse_args(["--crf", "--crf-workers", "-1"]))
    # The TensorFlow CRF, the default backend: one thread per core by
    # default, any count on request.
    assert cli.crf_workers(parser.parse_args(["--crf"])) == machine.available_cores()
    assert cli.crf_workers(parser.parse_args(
        ["--crf", "--crf-backend", "tensorflow", "--crf-workers", "1"])) == 1
    # What evaluate.py and inference.py pass on: the CRF, its backend, its workers.
    assert cli.crf_stage(parser.parse_args(["--crf-workers", "3"])) is None
    stage = cli.crf_stage(parser.parse_args(["--crf", "--crf-workers", "3", "--crf-iters", "4"]))
    assert stage == crf.CrfStage(crf.CrfConfig(iterations=4), "tensorflow", 3)
    with crf_pool.CrfPool.for_stage(stage) as pool:
        assert (pool.params, pool.backend, pool.workers) == (stage.params, "tensorflow", 3)
    assert crf_pool.CrfPool.for_stage(None) is None
    assert cli.crf_workers(parser.parse_args(
        ["--crf", "--crf-backend", "tensorflow", "--crf-workers", "0"])) == 0


def test_tensorflow_crf_on_threads_matches_the_serial_crf_in_order():
    jobs = scenes()[1:]
    expected = [crf.crf_labels(image, probs, FEW_ITERATIONS, "tensorflow")
                for image, probs in jobs]
    results = []
    with crf_pool.CrfPool(FEW_ITERATIONS, workers=2, max_pending=3,
                          backend="tensorflow") as pool:
        assert pool.start_method == "thread"
        for i, (image, probs) in enumerate(jobs):
            results += pool.submit(image, probs, "scene%d" % i, tag=i)
        results += list(pool.drain())
        # Beside the network each thread runs a CRF of its own on one
        # thread: one session each, one op at a time, no channel groups.
        sessions = pool._thread_crfs
        assert 1 <= len(sessions) <= 2 and len({id(s) for s in sessions}) == len(sessions)
        for tf_crf in sessions:
            assert (tf_crf._config.intra_op_parallelism_threads,
                    tf_crf._config.inter_op_parallelism_threads, tf_crf._groups) == (1, 1, 1)
    assert not pool._thread_crfs  # closed with the pool
    assert [tag for tag, _ in results] == list(range(len(jobs)))
    for (_, label), want in zip(results, expected):
        np.testing.assert_array_equal(label, want)


def test_evaluate_with_workers_equals_without(five_class_model, tmp_path, capsys):
    data_dir = str(tmp_path / "data")
    names = ["im%d" % i for i in range(5)]
    for i, name in enumerate(names):
        write_voc_pair(data_dir, name, (17 + 4 * i, 31 - 2 * i), num_classes=5,
                       seed=20 + i, label_mode="L")
    list_path = os.path.join(data_dir, "val.txt")
    with open(list_path, "w") as f:
        for name in names:
            f.write("/JPEGImages/%s.jpg /SegmentationClassAug/%s.png\n" % (name, name))
    evaluate = load_script("evaluate")
    runs = {}
    for workers in ("0", "2"):
        save_dir = str(tmp_path / ("pred" + workers))
        confusion = str(tmp_path / ("confusion%s.npy" % workers))
        assert evaluate.main([
            "--data-dir", data_dir, "--data-list", list_path,
            "--restore-from", five_class_model, "--num-classes", "5", "--crf",
            "--crf-iters", "3", "--crf-workers", workers, "--save-dir", save_dir,
            "--save-confusion", confusion]) == 0
        pngs = {n: np.array(Image.open(os.path.join(save_dir, n + ".png")))
                for n in names}
        runs[workers] = (capsys.readouterr().out, np.load(confusion), pngs)
    (out0, confusion0, pngs0), (out2, confusion2, pngs2) = runs["0"], runs["2"]
    assert out0 == out2 and out0.strip().splitlines()[-1].startswith("mIoU ")
    np.testing.assert_array_equal(confusion0, confusion2)
    assert confusion0.sum() > 0
    for name in names:
        np.testing.assert_array_equal(pngs0[name], pngs2[name])


def test_inference_with_workers_equals_without(five_class_model, tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.RandomState(5)
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        size = (15 + 6 * i, 26 - 3 * i, 3)
        Image.fromarray(rng.randint(0, 256, size).astype(np.uint8)).save(
            str(photos / (name + ".png")))
    (photos / "b.png").write_bytes(b"not a PNG")
    inference = load_script("inference")
    labels = {}
    for workers in ("0", "2"):
        caplog.clear()
        save_dir = str(tmp_path / ("out" + workers))
        with caplog.at_level(logging.INFO):
            status = inference.main([
                str(photos), "--model-weights", five_class_model, "--num-classes",
                "5", "--save-dir", save_dir, "--save-raw", "--crf", "--crf-iters",
                "3", "--crf-workers", workers])
        assert status == 1
        assert "b.png" in caplog.text
        logged = [r.getMessage().split()[1] for r in caplog.records
                  if r.getMessage().startswith("image ")]
        assert logged == ["1/4", "3/4", "4/4"]
        assert sorted(os.listdir(save_dir)) == sorted(
            "%s_%s" % (n, k) for n in ("a", "c", "d") for k in ("mask.png", "label.png"))
        labels[workers] = {
            n: np.array(Image.open(os.path.join(save_dir, n + "_label.png")))
            for n in ("a", "c", "d")}
    for name in ("a", "c", "d"):
        assert labels["0"][name].shape == labels["2"][name].shape
        np.testing.assert_array_equal(labels["0"][name], labels["2"][name])
