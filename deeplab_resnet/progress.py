"""Rate and ETA of loops of known length, and of byte transfers, for progress lines in the log.

Standard library only: training, evaluation, inference, downloads and the
dataset tools all report progress the same way.
"""
import time


def format_duration(seconds):
    """12s, 4m05s, 2h13m: short enough for a progress line."""
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)


def format_bytes(size):
    """812 B, 4.2 KiB, 1.9 GiB: binary units, those of the download sizes
    people quote."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size /= 1024.0
    else:
        unit = "TiB"
    return "%d B" % size if unit == "B" else "%.1f %s" % (size, unit)


class Progress(object):
    """Rate and ETA for a loop of known length.

    ``line(done)`` after ``done`` items gives e.g. ``0.41 s/step ETA 2h13m``,
    measured from the first ``update`` so that start-up does not skew it.
    """

    def __init__(self, total, unit="step"):
        self.total = total
        self.unit = unit
        self.start_time = None
        self.start_count = 0

    def update(self, done):
        if self.start_time is None:
            self.start_time = time.time()
            self.start_count = done

    def rate(self, done, per_item=1):
        """Items (times ``per_item``) per second since the first ``update``, or None."""
        self.update(done)
        elapsed = time.time() - self.start_time
        count = done - self.start_count
        if count <= 0 or elapsed <= 0:
            return None
        return count * per_item / elapsed

    def eta(self, done):
        """'2h13m' to go at the rate so far; '--' before there is a rate or
        without a total."""
        rate = self.rate(done)
        if rate is None or self.total is None:
            return "--"
        return format_duration((self.total - done) / rate)

    def line(self, done):
        rate = self.rate(done)
        if rate is None:
            return "ETA --"
        return "%.3g s/%s ETA %s" % (1.0 / rate, self.unit, self.eta(done))


class ByteProgress(Progress):
    """Rate and ETA of a transfer of ``total`` bytes (None: size unknown).

    ``line(done)`` gives e.g. ``45% 860.2 MiB/1.9 GiB 12.4 MiB/s ETA 1m25s``.
    The rate counts the bytes since the first ``update``: those a resumed
    download had before are not this run's.
    """

    def __init__(self, total):
        super().__init__(total, unit="B")

    def line(self, done):
        if self.total is None:
            size = format_bytes(done)
        else:
            size = "%d%% %s/%s" % (100 * done // max(self.total, 1), format_bytes(done),
                                   format_bytes(self.total))
        rate = self.rate(done)
        speed = "-- B/s" if rate is None else format_bytes(rate) + "/s"
        return "%s %s ETA %s" % (size, speed, self.eta(done))


class Every(object):
    """``due()`` is True once every ``interval`` seconds: when a progress
    line is next due."""

    def __init__(self, interval):
        self.interval = interval
        self.last = time.time()

    def due(self):
        if time.time() - self.last < self.interval:
            return False
        self.last = time.time()
        return True


def logged_progress(items, what, log, unit="file", interval=5.0):
    """Yield ``items``, logging ``<what> done/total <rate> ETA`` every ``interval`` s.

    The last item is always reported, so a log shows that the loop finished.
    """
    items = list(items)
    total = len(items)
    progress = Progress(total, unit=unit)
    progress.update(0)
    every = Every(interval)
    for done, item in enumerate(items, 1):
        yield item
        if every.due() or done == total:
            log.info("%s %d/%d %s", what, done, total, progress.line(done))
