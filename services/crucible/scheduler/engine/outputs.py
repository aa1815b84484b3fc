"""The outputs of a job: listing and downloading them (working folder, live remote machine, or the object store),
uploading what each attempt left to the store, deleting them, and the retention sweep.

File-level safety (no links, regular files only, `O_NOFOLLOW` opens) is in `artifacts.py`; the store layout and
upload rules in `transfer.py`. Every file operation here runs in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator

import grpc

from crucible.runtime.errors import CrucibleError, FailedPrecondition, NotFound, OutOfRange, Unavailable
from crucible.scheduler.domain import states
from crucible.scheduler.domain.record import unix_s
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.lifecycle import current_handle
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.objects import transfer, workdir
from crucible.scheduler.objects.objectstore import StoreError
from crucible.scheduler.persistence.records import JobRecord
from crucible.scheduler.providers.base import Provider, ProviderError, RunHandle

log = logging.getLogger(__name__)

#: Bytes per DownloadArtifact message.
ARTIFACT_CHUNK = 1 << 20
#: Ended jobs read per page by the retention sweep, and the sweep's period.
RETENTION_PAGE = 200
RETENTION_PERIOD_S = 3600

#: One listed artifact: (path, size, mtime, is_checkpoint).
ArtifactEntry = tuple[str, int, float, bool]
#: One DownloadArtifact message: (offset, data, total size, sha256 of the bytes from the first offset on the last one).
DownloadChunk = tuple[int, bytes, int, str]


class Aborted(CrucibleError):
    """The operation was interrupted by a concurrent change (an artifact rewritten while it was being sent)."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


def _past_end(path: str, offset: int, size: int) -> OutOfRange:
    return OutOfRange(f"offset {offset} is past the end of {path} ({size} bytes)", reason="OFFSET_PAST_END")


