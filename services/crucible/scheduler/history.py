"""Progress history of a job, kept with the job for charts (ListJobProgress): bounded by time and by count.

At most one point per second per job (the lines of one second fold into one point: the last step, the latest value of
each metric reported in it), plus the last one; one point per step; at most MAX_POINTS per job (older points thinned).
"""

from __future__ import annotations

import dataclasses

from crucible.scheduler.core.progress import MAX_METRICS, Progress, ProgressTracker

#: A job's history gains at most one point per this many seconds (the lines in between fold into it).
POINT_INTERVAL_S = 1.0
#: Points kept per job. Past it the history is thinned to about 3/4 of it: the newest quarter of the cap stays whole,
#: older points keep one per equal step range (the whole run stays covered evenly), and the first and last points and
#: the lowest and highest value of every metric always stay.
MAX_POINTS = 10_000


@dataclasses.dataclass(frozen=True)
class ProgressPoint:
    """One parsed progress line: the step it belongs to, the metrics it carried, when, and from which attempt."""

    step: int
    total_steps: int
    metrics: dict[str, float]
    time: float
    attempt: int


def line_point(line: str, now: float, latest: Progress, attempt: int) -> ProgressPoint | None:
    """The point of one log line already known to carry progress; `latest` is the job's progress after the line.

    The line is parsed on its own (a fresh tracker) so the point keeps only this line's metrics. Lines that report
    an epoch but no step use the latest step, or the epoch when the program never reports steps. None when neither
    is known.
    """
    own = ProgressTracker()
    if not own.feed(line, now):
        return None
    p = own.progress
    if p.step is not None:
        step, total = p.step, p.total_steps or latest.total_steps or 0
    elif latest.step is not None:
        step, total = latest.step, latest.total_steps or 0
    elif p.epoch is not None:
        step, total = p.epoch, p.total_epochs or 0
    else:
        return None
    return ProgressPoint(int(step), int(total), dict(p.metrics), now, attempt)


def merge(old: ProgressPoint, new: ProgressPoint) -> ProgressPoint:
    """`new` folded into `old` (same attempt): the newer step, total and time, the latest value of each metric."""
    metrics = dict(old.metrics)
    for key, value in new.metrics.items():
        if key in metrics or len(metrics) < MAX_METRICS:
            metrics[key] = value
    return ProgressPoint(new.step, new.total_steps or old.total_steps, metrics, new.time, new.attempt)


class PointWindow:
    """Folds a job's points into at most one per `interval_s`: a window opens at a point, takes every point of the
    same attempt within `interval_s`, and closes (its point goes to the history) when a later point or `due` says so."""

    def __init__(self, interval_s: float = POINT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.open: ProgressPoint | None = None
        self.opened_at = 0.0

    def add(self, point: ProgressPoint) -> ProgressPoint | None:
        """Take one point; returns the point of the window it closed, if any."""
        closed = None
        if self.open is not None and (point.attempt != self.open.attempt or point.time - self.opened_at >= self.interval_s):
            closed, self.open = self.open, None
        if self.open is None:
            self.open, self.opened_at = point, point.time
        else:
            self.open = merge(self.open, point)
        return closed

    def due(self, now: float, *, force: bool = False) -> ProgressPoint | None:
        """The open window's point once its interval is over (or at once when `force`: the attempt ended)."""
        if self.open is None or not (force or now - self.opened_at >= self.interval_s):
            return None
        closed, self.open = self.open, None
        return closed
