"""Acceptance of issue 19 against a real S3 HTTP server on loopback (moto's standalone server): a local nanoGPT job
checkpoints to s3://, is killed mid-run, relaunches in a fresh working folder and resumes from the newest complete
checkpoint (never a truncated one); its artifacts are listed and downloaded after the working folder is deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import boto3
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


async def _logs(stub: pb_grpc.SchedulerServiceStub, job_id: str) -> list[pb.StreamJobLogsResponse]:
    return [c async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job_id))]


@pytest.mark.slow
async def test_killed_job_resumes_from_s3_in_a_fresh_folder(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    state = tmp_path / "state"
    cfg = load_config(
        SchedulerConfig,
        "scheduler",
        env={},
        port=0,
        state_dir=str(state),
        poll_interval_s=0.2,
        metrics_enabled=False,
        code_roots=(str(EXAMPLE),),
        artifact_store=f"s3://{s3_bucket}/crucible",
        artifact_store_endpoint=s3_server,
        artifact_store_access_key="testing",
        artifact_store_secret_key="testing",
        artifact_store_region="us-east-1",
        artifact_store_role_arn="arn:aws:iam::123456789012:role/crucible-jobs",
    )
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")

    def keys(prefix: str) -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=prefix).get("Contents", [])]

    server, port = create_server(cfg)
    await server.start()
    await server.wait_ready(30)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            spec = job_pb2.JobSpec(
                command=[sys.executable, "train.py", "--data", "data/tinyshakespeare/input.txt", "--max-iters", "140", *TINY],
                code_dir=str(EXAMPLE),
                provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT,
                providers=["local"],
                env={"OMP_NUM_THREADS": "1"},
                inputs=[job_pb2.JobInput(uri="builtin:tinyshakespeare")],
                restart_policy=job_pb2.RestartPolicy(max_restarts_on_errors=1),
            )
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec))).job
            prefix = f"crucible/jobs/{job.job_id}/"
            assert f"{prefix}code/code.tar.gz" in keys(prefix + "code/")
            ckpts = prefix + "checkpoints/"

            async def checkpointed() -> None:
                while not any(k.endswith("/manifest.json") for k in keys(ckpts)):
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(checkpointed(), 180)
            work = state / "jobs" / job.job_id / "work"
            assert (work / "data" / "tinyshakespeare" / "input.txt").stat().st_size > 1_000_000  # the staged input
            (work / "left-by-attempt-1.txt").write_text("should not survive into attempt 2")

            # A newer checkpoint that never finished (payload, no manifest) and one whose payload was truncated after
            # its manifest was written: neither may be loaded.
            s3.put_object(Bucket=s3_bucket, Key=f"{ckpts}step-000009999999/state.pt", Body=b"partial")
            good_manifest = next(k for k in keys(ckpts) if k.endswith("/manifest.json"))
            manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key=good_manifest)["Body"].read())
            manifest["step"] = 9999998
            manifest["size"] = 7
            s3.put_object(Bucket=s3_bucket, Key=f"{ckpts}step-000009999998/manifest.json", Body=json.dumps(manifest))
            s3.put_object(Bucket=s3_bucket, Key=f"{ckpts}step-000009999998/state.pt", Body=b"trunc..")

            child = json.loads((state / "jobs" / job.job_id / "attempts" / "1" / "child.json").read_text())
            os.kill(int(child["pid"]), signal.SIGKILL)

            async for r in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
                last = r.job
            assert last.state == JobState.JOB_STATE_SUCCEEDED, last.transitions[-1].reason
            assert [a.outcome for a in last.attempts] == [job_pb2.ATTEMPT_OUTCOME_USER_ERROR, job_pb2.ATTEMPT_OUTCOME_SUCCEEDED]
            chunks = await _logs(stub, job.job_id)
            first = "".join(c.text for c in chunks if c.attempt == 1 and c.stream == pb.LOG_STREAM_STDOUT)
            second = "".join(c.text for c in chunks if c.attempt == 2 and c.stream == pb.LOG_STREAM_STDOUT)
            saved = [int(m) for m in re.findall(r"saved checkpoint s3://\S+ at iter (\d+)", first)]
            resumed = re.search(r"resumed from step (\d+): s3://", second)
            assert saved and resumed, second[:500]
            # The newest complete checkpoint: at least the last one attempt 1 logged (the kill can land between a
            # checkpoint's manifest and its log line), a real checkpoint step, never 0 or one of the broken ones.
            step = int(resumed.group(1))
            assert saved[-1] <= step < 9999998 and (step + 1) % 20 == 0 and step > 0, (saved, step)
            assert f"continuing at iter {step + 1}" in second
            assert not (work / "left-by-attempt-1.txt").exists()  # a fresh working folder

            # The working folder is gone: artifacts come from the store.
            shutil.rmtree(work)
            arts = {a.path: a for a in (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts}
            assert "left-by-attempt-1.txt" in arts and "train.py" not in arts
            assert "data/tinyshakespeare/input.txt" not in arts  # an input, not an output
            assert arts["checkpoints/ckpt.pt"].checkpoint
            store_ckpts = sorted(p for p in arts if re.fullmatch(r"checkpoints/step-\d{12}/state\.pt", p))
            assert store_ckpts and arts[store_ckpts[-1]].checkpoint
            got = [
                c async for c in stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path="checkpoints/ckpt.pt"))
            ]
            blob = b"".join(c.data for c in got)
            assert len(blob) == got[-1].total_size_bytes and hashlib.sha256(blob).hexdigest() == got[-1].sha256
            assert torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)["iter_num"] == 139
            tail = [
                c
                async for c in stub.DownloadArtifact(
                    pb.DownloadArtifactRequest(job_id=job.job_id, path="checkpoints/ckpt.pt", offset=len(blob) - 10)
                )
            ]
            assert b"".join(c.data for c in tail) == blob[-10:] and tail[0].offset == len(blob) - 10
            assert tail[-1].sha256 == hashlib.sha256(blob[-10:]).hexdigest()

            # Explicit removal: refused while running is covered in tests/service; here it empties the prefix.
            deleted = await stub.DeleteJobArtifacts(pb.DeleteJobArtifactsRequest(job_id=job.job_id))
            assert deleted.objects_deleted >= 3 and keys(prefix) == []
            assert (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts == []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path=store_ckpts[-1])).read()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)
