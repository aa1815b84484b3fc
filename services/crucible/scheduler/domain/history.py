"""Progress history of a job, kept with the job for charts (ListJobProgress): bounded by time and by count.

At most one point per second per job (the lines of one second fold into one point: the last step, the latest value of
each metric reported in it), plus the last one; one point per step; at most MAX_POINTS per job (older points thinned).
"""

from __future__ import annotations

import dataclasses

from crucible.scheduler.domain.progress import MAX_METRICS, LineReport, Progress, ProgressTracker

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

    The line is parsed on its own (a fresh tracker) so the point keeps only this line's metrics. See report_point.
    """
    own = ProgressTracker()
    if not own.feed(line, now):
        return None
    return report_point(own.line, now, latest, attempt)


def report_point(report: LineReport, now: float, latest: Progress, attempt: int) -> ProgressPoint | None:
    """The point of what one line reported (`ProgressTracker.line` right after it was fed): only that line's metrics.
    Lines that report an epoch but no step use the latest step, or the epoch when the program never reports steps.
    None when neither is known."""
    if report.step is not None:
        step, total = report.step, report.total_steps or latest.total_steps or 0
    elif latest.step is not None:
        step, total = latest.step, latest.total_steps or 0
    elif report.epoch is not None:
        step, total = report.epoch, report.total_epochs or 0
    else:
        return None
    return ProgressPoint(int(step), int(total), dict(report.metrics), now, attempt)


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
        self.open: ProgressPoint | None = None  # the window's first point; its folded state is kept below
        self.opened_at = 0.0
        self._last: ProgressPoint | None = None
        self._total = 0
        self._metrics: dict[str, float] = {}

    def add(self, point: ProgressPoint) -> ProgressPoint | None:
        """Take one point; returns the point of the window it closed, if any."""
        closed = None
        if self.open is not None and (point.attempt != self.open.attempt or point.time - self.opened_at >= self.interval_s):
            closed = self._close()
        if self.open is None:
            self.open, self.opened_at, self._metrics, self._total = point, point.time, {}, 0
        self._last = point
        self._total = point.total_steps or self._total
        metrics = self._metrics
        for key, value in point.metrics.items():  # in place: a flood of lines costs no copies
            if key in metrics or len(metrics) < MAX_METRICS:
                metrics[key] = value
        return closed

    def due(self, now: float, *, force: bool = False) -> ProgressPoint | None:
        """The open window's point once its interval is over (or at once when `force`: the attempt ended)."""
        if self.open is None or not (force or now - self.opened_at >= self.interval_s):
            return None
        return self._close()

    def _close(self) -> ProgressPoint:
        last = self._last or self.open or ProgressPoint(0, 0, {}, 0.0, 0)  # both are set while a window is open
        self.open = self._last = None
        return ProgressPoint(last.step, self._total, self._metrics, last.time, last.attempt)
