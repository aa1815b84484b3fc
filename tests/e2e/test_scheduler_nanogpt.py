"""End to end: the nanoGPT example on the scheduler's local provider — watch progress, cancel, download the checkpoint,
resume from it in a new job, and check the resumed run continues where the checkpoint left off.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import sys
import tarfile
from pathlib import Path

import grpc
import pytest
import torch

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.runtime.config import load_config
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.server import create_server
from tests.e2e.nanogpt_example import EXAMPLE, TINY

JobState = job_pb2.JobState


@pytest.mark.slow
async def test_nanogpt_progress_cancel_download_resume(tmp_path: Path, shared_data: Path | None) -> None:
    data = str(shared_data / "tinyshakespeare" / "input.txt") if shared_data else ""  # else Python's own sources
    cfg = load_config(
        SchedulerConfig,
        "scheduler",
        env={},
        port=0,
        state_dir=str(tmp_path / "state"),
        poll_interval_s=0.2,
        metrics_enabled=False,
        code_roots=(str(EXAMPLE),),
    )
    server, port = create_server(cfg)
    await server.start()
    await server.wait_ready(30)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            spec = job_pb2.JobSpec(
                command=[sys.executable, "train.py", "--data", data, "--max-iters", "100000", *TINY],
                code_dir=str(EXAMPLE),
                provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT,
                providers=["local"],
                env={"OMP_NUM_THREADS": "1"},
            )
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec, request_id="nanogpt-1"))).job

            async def until_checkpointed() -> job_pb2.Job:
                async for r in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
                    p = r.job.progress
                    # The ETA needs a step rate from two progress updates; wait for it rather than race it.
                    if r.job.latest_checkpoint and p.HasField("step") and p.step >= 45 and p.HasField("eta"):
                        return r.job
                raise AssertionError("job ended before checkpointing")

            seen = await asyncio.wait_for(until_checkpointed(), 120)
            assert seen.state == JobState.JOB_STATE_RUNNING and seen.progress.total_steps == 100000
            assert "loss" in seen.progress.metrics and seen.progress.HasField("eta")
            await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id, reason="resume later"))
            async for r in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
                last = r.job
            assert last.state == JobState.JOB_STATE_CANCELLED

            arts = {a.path: a for a in (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts}
            assert arts["checkpoints/ckpt.pt"].checkpoint and "train.py" not in arts
            chunks = [
                c async for c in stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path="checkpoints/ckpt.pt"))
            ]
            blob = b"".join(c.data for c in chunks)
            assert hashlib.sha256(blob).hexdigest() == chunks[-1].sha256 and len(blob) == chunks[-1].total_size_bytes
            iter_num = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)["iter_num"]
            assert iter_num >= 19

            archive = io.BytesIO()
            with tarfile.open(fileobj=archive, mode="w:gz") as tar:
                tar.add(EXAMPLE / "train.py", arcname="train.py")
                info = tarfile.TarInfo("checkpoints/ckpt.pt")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
            target = iter_num + 11
            resume = job_pb2.JobSpec(
                command=[sys.executable, "train.py", "--data", data, "--resume", "--max-iters", str(target), *TINY],
                code_archive=archive.getvalue(),
                provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT,
                providers=["local"],
            )
            second = (await stub.CreateJob(pb.CreateJobRequest(spec=resume))).job
            assert second.code_archive_sha256 and not second.spec.code_archive
            async for r in stub.WatchJob(pb.WatchJobRequest(job_id=second.job_id)):
                done = r.job
            assert done.state == JobState.JOB_STATE_SUCCEEDED, done.transitions[-1].reason
            logs = "".join(
                [
                    c.text
                    async for c in stub.StreamJobLogs(
                        pb.StreamJobLogsRequest(job_id=second.job_id, streams=[pb.LOG_STREAM_STDOUT])
                    )
                ]
            )
            assert f"resumed from step {iter_num}: checkpoints/ckpt.pt, continuing at iter {iter_num + 1}" in logs
            assert f"iter {iter_num + 1}: loss" in logs and "iter 0: loss" not in logs
            assert done.progress.step == target - 1
    finally:
        await server.stop(0)
