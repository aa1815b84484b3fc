"""The job engine: the coordinator the servicer calls. It builds the parts of the scheduler by concern, answers the
job RPCs with copies of the jobs' domain records, and runs one driver task per unfinished job (also after a restart).

Where things are: `creation.py` (CreateJob), `lifecycle.py` (decisions applied to the record), `driver.py` (the
per-job loop), `launcher.py` (launch, failover, re-finding a lost launch), `logmirror.py` (logs), `progress_recorder.py`
(progress and metrics), `usage_limits.py` (usage and limits), `outputs.py` (outputs), `offers.py` (offers, ranking).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from crucible.runtime.errors import FailedPrecondition, NotFound, Unavailable
from crucible.scheduler.domain import states
from crucible.scheduler.domain.decide import CancelRequested
from crucible.scheduler.domain.record import Job
from crucible.scheduler.domain.spec import JobSpec
from crucible.scheduler.engine import jobspec
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.creation import JobCreator
from crucible.scheduler.engine.driver import JobDriver
from crucible.scheduler.engine.launcher import JobLauncher
from crucible.scheduler.engine.lifecycle import JobLifecycle
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.engine.logmirror import LogChunk, LogMirror
from crucible.scheduler.engine.offers import OfferSource
from crucible.scheduler.engine.outputs import ArtifactEntry, DownloadChunk, JobArtifacts
from crucible.scheduler.engine.progress_recorder import ProgressRecorder
from crucible.scheduler.engine.settings import EngineSettings
from crucible.scheduler.engine.usage_limits import UsageAndLimits
from crucible.scheduler.objects import workdir
from crucible.scheduler.objects.objectstore import JobObjectStore, StoreError, StoreSettings, default_store_url
from crucible.scheduler.persistence.folders import JobFolders
from crucible.scheduler.persistence.jobdb import AsyncJobStore
from crucible.scheduler.persistence.records import JobRecord
from crucible.scheduler.providers.registry import ProviderRegistry

__all__ = ["Engine", "EngineSettings"]

log = logging.getLogger(__name__)

#: How long an ended job stays in memory, so watchers and log followers see its final state.
KEEP_ENDED_S = 60.0
#: How long a log follower waits for a change before looking at the files again.
LOG_FOLLOW_WAIT_S = 0.25
#: How long DeleteJob waits for the driver of a job that has just ended to finish (its last outputs upload).
DELETE_WAIT_S = 10.0


class Engine:
    """Owns the store, the providers and the pricing source; the servicer calls its public methods."""

    def __init__(
        self,
        settings: EngineSettings,
        store: AsyncJobStore,
        registry: ProviderRegistry,
        pricing: OfferSource,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.pricing = pricing
        self.clock = clock  # replaceable (tests move time): every part reads it through now()
        self.folders = JobFolders(settings.state_dir / "jobs")
        self.objects = JobObjectStore(settings.store or StoreSettings(default_store_url(settings.state_dir)))
        self._live: dict[str, LiveJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._retention_task: asyncio.Task[None] | None = None
        self.context = SchedulerContext(settings, store, registry, self.objects, self.folders, self.now)
        self.lifecycle = JobLifecycle(self.context)
        self.limits = UsageAndLimits(self.context, pricing)
        self.progress = ProgressRecorder(self.context, self.lifecycle)
        self.log_mirror = LogMirror(self.context, self.progress)
        self.job_artifacts = JobArtifacts(self.context)
        self.launcher = JobLauncher(self.context, self.limits)
        self.driver = JobDriver(
            self.context, self.lifecycle, self.launcher, self.log_mirror, self.progress, self.job_artifacts, self.limits
        )
        self.creator = JobCreator(self.context, pricing)

    def now(self) -> float:
        """The engine's clock (unix seconds)."""
        return self.clock()

    # --- start / stop ------------------------------------------------------------------------------------------

    async def start(self) -> int:
        """Reconcile every unfinished job with its provider and resume driving it; returns how many were resumed."""
        await asyncio.to_thread(self.job_artifacts.sweep_temp)  # what uploads cut short by a crash left (issue 22)
        records = await self.store.unfinished(tuple(states.TERMINAL))
        for rec in records:
            self._spawn(rec)
        if records:
            log.info("reconciling %d unfinished job(s) after start", len(records))
        if self.settings.artifact_retention_days > 0:
            self._retention_task = asyncio.create_task(self.job_artifacts.retention_loop(), name="artifact-retention")
        return len(records)

    async def stop(self) -> None:
        """Stop driving jobs (they keep running on their providers and are re-attached on the next start)."""
        self._stopping = True
        tasks = list(self._tasks.values()) + ([self._retention_task] if self._retention_task else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pricing.close()
        await self.store.close()

    def _spawn(self, rec: JobRecord) -> None:
        live = LiveJob(rec)
        self._live[rec.job.job_id] = live
        self._tasks[rec.job.job_id] = asyncio.create_task(self._run(live), name=f"job-{rec.job.job_id}")

    async def _run(self, live: LiveJob) -> None:
        job_id = live.job.job_id
        try:
            await self.driver.drive(live)
        finally:
            if not self._stopping:
                self._tasks.pop(job_id, None)
                asyncio.get_running_loop().call_later(KEEP_ENDED_S, self._live.pop, job_id, None)

    # --- create / read -----------------------------------------------------------------------------------------

    async def create(self, spec: JobSpec, request_id: str, validate_only: bool) -> Job:
        """CreateJob: validate, pick offers, estimate, admit, store (durably) and start driving."""
        created = await self.creator.create(spec, request_id, validate_only)
        if created.new_record is None:
            return created.job
        self._spawn(created.new_record)
        return created.new_record.job.copy()

    async def _record(self, job_id: str) -> JobRecord:
        live = self._live.get(job_id)
        if live is not None:
            return live.rec
        jobspec.check_job_id(job_id)
        rec = await self.store.get(job_id)
        if rec is None:
            raise NotFound(f"job {job_id!r} not found", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})
        return rec

    async def get(self, job_id: str) -> Job:
        """GetJob."""
        return (await self._record(job_id)).job.copy()

    async def list(self, **filters: Any) -> list[tuple[int, Job]]:
        """ListJobs page as (store sequence, job), newest first; live jobs are returned as they are in memory."""
        out = []
        for rec in await self.store.list(**filters):
            live = self._live.get(rec.job.job_id)
            out.append((rec.seq, (live.rec if live else rec).job.copy()))
        return out

    # --- cancel / watch ----------------------------------------------------------------------------------------

    async def cancel(self, job_id: str, reason: str) -> Job:
        """CancelJob: PENDING -> CANCELLED, running states -> CANCELLING (the driver stops the run), terminal refused."""
        rec = await self._record(job_id)
        live = self._live.get(job_id)
        if live is None or states.is_terminal(rec.job.state):
            raise _not_cancellable(job_id, rec.job.state)
        async with live.lock:
            state = live.job.state
            if states.is_terminal(state):
                raise _not_cancellable(job_id, state)
            if state == states.CANCELLING:
                return live.rec.job.copy()
            await self.lifecycle.decide(live, CancelRequested(f"cancelled: {reason or 'user request'}"))
        return live.rec.job.copy()

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """WatchJob: the job now, then on every change; ends after a terminal snapshot."""
        rec = await self._record(job_id)
        live = self._live.get(job_id)
        if live is None:
            yield rec.job.copy()
            return
        seen = -1
        while True:
            async with live.changed:
                while live.version == seen:
                    await live.changed.wait()
                seen = live.version
                current = live.rec.job.copy()
            yield current
            if states.is_terminal(current.state):
                return

    async def _wait_change(self, job_id: str, timeout: float) -> None:
        live = self._live.get(job_id)
        if live is None:
            await asyncio.sleep(timeout)
            return
        async with live.changed:
            try:
                await asyncio.wait_for(live.changed.wait(), timeout)
            except TimeoutError:
                pass

    # --- logs and artifacts ------------------------------------------------------------------------------------

    async def logs(
        self, job_id: str, streams: builtins.list[str], offsets: dict[str, int], follow: bool
    ) -> AsyncIterator[LogChunk]:
        """StreamJobLogs: (stream, attempt, offset, next_offset, text) chunks from the mirrored log files."""
        rec = await self._record(job_id)

        def live_record() -> JobRecord | None:
            live = self._live.get(job_id)
            return live.rec if live is not None else None

        async def wait_change(timeout: float) -> None:
            await self._wait_change(job_id, timeout)

        async for chunk in self.log_mirror.read(rec, streams, offsets, follow, live_record, wait_change):
            yield chunk

    async def artifacts(self, job_id: str, prefix: str) -> builtins.list[ArtifactEntry]:
        """ListArtifacts: (path, size, mtime, is_checkpoint) of every file the job produced, in path order."""
        return await self.job_artifacts.list(await self._record(job_id), prefix)

    async def download(self, job_id: str, path: str, offset: int) -> AsyncIterator[DownloadChunk]:
        """DownloadArtifact: (offset, data, total size, sha256 of the bytes from `offset` on the last chunk)."""
        workdir.check_path(path)  # a bad path is INVALID_ARGUMENT before the job is looked up
        async for chunk in self.job_artifacts.download(await self._record(job_id), path, offset):
            yield chunk

    async def delete_artifacts(self, job_id: str) -> int:
        """DeleteJobArtifacts: remove an ended job's store objects and working folder; returns the objects removed."""
        return await self.job_artifacts.delete(await self._record(job_id))

    async def delete(self, job_id: str) -> int:
        """DeleteJob: remove an ended job's store objects, its folder, its progress and its record; returns the objects
        removed. FAILED_PRECONDITION while the job has not ended (or its driver is still finishing it)."""
        rec = await self._record(job_id)
        task = self._tasks.get(job_id)
        if states.is_terminal(rec.job.state) and task is not None and not task.done():
            # The driver may still be uploading the last attempt's outputs: let it finish first (bounded).
            await asyncio.wait({task}, timeout=DELETE_WAIT_S)
        if not states.is_terminal(rec.job.state) or (task is not None and not task.done()):
            raise FailedPrecondition(
                f"job {job_id} is {states.name(rec.job.state)}; a job can be deleted once it has ended (cancel it first)",
                reason="JOB_NOT_TERMINAL",
                metadata={"job_id": job_id, "state": states.name(rec.job.state)},
            )
        removed = await asyncio.to_thread(self._delete_files, job_id)
        await self.store.delete(job_id)
        self._live.pop(job_id, None)
        log.info("deleted job %s (%d stored objects)", job_id, removed)
        return removed

    def _delete_files(self, job_id: str) -> int:
        """The job's objects in the store, then its whole folder (work, logs, attempts); links inside are removed,
        never followed (shutil.rmtree works on file descriptors here). Runs in a thread."""
        try:
            count = self.objects.delete_job(job_id)
        except StoreError as exc:
            raise Unavailable(f"the artifact store refused the deletion: {exc}", reason="STORE_UNAVAILABLE") from None
        shutil.rmtree(self.folders.job_dir(job_id), ignore_errors=True)
        return count


def _not_cancellable(job_id: str, state: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"job {job_id} is {states.name(state)}, which cannot be cancelled",
        reason="JOB_TERMINAL",
        metadata={"job_id": job_id, "state": states.name(state)},
    )
