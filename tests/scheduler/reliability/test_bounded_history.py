"""Issue 22, class 5 (probe 8, history) and issue 26 point 6: a job's progress history is bounded as documented.

At most one point per second per job plus the last one (147,168 points were stored in 2 s before), one point per step
(`jobs progress` listed step 0 twice), and at most a per-job cap, past which older points are thinned while the first,
the last and each metric's extremes stay.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.scheduler.domain.history import POINT_INTERVAL_S, PointWindow, ProgressPoint
from crucible.scheduler.persistence.jobdb import JobStore
from tests.scheduler.reliability.test_hardening import Scheduler, finished, local

LINES = 147_200
FLOOD = textwrap.dedent(f"""
    import sys, time
    n = 0
    for burst in range(4):  # {LINES} progress lines in about two seconds
        lines = []
        for _ in range({LINES} // 4):
            lines.append(f"iter {{n}}: loss {{3 - n / 1e5:.5f}}, time 1.0ms")
            if n % 25_000 == 0:
                lines.append(f"step {{n}}: train loss {{2 - n / 1e5:.5f}}, val loss {{2.5 - n / 1e5:.5f}}")
            n += 1
        sys.stdout.write("\\n".join(lines) + "\\n")
        sys.stdout.flush()
        time.sleep(0.5)
""")


async def _points(stub, job_id: str) -> list[pb.ProgressPoint]:
    points, token = [], ""
    while True:
        reply = await stub.ListJobProgress(pb.ListJobProgressRequest(job_id=job_id, page_size=1000, page_token=token))
        points.extend(reply.points)
        token = reply.next_page_token
        if not token:
            return points


async def test_a_flood_of_progress_lines_keeps_one_point_per_second_and_the_last(tmp_path: Path) -> None:
    async with Scheduler(tmp_path / "state") as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(spec=local([sys.executable, "-c", FLOOD])))).job
        done = await finished(stub, job.job_id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.transitions[-1].reason
        assert done.progress.step == LINES - 1
        points = await _points(stub, job.job_id)
    times = [p.time.ToNanoseconds() / 1e9 for p in points]
    span = times[-1] - times[0]
    assert 1 <= len(points) <= int(span / POINT_INTERVAL_S) + 2, (len(points), span)  # was 147,208 points
    steps = [p.step for p in points]
    assert len(set(steps)) == len(steps) and steps == sorted(steps)  # one point per step
    assert steps[-1] == LINES - 1  # the last one is always kept
    assert any("val_loss" in p.metrics for p in points)  # a rare metric folds into its second's point, not lost


def _point(step: int, attempt: int = 1, **metrics: float) -> ProgressPoint:
    return ProgressPoint(step, 1000, metrics, float(step), attempt)


def test_one_point_per_step_within_and_across_attempts(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "scheduler.db")
    store.add_progress("job-1", [_point(0, loss=3.0)])  # "iter 0: loss ..."
    store.add_progress("job-1", [_point(0, val_loss=2.5)])  # "step 0: ... val loss ...", same step
    assert [(p.step, p.metrics) for _s, p in store.list_progress("job-1")] == [(0, {"loss": 3.0, "val_loss": 2.5})]
    store.add_progress("job-1", [_point(1, loss=2.9), _point(2, loss=2.8)])
    store.add_progress("job-1", [_point(0, 2, loss=3.1)])  # a relaunch that started over: its measurement replaces
    got = [(p.step, p.attempt, p.metrics) for _s, p in store.list_progress("job-1")]
    assert got == [(1, 1, {"loss": 2.9}), (2, 1, {"loss": 2.8}), (0, 2, {"loss": 3.1})]


def test_the_cap_thins_older_points_and_keeps_first_last_and_extremes(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "scheduler.db", max_progress_points=100)
    for start in range(0, 1000, 10):
        batch = []
        for step in range(start, start + 10):
            loss = 10.0 if step == 123 else -1.0 if step == 456 else 3 - step / 1000
            metrics = {"loss": loss, **({"val_loss": 5.0 - (step == 250)} if step % 50 == 0 else {})}
            batch.append(_point(step, **metrics))
        store.add_progress("job-1", batch)
    points = [p for _s, p in store.list_progress("job-1", limit=10_000)]
    steps = [p.step for p in points]
    assert len(points) <= 100, len(points)
    assert steps == sorted(set(steps))
    assert steps[0] == 0 and steps[-1] == 999  # first and last
    assert {123, 456, 250} <= set(steps)  # the highest and lowest loss, the lowest val_loss
    assert set(range(975, 1000)) <= set(steps)  # the newest quarter of the cap is whole
    assert len([s for s in steps if s < 500]) >= 10  # older points are thinned, not cut off


def test_the_window_folds_a_second_into_one_point() -> None:
    window = PointWindow(1.0)
    out = [window.add(ProgressPoint(step, 100, {"loss": step / 10}, 10 + step / 100, 1)) for step in range(50)]
    out.append(window.add(ProgressPoint(50, 100, {"val_loss": 1.0}, 10.5, 1)))
    assert [p for p in out if p is not None] == []
    assert window.due(10.9) is None
    closed = window.due(11.0)
    assert closed is not None and (closed.step, closed.metrics) == (50, {"loss": 4.9, "val_loss": 1.0})
    assert window.add(ProgressPoint(51, 100, {"loss": 1.0}, 11.2, 1)) is None
    again = window.add(ProgressPoint(52, 100, {"loss": 1.0}, 11.3, 2))  # a new attempt closes the window
    assert again is not None and again.step == 51
    assert window.due(11.4, force=True) is not None and window.due(99.0, force=True) is None
