"""Progress history of a job: one point per parsed progress line, kept with the job for charts (ListJobProgress).

A point holds only the metrics its own line reported, so each series is drawn where it was measured.
"""

from __future__ import annotations

import dataclasses

from crucible.scheduler.core.progress import Progress, ProgressTracker


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
