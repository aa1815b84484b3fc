"""Typed async client of crucible.scheduler.v1.SchedulerService: submit, watch, follow logs, fetch artifacts.

CreateJob always carries a request_id (generated when not given), so the channel may retry it safely.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.base import ServiceClient
from crucible.clients.plain import request, to_plain


class SchedulerClient(ServiceClient[pb_grpc.SchedulerServiceStub]):
    """Client of the scheduler service; jobs come back as plain dataclasses mirroring the Job message."""

    SERVICE = "crucible.scheduler.v1.SchedulerService"
    STUB = pb_grpc.SchedulerServiceStub

    async def create_job(self, spec: dict[str, Any], *, request_id: str = "", validate_only: bool = False,
                         timeout: float | None = None) -> Any:
        """Submit a job from a JobSpec dict (protobuf JSON form, e.g. {"command": ["python", "train.py"], ...})."""
        req = request(pb.CreateJobRequest, {"spec": spec, "request_id": request_id or uuid.uuid4().hex,
                                            "validate_only": validate_only})
        return to_plain((await self.stub.CreateJob(req, timeout=self.timeout(timeout))).job)

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> Any:
        return to_plain((await self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout(timeout))).job)

    async def list_jobs(self, *, states: Sequence[str] = (), providers: Sequence[str] = (), page_size: int = 0,
                        page_token: str = "", timeout: float | None = None) -> tuple[list[Any], str]:
        """One page of jobs and the next page token ('' at the end); states as enum names like "JOB_STATE_RUNNING"."""
        req = request(pb.ListJobsRequest, {"states": list(states), "providers": list(providers), "page_size": page_size,
                                           "page_token": page_token})
        reply = await self.stub.ListJobs(req, timeout=self.timeout(timeout))
        return [to_plain(j) for j in reply.jobs], reply.next_page_token

    async def cancel_job(self, job_id: str, *, reason: str = "", timeout: float | None = None) -> Any:
        reply = await self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id, reason=reason), timeout=self.timeout(timeout))
        return to_plain(reply.job)

    async def watch_job(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[Any]:
        """Job snapshots as it changes, ending after the terminal one."""
        async for reply in self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout):
            yield to_plain(reply.job)

    async def logs(self, job_id: str, *, follow: bool = False, stdout_offset: int = 0, stderr_offset: int = 0,
                   timeout: float | None = None) -> AsyncIterator[Any]:
        """Log chunks (stream, attempt, offset, next_offset, text); with follow, until the job ends."""
        req = pb.StreamJobLogsRequest(job_id=job_id, follow=follow, stdout_offset=stdout_offset, stderr_offset=stderr_offset)
        async for reply in self.stub.StreamJobLogs(req, timeout=timeout):
            yield to_plain(reply)

    async def list_artifacts(self, job_id: str, *, prefix: str = "", timeout: float | None = None) -> list[Any]:
        """Every artifact of the job (all pages)."""
        out: list[Any] = []
        token = ""
        while True:
            reply = await self.stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job_id, prefix=prefix, page_token=token),
                                                  timeout=self.timeout(timeout))
            out.extend(to_plain(a) for a in reply.artifacts)
            token = reply.next_page_token
            if not token:
                return out

    async def download_artifact(self, job_id: str, path: str, destination: Path, *, timeout: float | None = None) -> Path:
        """Stream one artifact to `destination`, verifying the sha256 the server sends with the last chunk."""
        digest = hashlib.sha256()
        expected = ""
        partial = destination.with_name(destination.name + ".part")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as handle:
            async for chunk in self.stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id, path=path),
                                                          timeout=timeout):
                handle.write(chunk.data)
                digest.update(chunk.data)
                expected = chunk.sha256 or expected
        if expected and expected != digest.hexdigest():
            partial.unlink(missing_ok=True)
            raise OSError(f"artifact {path} of job {job_id}: checksum mismatch")
        partial.replace(destination)
        return destination

    async def estimate_requirements(self, fields: dict[str, Any], *, timeout: float | None = None) -> Any:
        """GPU memory for a training or inference workload (EstimateRequirementsRequest in protobuf JSON form)."""
        reply = await self.stub.EstimateRequirements(request(pb.EstimateRequirementsRequest, fields),
                                                     timeout=self.timeout(timeout))
        return to_plain(reply)

    async def plan_placement(self, fields: dict[str, Any], *, timeout: float | None = None) -> Any:
        """Which model goes on which device (PlanPlacementRequest in protobuf JSON form)."""
        return to_plain(await self.stub.PlanPlacement(request(pb.PlanPlacementRequest, fields), timeout=self.timeout(timeout)))

    async def list_progress(self, job_id: str, *, page_size: int = 0, page_token: str = "",
                            timeout: float | None = None) -> tuple[list[Any], str, str]:
        """One page of the job's progress history, oldest first: (points, next_page_token, resume_page_token).

        Pass `resume_page_token` later to get only points stored since (a running job keeps adding them)."""
        reply = await self.stub.ListJobProgress(
            pb.ListJobProgressRequest(job_id=job_id, page_size=page_size, page_token=page_token),
            timeout=self.timeout(timeout))
        return [to_plain(p) for p in reply.points], reply.next_page_token, reply.resume_page_token

    async def list_providers(self, *, timeout: float | None = None) -> list[Any]:
        reply = await self.stub.ListProviders(pb.ListProvidersRequest(), timeout=self.timeout(timeout))
        return [to_plain(p) for p in reply.providers]