class JobArtifacts:
    """ListArtifacts, DownloadArtifact and DeleteJobArtifacts, plus collecting each attempt's outputs."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.settings = ctx.settings
        self.registry = ctx.registry
        self.objects = ctx.objects
        self.folders = ctx.folders
        self.store = ctx.store
        self.clock = ctx.clock

    def _remote_provider(self, handle: RunHandle | None) -> Provider | None:
        """The provider of a live remote run that can list and send its files, else None."""
        if handle is None or handle.provider == "local":
            return None
        provider = self.registry.load(handle.provider)
        return provider if provider is not None and provider.capabilities.artifacts else None

    async def list(self, rec: JobRecord, prefix: str) -> list[ArtifactEntry]:
        """(path, size, mtime, is_checkpoint) of every file the job produced, in path order."""
        job_id = rec.job.job_id
        checkpoints = (rec.job.spec.checkpoint_dir or "checkpoints").rstrip("/") + "/"
        found = await asyncio.to_thread(lambda: workdir.scan(self.folders.work(job_id), self.folders.manifest(job_id)))
        handle = current_handle(rec)
        provider = self._remote_provider(handle)
        if provider is not None and handle is not None:
            try:
                for remote in await provider.list_artifacts(handle):
                    found.setdefault(remote.path, (remote.size_bytes, remote.modified_unix_s))
            except ProviderError as exc:
                log.warning("listing artifacts of %s on %s failed: %s", job_id, handle.provider, exc)
        out = {path: (size, mtime, path.startswith(checkpoints)) for path, (size, mtime) in found.items()}
        try:  # what earlier attempts uploaded, and the store's checkpoints: still there after the machine is gone
            stored = await asyncio.to_thread(transfer.listing, self.objects, job_id)
        except StoreError as exc:
            log.warning("listing the stored artifacts of %s failed: %s", job_id, exc)
            stored = {}
        for path, (size, mtime, checkpoint) in stored.items():
            out.setdefault(path, (size, mtime, checkpoint or path.startswith(checkpoints)))
        return [
            (path, size, mtime, checkpoint) for path, (size, mtime, checkpoint) in sorted(out.items()) if path.startswith(prefix)
        ]

    async def download(self, rec: JobRecord, path: str, offset: int) -> AsyncIterator[DownloadChunk]:
        """DownloadArtifact: (offset, data, total size, sha256 of the bytes from `offset` on the last chunk).

        Only a regular file physically inside the job's working directory is served (see artifacts.py), else the
        live remote machine's file, else the store's copy; nothing before `offset` is read."""
        workdir.check_path(path)
        job_id = rec.job.job_id
        opened = await asyncio.to_thread(workdir.open_file, self.folders.work(job_id), path)
        if opened is None:
            handle = current_handle(rec)
            provider = self._remote_provider(handle)
            if provider is None or handle is None:
                async for item in self._download_stored(job_id, path, offset):
                    yield item
                return
            async for item in self._download_remote(provider, handle, path, offset):
                yield item
            return
        descriptor, before = opened
        try:
            size = before.st_size
            if offset > size:
                raise _past_end(path, offset, size)
            digest = hashlib.sha256()
            position = offset
            if size == offset:
                yield position, b"", size, digest.hexdigest()
                return
            while position < size:
                data = await asyncio.to_thread(
                    workdir.read_chunk, descriptor, position, min(ARTIFACT_CHUNK, size - position), digest
                )
                if not data:
                    raise Aborted(f"{path} shrank while it was being sent", reason="ARTIFACT_CHANGED")
                last = position + len(data) >= size
                if last:
                    after = await asyncio.to_thread(os.fstat, descriptor)
                    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                        raise Aborted(f"{path} changed while it was being sent", reason="ARTIFACT_CHANGED")
                yield position, data, size, digest.hexdigest() if last else ""
                position += len(data)
        finally:
            os.close(descriptor)

    async def _download_stored(self, job_id: str, path: str, offset: int) -> AsyncIterator[DownloadChunk]:
        """An artifact from the object store (artifacts/, or checkpoints/ for "checkpoints/..."): ranged reads from
        `offset`, nothing before it; ABORTED when the object is replaced while it is being sent."""
        try:
            found = await asyncio.to_thread(transfer.locate, self.objects, job_id, path)
        except StoreError as exc:
            raise Unavailable(f"the artifact store cannot be read: {exc}", reason="STORE_UNAVAILABLE") from None
        if found is None:
            raise NotFound(f"artifact {path!r} not found for job {job_id}", reason="ARTIFACT_NOT_FOUND")
        kind, relative, size, mtime = found
        if offset > size:
            raise _past_end(path, offset, size)
        digest, position = hashlib.sha256(), offset
        if size == offset:
            yield position, b"", size, digest.hexdigest()
            return
        while position < size:
            try:
                data = await asyncio.to_thread(
                    self.objects.read_range, job_id, kind, relative, position, min(ARTIFACT_CHUNK, size - position)
                )
            except (StoreError, FileNotFoundError) as exc:
                raise Aborted(f"{path} changed or vanished while it was being sent: {exc}", reason="ARTIFACT_CHANGED") from None
            if not data:
                raise Aborted(f"{path} shrank while it was being sent", reason="ARTIFACT_CHANGED")
            digest.update(data)
            last = position + len(data) >= size
            if last:
                after = await asyncio.to_thread(self.objects.stat, job_id, kind, relative)
                if after is None or (after.size, after.mtime) != (size, mtime):
                    raise Aborted(f"{path} changed while it was being sent", reason="ARTIFACT_CHANGED")
            yield position, data, size, digest.hexdigest() if last else ""
            position += len(data)

    async def _download_remote(
        self, provider: Provider, handle: RunHandle, path: str, offset: int
    ) -> AsyncIterator[DownloadChunk]:
        """An artifact read from the live remote machine; the bytes before `offset` are read but not sent."""
        sizes = {remote.path: remote.size_bytes for remote in await provider.list_artifacts(handle)}
        if path not in sizes:
            raise NotFound(f"artifact {path!r} not found", reason="ARTIFACT_NOT_FOUND")
        size = sizes[path]
        if offset > size:
            raise _past_end(path, offset, size)
        digest, position = hashlib.sha256(), 0
        buffered: list[tuple[int, bytes]] = []
        async for block in provider.open_artifact(handle, path, ARTIFACT_CHUNK):
            if position + len(block) > offset:
                part = block[max(0, offset - position) :]
                digest.update(part)  # the sha256 covers the bytes sent, as for local files
                buffered.append((max(position, offset), part))
            position += len(block)
            while len(buffered) > 1:
                block_offset, block_data = buffered.pop(0)
                yield block_offset, block_data, size, ""
        if position != size:
            raise Aborted(f"{path} changed while it was being sent", reason="ARTIFACT_CHANGED")
        block_offset, block_data = buffered.pop(0) if buffered else (offset, b"")
        yield block_offset, block_data, size, digest.hexdigest()

    async def collect(self, live: LiveJob, provider: Provider, handle: RunHandle, attempt: int) -> None:
        """Upload what the ended attempt left to the store's artifacts/ (bounded; before a remote machine is released),
        so ListArtifacts and DownloadArtifact serve it after the working folder or machine is gone."""
        job_id, book = live.job.job_id, live.book
        if attempt in book.collected:
            return
        done = book.uploaded_files()
        try:
            if handle.provider == "local":
                await asyncio.to_thread(transfer.reclaim_from_job_user, self.objects, job_id)
                result = await asyncio.to_thread(
                    transfer.upload_outputs,
                    self.objects,
                    job_id,
                    self.folders.work(job_id),
                    self.folders.manifest(job_id),
                    done,
                    self.settings.artifact_max_bytes,
                )
            elif provider.capabilities.artifacts:
                result = await transfer.pull_remote_outputs(
                    self.objects,
                    job_id,
                    provider,
                    handle,
                    done,
                    self.settings.artifact_max_bytes,
                    asyncio.to_thread,
                )
            else:
                return
        except (StoreError, ProviderError, OSError, CrucibleError) as exc:
            log.warning("job %s attempt %d: outputs not uploaded to the store: %s", job_id, attempt, exc)
            book.collect_errors[attempt] = str(exc)[:500]
            return
        book.collected.add(attempt)
        if result.skipped:
            log.warning(
                "job %s attempt %d: %d output file(s) over --artifact-max-bytes not uploaded: %s",
                job_id,
                attempt,
                len(result.skipped),
                ", ".join(result.skipped[:10]),
            )
            book.collect_skipped[attempt] = result.skipped[:100]
        log.info(
            "job %s attempt %d: %d output file(s), %d bytes uploaded to the store", job_id, attempt, result.uploaded, result.bytes
        )

    async def delete(self, rec: JobRecord) -> int:
        """DeleteJobArtifacts: remove an ended job's store objects and working folder; returns the objects removed."""
        job_id, state = rec.job.job_id, rec.job.state
        if not states.is_terminal(state):
            raise FailedPrecondition(
                f"job {job_id} is {states.name(state)}; its artifacts can be deleted once it has ended (cancel it first)",
                reason="JOB_NOT_TERMINAL",
                metadata={"job_id": job_id, "state": states.name(state)},
            )
        return await asyncio.to_thread(self._delete_job_files, job_id)

    def _delete_job_files(self, job_id: str) -> int:
        try:
            count = self.objects.delete_job(job_id)
        except StoreError as exc:
            raise Unavailable(f"the artifact store refused the deletion: {exc}", reason="STORE_UNAVAILABLE") from None
        shutil.rmtree(self.folders.work(job_id), ignore_errors=True)
        log.info("deleted the stored objects (%d) and working folder of job %s", count, job_id)
        return count

    def sweep_temp(self) -> None:
        """At start, before any job is driven: remove the temporary files that uploads or code packing interrupted by
        a crash (kill -9) left in the store and the job folders. Runs in a thread."""
        try:
            store_files, store_bytes = self.objects.sweep_temp()
        except StoreError as exc:
            log.warning("the store's temporary files could not be swept: %s", exc)
            store_files = store_bytes = 0
        state_files, state_bytes = transfer.sweep_state_temp(self.folders.jobs_dir)
        if store_files or state_files:
            log.warning(
                "removed %d temporary file(s) (%d bytes) that an interrupted upload left in the store and %d (%d bytes) in"
                " the job folders",
                store_files,
                store_bytes,
                state_files,
                state_bytes,
            )

    async def retention_loop(self) -> None:
        """Every hour (and at start): remove the files of jobs that ended more than artifact_retention_days ago."""
        while True:
            cutoff = self.clock() - self.settings.artifact_retention_days * 86400
            before: int | None = None
            while True:
                page = await self.store.list(states=list(states.TERMINAL), limit=RETENTION_PAGE, before_seq=before)
                for rec in page:
                    ended = rec.job.end_time is not None and unix_s(rec.job.end_time) < cutoff
                    if ended and not rec.bookkeeping.files_expired:
                        try:
                            await asyncio.to_thread(self._delete_job_files, rec.job.job_id)
                        except CrucibleError as exc:
                            log.warning("retention: %s", exc)
                            continue
                        rec.bookkeeping.files_expired = True
                        await self.store.update(rec)
                if len(page) < RETENTION_PAGE:
                    break
                before = page[-1].seq
            await asyncio.sleep(RETENTION_PERIOD_S)
