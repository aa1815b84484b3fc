"""Typed async client of crucible.scheduler.v1.SchedulerService: submit, watch, follow logs, fetch artifacts.

CreateJob always carries a request_id (generated when not given), so the channel may retry it safely. A spec's
`code_dir` is a folder on the caller's machine: it is packed into `code_archive` (a .tar.gz) unless pack_code=False.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import os
import tarfile
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.base import ServiceClient
from crucible.clients.plain import request, to_plain

PACK_IGNORED_DIRS = frozenset({".git", "__pycache__", ".venv"})  # and *.pyc files: never part of a packed folder
MAX_PACKED_BYTES = 48 << 20  # below the scheduler's default 64 MiB message limit


def pack_code_dir(folder: str | os.PathLike[str], max_bytes: int = MAX_PACKED_BYTES) -> bytes:
    """A .tar.gz of `folder` for JobSpec.code_archive: regular files, folders and links that stay inside it.

    .git, __pycache__, .venv and *.pyc are left out; owners are not recorded. ValueError for a special file (FIFO,
    socket, device), a link leading out, or an archive past `max_bytes` (keep data out of the code folder).
    """
    root = Path(folder).resolve(strict=True)
    if not root.is_dir():
        raise ValueError(f"{folder} is not a folder")
    buf = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in PACK_IGNORED_DIRS for p in parts) or info.name.endswith(".pyc"):
            return None
        if not (info.isreg() or info.isdir() or info.issym()):
            raise ValueError(f"{info.name} in {root} is a special file (FIFO, socket or device)")
        if info.issym():
            real = Path(os.path.realpath(root / info.name))
            if real != root and root not in real.parents:
                raise ValueError(f"{info.name} in {root} is a link leading outside the folder")
        if buf.tell() > max_bytes:  # compressed so far
            raise ValueError(f"{root} packs to more than {max_bytes} bytes; keep data out of the code folder")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    # gzip header time 0: the same folder packs to the same bytes, so a repeated request_id still matches its spec.
    # The explicit root member tells the scheduler to keep the layout: a folder holding one subfolder is not unwrapped.
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as t:
        top = tarfile.TarInfo(".")
        top.type, top.mode = tarfile.DIRTYPE, 0o755
        t.addfile(top)
        for child in sorted(root.iterdir()):
            t.add(child, arcname=child.name, filter=keep)
    data = buf.getvalue()
    if len(data) > max_bytes:
        raise ValueError(f"{root} packs to {len(data)} bytes, more than {max_bytes}; keep data out of the code folder")
    return data


class SchedulerClient(ServiceClient["pb_grpc.SchedulerServiceAsyncStub"]):  # the aio stub type (type-checking only)
    """Client of the scheduler service; jobs come back as plain dataclasses mirroring the Job message."""

    SERVICE = "crucible.scheduler.v1.SchedulerService"
    STUB = pb_grpc.SchedulerServiceStub

    async def create_job(
        self,
        spec: dict[str, Any],
        *,
        request_id: str = "",
        validate_only: bool = False,
        pack_code: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """Submit a job from a JobSpec dict (protobuf JSON form, e.g. {"command": ["python", "train.py"], ...}).

        With pack_code (the default) a `code_dir` names a folder here, sent packed as `code_archive`, so the scheduler
        may be remote; pack_code=False sends the path as is (the scheduler must allow it with --code-roots)."""
        code_dir = spec.get("code_dir") or spec.get("codeDir")
        if pack_code and code_dir:
            data = await asyncio.to_thread(pack_code_dir, code_dir)
            spec = {k: v for k, v in spec.items() if k not in ("code_dir", "codeDir")}
            spec["code_archive"] = base64.b64encode(data).decode()
        req = request(
            pb.CreateJobRequest, {"spec": spec, "request_id": request_id or uuid.uuid4().hex, "validate_only": validate_only}
        )
        return to_plain((await self.stub.CreateJob(req, timeout=self.timeout(timeout))).job)

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> Any:
        return to_plain((await self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout(timeout))).job)

    async def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        providers: Sequence[str] = (),
        page_size: int = 0,
        page_token: str = "",
        budget_scope: str = "",
        timeout: float | None = None,
    ) -> tuple[list[Any], str]:
        """One page of jobs and the next page token ('' at the end); states as enum names like "JOB_STATE_RUNNING"."""
        req = request(
            pb.ListJobsRequest,
            {
                "states": list(states),
                "providers": list(providers),
                "page_size": page_size,
                "page_token": page_token,
                "budget_scope": budget_scope,
            },
        )
        reply = await self.stub.ListJobs(req, timeout=self.timeout(timeout))
        return [to_plain(j) for j in reply.jobs], reply.next_page_token

    async def cancel_job(self, job_id: str, *, reason: str = "", timeout: float | None = None) -> Any:
        reply = await self.stub.CancelJob(pb.CancelJobRequest(job_id=job_id, reason=reason), timeout=self.timeout(timeout))
        return to_plain(reply.job)

    async def watch_job(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[Any]:
        """Job snapshots as it changes, ending after the terminal one."""
        async for reply in self.stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout):
            yield to_plain(reply.job)

    async def logs(
        self, job_id: str, *, follow: bool = False, stdout_offset: int = 0, stderr_offset: int = 0, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Log chunks (stream, attempt, offset, next_offset, text); with follow, until the job ends."""
        req = pb.StreamJobLogsRequest(job_id=job_id, follow=follow, stdout_offset=stdout_offset, stderr_offset=stderr_offset)
        async for reply in self.stub.StreamJobLogs(req, timeout=timeout):
            yield to_plain(reply)

    async def list_artifacts(self, job_id: str, *, prefix: str = "", timeout: float | None = None) -> list[Any]:
        """Every artifact of the job (all pages)."""
        out: list[Any] = []
        token = ""
        while True:
            reply = await self.stub.ListArtifacts(
                pb.ListArtifactsRequest(job_id=job_id, prefix=prefix, page_token=token), timeout=self.timeout(timeout)
            )
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
            async for chunk in self.stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id, path=path), timeout=timeout):
                handle.write(chunk.data)
                digest.update(chunk.data)
                expected = chunk.sha256 or expected
        if expected and expected != digest.hexdigest():
            partial.unlink(missing_ok=True)
            raise OSError(f"artifact {path} of job {job_id}: checksum mismatch")
        partial.replace(destination)
        return destination

    async def delete_artifacts(self, job_id: str, *, timeout: float | None = None) -> int:
        """Remove an ended job's objects from the artifact store (DeleteJobArtifacts); returns how many went."""
        reply = await self.stub.DeleteJobArtifacts(pb.DeleteJobArtifactsRequest(job_id=job_id), timeout=self.timeout(timeout))
        return int(reply.objects_deleted)

    async def delete_job(self, job_id: str, *, timeout: float | None = None) -> int:
        """Delete an ended job (DeleteJob): its record, progress, folder and stored objects; returns how many objects
        left the artifact store. FAILED_PRECONDITION for a job that has not ended, NOT_FOUND for an unknown id."""
        reply = await self.stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), timeout=self.timeout(timeout))
        return int(reply.objects_deleted)

    async def estimate_requirements(self, fields: dict[str, Any], *, timeout: float | None = None) -> Any:
        """GPU memory for a training or inference workload (EstimateRequirementsRequest in protobuf JSON form)."""
        reply = await self.stub.EstimateRequirements(
            request(pb.EstimateRequirementsRequest, fields), timeout=self.timeout(timeout)
        )
        return to_plain(reply)

    async def plan_placement(self, fields: dict[str, Any], *, timeout: float | None = None) -> Any:
        """Which model goes on which device (PlanPlacementRequest in protobuf JSON form)."""
        return to_plain(await self.stub.PlanPlacement(request(pb.PlanPlacementRequest, fields), timeout=self.timeout(timeout)))

    async def list_progress(
        self, job_id: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> tuple[list[Any], str, str]:
        """One page of the job's progress history, oldest first: (points, next_page_token, resume_page_token).

        Pass `resume_page_token` later to get only points stored since (a running job keeps adding them)."""
        reply = await self.stub.ListJobProgress(
            pb.ListJobProgressRequest(job_id=job_id, page_size=page_size, page_token=page_token), timeout=self.timeout(timeout)
        )
        return [to_plain(p) for p in reply.points], reply.next_page_token, reply.resume_page_token

    async def list_providers(self, *, timeout: float | None = None) -> list[Any]:
        reply = await self.stub.ListProviders(pb.ListProvidersRequest(), timeout=self.timeout(timeout))
        return [to_plain(p) for p in reply.providers]
