"""Progress lines: durations, byte sizes, rates and ETAs, on a clock the test sets."""
import logging

import pytest

from deeplab_resnet import progress


class Clock(object):
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "time", clock)
    return clock


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (245, "4m05s"),
                                           (7980, "2h13m"), (-3, "0s")])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


@pytest.mark.parametrize("size, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                        (1536, "1.5 KiB"), (5 * 2 ** 20, "5.0 MiB"),
                                        (int(1.9 * 2 ** 30), "1.9 GiB"),
                                        (3 * 2 ** 40, "3.0 TiB")])
def test_format_bytes(size, text):
    assert progress.format_bytes(size) == text


def test_step_progress_measures_from_the_first_update(clock):
    steps = progress.Progress(100)
    steps.update(20)
    assert steps.line(20) == "ETA --"
    clock.now += 40.0
    # 20 steps in 40 s: 2 s/step, 60 steps to go.
    assert steps.line(40) == "2 s/step ETA 2m00s"
    assert steps.rate(40, per_item=10) == 5.0


def test_byte_progress_counts_this_runs_bytes_for_rate_and_eta(clock):
    """A resumed download: 1 MiB was there before, 2 MiB arrive in 4 s."""
    transfer = progress.ByteProgress(8 * 2 ** 20)
    transfer.update(2 ** 20)
    assert transfer.line(2 ** 20) == "12% 1.0 MiB/8.0 MiB -- B/s ETA --"
    clock.now += 4.0
    # 0.5 MiB/s, 5 MiB to go: 10 s.
    assert transfer.line(3 * 2 ** 20) == "37% 3.0 MiB/8.0 MiB 512.0 KiB/s ETA 10s"


def test_byte_progress_of_unknown_size_has_no_eta(clock):
    transfer = progress.ByteProgress(None)
    transfer.update(0)
    clock.now += 2.0
    assert transfer.line(3000) == "2.9 KiB 1.5 KiB/s ETA --"


def test_every_is_due_once_per_interval(clock):
    every = progress.Every(5.0)
    clock.now += 4.9
    assert not every.due()
    clock.now += 0.1
    assert every.due() and not every.due()
    clock.now += 5.0
    assert every.due()


def test_logged_progress_logs_each_interval_and_the_last_item(clock, caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("test_progress")
    for item in progress.logged_progress(range(5), "labels", log, interval=2.0):
        clock.now += 1.0
    assert [r.getMessage() for r in caplog.records] == [
        "labels 2/5 1 s/file ETA 3s", "labels 4/5 1 s/file ETA 1s",
        "labels 5/5 1 s/file ETA 0s"]
