"""Rate and ETA of loops of known length, for progress lines in the log.

Standard library only: training, evaluation, inference and the dataset tools
all report progress the same way.
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

    def line(self, done):
        rate = self.rate(done)
        if rate is None:
            return "ETA --"
        per_item = 1.0 / rate
        return "%.3g s/%s ETA %s" % (per_item, self.unit,
                                     format_duration(per_item * (self.total - done)))


def logged_progress(items, what, log, unit="file", interval=5.0):
    """Yield ``items``, logging ``<what> done/total <rate> ETA`` every ``interval`` s.

    The last item is always reported, so a log shows that the loop finished.
    """
    items = list(items)
    total = len(items)
    progress = Progress(total, unit=unit)
    progress.update(0)
    last_log = time.time()
    for done, item in enumerate(items, 1):
        yield item
        if done == total or time.time() - last_log >= interval:
            log.info("%s %d/%d %s", what, done, total, progress.line(done))
            last_log = time.time()
