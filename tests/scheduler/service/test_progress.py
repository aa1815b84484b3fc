"""ListJobProgress on a real scheduler with the local provider: the history bounded (one point per second), paged,
durable, via the CLI.

The job prints 1,205 progress lines (nanoGPT iter and eval lines) in six bursts a little over a second apart; the history
holds one point per burst at most (the lines of a second fold into one point), in step order, the last line's step last.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import grpc
import pytest

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.channel import ChannelConfig
from crucible.clients.scheduler import SchedulerClient
from crucible.runtime.errors import parse_status_details
from crucible.scheduler.domain.history import line_point
from crucible.scheduler.domain.progress import Progress
from tests.scheduler.service.test_scheduler import final, local_spec, start_scheduler

ITERS = 1200
BURSTS = 6
SCRIPT = textwrap.dedent(f"""
    import sys, time
    for i in range({ITERS}):
        print(f"iter {{i}}: loss {{3 - i / 1000:.4f}}, time 1.0ms")
        if i % 250 == 0:
            print(f"step {{i}}: train loss {{2 - i / 1000:.4f}}, val loss {{2.5 - i / 1000:.4f}}")
        if i % ({ITERS} // {BURSTS}) == {ITERS} // {BURSTS} - 1:
            sys.stdout.flush()
            time.sleep(1.3)
    print("<not progress>")
""")


async def _all_points(stub: pb_grpc.SchedulerServiceStub, job_id: str, page_size: int) -> list[pb.ProgressPoint]:
    points, token = [], ""
    while True:
        reply = await stub.ListJobProgress(pb.ListJobProgressRequest(job_id=job_id, page_size=page_size, page_token=token))
        assert len(reply.points) <= page_size
        points.extend(reply.points)
        token = reply.next_page_token
        if not token:
            return points


async def _error(call) -> tuple[grpc.StatusCode, list]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), parse_status_details(info.value)[1]


def test_line_point_keeps_only_the_lines_own_metrics() -> None:
    latest = Progress(step=250, total_steps=1000, metrics={"loss": 2.0, "train_loss": 1.9, "val_loss": 2.1})
    point = line_point("step 250: train loss 1.9000, val loss 2.1000", 12.5, latest, attempt=2)
    assert point is not None
    assert (point.step, point.total_steps, point.attempt, point.time) == (250, 1000, 2, 12.5)
    assert point.metrics == {"train_loss": 1.9, "val_loss": 2.1}  # not the latest "loss" of another line
    epoch_only = line_point("Epoch 3/10", 1.0, Progress(), attempt=1)
    assert epoch_only is not None and (epoch_only.step, epoch_only.total_steps) == (3, 10)
    assert line_point("no progress here", 1.0, latest, attempt=1) is None


async def test_every_point_paged_durable_and_on_the_cli(tmp_path) -> None:
    state = str(tmp_path / "state")
    server, port = await start_scheduler(state)
    address = f"127.0.0.1:{port}"
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=local_spec([sys.executable, "-c", SCRIPT])))).job
            done = await final(stub, job.job_id, timeout=120)
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.transitions[-1].reason

            points = await _all_points(stub, job.job_id, 1000)
            steps = [p.step for p in points]
            assert 2 <= len(points) <= BURSTS, steps  # one point per second at most, not one per line
            assert steps == sorted(set(steps)) and steps[-1] == ITERS - 1  # one per step; the last line's step last
            assert all(p.attempt == 1 and p.total_steps == 0 for p in points)
            assert points[-1].metrics["loss"] == pytest.approx(3 - (ITERS - 1) / 1000)  # the latest value of its second
            assert any(p.metrics.get("val_loss") == pytest.approx(2.5 - 1000 / 1000) for p in points)  # folded, kept
            assert [p.time.ToNanoseconds() for p in points] == sorted(p.time.ToNanoseconds() for p in points)
            assert [(p.step, dict(p.metrics)) for p in await _all_points(stub, job.job_id, 1)] == [
                (p.step, dict(p.metrics)) for p in points
            ]

            first = await stub.ListJobProgress(pb.ListJobProgressRequest(job_id=job.job_id, page_size=1))
            assert len(first.points) == 1 and first.next_page_token
            # The resume token of the last page returns nothing more (and itself) until new points arrive.
            last = await stub.ListJobProgress(
                pb.ListJobProgressRequest(job_id=job.job_id, page_size=1000, page_token=first.next_page_token)
            )
            assert len(last.points) == len(points) - 1 and not last.next_page_token and last.resume_page_token
            again = await stub.ListJobProgress(pb.ListJobProgressRequest(job_id=job.job_id, page_token=last.resume_page_token))
            assert list(again.points) == [] and again.resume_page_token == last.resume_page_token

            # The SDK returns the same points as plain dataclasses.
            async with SchedulerClient(ChannelConfig((address,))) as client:
                plain, nxt, resume = await client.list_progress(job.job_id, page_size=1)
            assert [p.step for p in plain] == steps[:1] and nxt and resume == nxt
            assert plain[0].metrics == dict(points[0].metrics)

            assert (await _error(stub.ListJobProgress(pb.ListJobProgressRequest(job_id=job.job_id, page_size=1001))))[1] == [
                ("page_size", "must be between 0 (the default, 500) and 1000")
            ]
            code, violations = await _error(
                stub.ListJobProgress(pb.ListJobProgressRequest(job_id=job.job_id, page_token="bogus"))
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and violations[0][0] == "page_token"
            code, _ = await _error(stub.ListJobProgress(pb.ListJobProgressRequest(job_id="job-unknown")))
            assert code == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)

    # Durable with the job: a new scheduler process on the same state has the same history.
    server, port = await start_scheduler(state)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            again = await _all_points(pb_grpc.SchedulerServiceStub(channel), job.job_id, 1000)
        assert [(p.step, dict(p.metrics)) for p in again] == [(p.step, dict(p.metrics)) for p in points]

        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "crucible", "jobs", "progress", job.job_id, "--json", "--address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(lines) == len(points)
        assert lines[0]["metrics"] == dict(points[0].metrics)
        assert [int(x["step"]) if "step" in x else 0 for x in lines] == [p.step for p in points]
    finally:
        await server.stop(0)
