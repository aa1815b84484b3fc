"""The job engine: creates jobs durably, drives each through its states on a provider, and reconciles after a restart.

One asyncio task per unfinished job launches attempts (failing over between offers), polls the provider, mirrors the
logs into the job's folder, parses progress, records usage and applies the restart and recovery policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.errors import (
    AlreadyExists,
    CrucibleError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from crucible.scheduler import artifacts as files
from crucible.scheduler import inputs as job_inputs
from crucible.scheduler import joboutputs, jobspec
from crucible.scheduler.core import states as st
from crucible.scheduler.core.progress import Progress, ProgressTracker
from crucible.scheduler.history import line_point
from crucible.scheduler.pricing import Candidate
from crucible.scheduler.providers.base import (
    LaunchSpec,
    OfferRef,
    ProviderError,
    ProviderErrorKind,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.registry import ProviderRegistry
from crucible.scheduler.storage import JobObjectStore, StoreError, StoreSettings, default_store_url
from crucible.scheduler.jobstate import JobBookkeeping, JobRecord, StoredCandidate
from crucible.scheduler.store import AsyncJobStore

log = logging.getLogger(__name__)

A = job_pb2.AttemptOutcome
K = ProviderErrorKind
STREAMS = ("stdout", "stderr")
LOG_CHUNK = 64 * 1024
ARTIFACT_CHUNK = 1 << 20
PROGRESS_SAVE_INTERVAL_S = 1.0
#: Remote providers whose boot script or init step downloads LaunchSpec.input_urls (see providers/remote.py).
FETCHES_INPUTS = frozenset({"lambda", "paperspace", "runpod", "kubernetes"})
MAX_LOG_READ_PER_POLL = 16 << 20


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), size, offset)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


class Aborted(CrucibleError):
    """The operation was interrupted by a concurrent change (an artifact rewritten while it was being sent)."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


@dataclasses.dataclass
class EngineSettings:
    """What the engine needs from the service config."""

    state_dir: Path
    poll_interval_s: float = 1.0
    usage_interval_s: float = 60.0
    default_max_duration_s: float = 86400.0
    default_budget_scope: str = ""
    max_recoveries: int = 10
    transient_retries: int = 2
    container_image: str = ""
    code_limits: jobspec.CodeLimits = dataclasses.field(default_factory=jobspec.CodeLimits)
    log_cap_bytes: int = 1 << 30  # per stream per job, across attempts
    store: StoreSettings | None = None  # the artifact store; None: file://<state_dir>/store
    artifact_retention_days: float = 0.0  # 0 keeps a job's store objects until DeleteJobArtifacts
    artifact_max_bytes: int = 16 << 30  # output bytes uploaded to the store per job
    code_url_ttl_s: int = 3600  # lifetime of presigned code/input URLs handed to remote machines
    input_limits: job_inputs.InputLimits = dataclasses.field(default_factory=job_inputs.InputLimits)


def now_ts(t: float) -> timestamp_pb2.Timestamp:
    """Timestamp of a unix time."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def ts_s(ts: timestamp_pb2.Timestamp) -> float:
    """Unix seconds of a timestamp."""
    return ts.ToNanoseconds() / 1e9


def offer_ref(offer: offer_pb2.Offer) -> OfferRef:
    """The provider-interface view of an offer."""
    return OfferRef(offer.provider, offer.instance_type, offer.region, offer.gpu_name, offer.gpu_count, offer.spot,
                    offer.price_usd_per_hour, offer.offer_id)


def priced(offer: offer_pb2.Offer) -> bool:
    """Whether the offer comes from the cost catalog (usage can be recorded against it)."""
    return not offer.price_source.startswith("unknown")


def utf8_cut(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
        return n if back >= need else n - back
    return n


class _Live:
    """In-memory companions of a job being driven: lock, change notification, progress tracker, log line buffers."""

    def __init__(self, rec: JobRecord) -> None:
        self.rec = rec
        self.lock = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.version = 0
        self.wake = asyncio.Event()
        self.tracker = ProgressTracker()
        self.partial = {s: b"" for s in STREAMS}
        self.progress_saved_at = 0.0
        self.progress_dirty = False
        p = rec.job.progress
        tp = self.tracker.progress
        tp.step = p.step if p.HasField("step") else None
        tp.total_steps = p.total_steps if p.HasField("total_steps") else None
        tp.epoch = p.epoch if p.HasField("epoch") else None
        tp.total_epochs = p.total_epochs if p.HasField("total_epochs") else None
        tp.metrics = dict(p.metrics)


class Engine:
    """Owns the store, the providers and the pricing source; the servicer calls its public methods."""

    def __init__(self, settings: EngineSettings, store: AsyncJobStore, registry: ProviderRegistry, pricing: Any,
                 clock: Any = time.time) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.pricing = pricing
        self.clock = clock
        self.jobs_dir = settings.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._live: dict[str, _Live] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._create_lock = asyncio.Lock()
        self._stopping = False
        self.objects = JobObjectStore(settings.store or StoreSettings(default_store_url(settings.state_dir)))
        self._retention_task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> int:
        """Reconcile every unfinished job with its provider and resume driving it; returns how many were resumed."""
        records = await self.store.unfinished(tuple(st.TERMINAL))
        for rec in records:
            self._spawn(rec)
        if records:
            log.info("reconciling %d unfinished job(s) after start", len(records))
        if self.settings.artifact_retention_days > 0:
            self._retention_task = asyncio.create_task(self._retention_loop(), name="artifact-retention")
        return len(records)

    async def stop(self) -> None:
        """Stop driving jobs (they keep running on their providers and are re-attached on the next start)."""
        self._stopping = True
        tasks = list(self._tasks.values()) + ([self._retention_task] if self._retention_task else [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pricing.close()
        await self.store.close()

    def _spawn(self, rec: JobRecord) -> None:
        live = _Live(rec)
        self._live[rec.job.job_id] = live
        self._tasks[rec.job.job_id] = asyncio.create_task(self._drive(live), name=f"job-{rec.job.job_id}")

    def job_dir(self, job_id: str) -> Path:
        """The job's folder: work/ (working directory), logs/, attempts/."""
        return self.jobs_dir / job_id

    # --- persistence and notification --------------------------------------------------------------------------

    async def _save(self, live: _Live) -> None:
        live.rec.job.update_time.CopyFrom(now_ts(self.clock()))
        await self.store.update(live.rec)
        async with live.changed:
            live.version += 1
            live.changed.notify_all()

    async def _transition(self, live: _Live, to: int, reason: str) -> None:
        job = live.rec.job
        st.check_transition(job.state, to)
        now = self.clock()
        job.transitions.add(from_state=job.state, to_state=to, time=now_ts(now), reason=reason, attempt=len(job.attempts))
        job.state = to
        if st.is_terminal(to):
            job.end_time.CopyFrom(now_ts(now))
        log.info("job %s -> %s: %s", job.job_id, st.name(to), reason)
        await self._save(live)

    # --- create / read -----------------------------------------------------------------------------------------

    def _usable_providers(self) -> list[str]:
        return [s.name for s in self.registry.statuses() if s.usable]

    async def create(self, spec: job_pb2.JobSpec, request_id: str, validate_only: bool) -> job_pb2.Job:
        """CreateJob: validate, pick offers, estimate, admit, store (durably) and start driving."""
        jobspec.validate_spec(spec, request_id, self.registry.known())
        digest = jobspec.spec_sha256(spec)
        if request_id and not validate_only:
            existing = await self.store.by_request_id(request_id)
            if existing is not None:
                return self._check_same(existing, digest)
        job_inputs.validate_inputs(spec.inputs)
        # File system and archive checks (allow-list, sizes, special files) run in a thread, before any provider work;
        # so do the inputs' (allowed roots, links, sizes: listing a store prefix is I/O).
        await asyncio.to_thread(jobspec.check_code, spec, self.settings.code_limits)
        if spec.inputs:
            try:
                await asyncio.to_thread(job_inputs.resolve_inputs, spec.inputs, self.settings.input_limits, self.objects)
            except StoreError as exc:
                raise Unavailable(f"the artifact store cannot be read: {exc}", reason="STORE_UNAVAILABLE") from None
        usable = self._usable_providers()
        wanted = list(spec.providers) or usable
        unusable = [p for p in spec.providers if p not in usable]
        if spec.provider_policy in (job_pb2.PROVIDER_POLICY_EXPLICIT,) and unusable:
            raise FailedPrecondition(
                f"provider {unusable[0]} cannot be used: {self.registry.status(unusable[0]).unavailable_reason}",
                reason="PROVIDER_UNAVAILABLE", metadata={"provider": unusable[0]},
            )
        candidates = await self.pricing.candidates(spec, [p for p in wanted if p in usable], self.settings.default_max_duration_s)
        if not candidates:
            why = f"; unusable providers: {', '.join(unusable)}" if unusable else ""
            if not self.pricing.known:
                why += "; no cost service is configured, so only local and dryrun can run"
            raise FailedPrecondition(f"no offer meets the spec{why}", reason="NO_FEASIBLE_OFFER")
        first = candidates[0]
        seconds = self._expected_seconds(spec)
        estimated, assumptions = await self.pricing.estimate(first, seconds)
        scope = spec.budget_scope or self.settings.default_budget_scope
        await self.pricing.admit(scope, estimated, "")
        now = self.clock()
        job = job_pb2.Job(spec=spec, state=st.PENDING, provider=first.provider, offer=first.offer,
                          create_time=now_ts(now), update_time=now_ts(now))
        if spec.WhichOneof("code") == "code_archive":
            job.spec.ClearField("code_archive")
            job.code_archive_sha256 = hashlib.sha256(spec.code_archive).hexdigest()
        if not spec.budget_scope and scope:
            job.spec.budget_scope = scope
        cost_note = "estimated cost unknown: " + first.offer.price_source if estimated is None else (
            f"estimated ${estimated:.4f} on {first.offer.offer_id} for {seconds / 3600:.2f} h")
        job.cost.estimated_usd = estimated or 0.0
        job.cost.update_time.CopyFrom(now_ts(now))
        job.transitions.add(from_state=st.UNSPECIFIED, to_state=st.PENDING, time=now_ts(now),
                            reason=f"created; {cost_note}", attempt=0)
        if validate_only:
            return job
        job.job_id = f"job-{time.strftime('%Y%m%d', time.gmtime(now))}-{uuid.uuid4().hex[:12]}"
        book = JobBookkeeping(candidates=[StoredCandidate.of(c.offer, c.estimated_usd) for c in candidates],
                              assumptions=list(assumptions))
        folder = self.job_dir(job.job_id)
        try:
            code = await asyncio.to_thread(self._prepare_folder, folder, spec, job.job_id)
        except StoreError as exc:
            raise Unavailable(f"the job's code could not be stored: {exc}", reason="STORE_UNAVAILABLE") from None
        if code is not None:
            book.code_sha256, book.code_bytes = code
        rec = JobRecord(job, digest, request_id, book)
        async with self._create_lock:
            try:
                await self.store.insert(rec)
            except sqlite3.IntegrityError:
                shutil.rmtree(folder, ignore_errors=True)
                existing = await self.store.by_request_id(request_id) if request_id else None
                if existing is None:
                    raise
                return self._check_same(existing, digest)
        self._spawn(rec)
        return self._snapshot(rec)

    def _prepare_folder(self, folder: Path, spec: job_pb2.JobSpec, job_id: str) -> tuple[str, int] | None:
        """The job's folder with its code (in a thread); a refused code folder leaves nothing behind. A job with code
        also gets it packed into the store (code/code.tar.gz): fresh working folders and remote machines start from it.
        Returns (sha256, size) of that archive, or None without code."""
        try:
            manifest = jobspec.unpack_code(spec, folder / "work", self.settings.code_limits)
            code = (joboutputs.publish_code(self.objects, job_id, folder / "work", manifest)
                    if spec.WhichOneof("code") else None)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        (folder / "code_manifest.json").write_text(json.dumps(manifest))
        return code

    @staticmethod
    def _check_same(existing: JobRecord, digest: str) -> job_pb2.Job:
        if existing.spec_sha256 != digest:
            raise AlreadyExists(f"request_id was used for job {existing.job.job_id} with a different spec",
                                reason="REQUEST_ID_REUSED", metadata={"job_id": existing.job.job_id})
        return existing.job

    def _expected_seconds(self, spec: job_pb2.JobSpec) -> float:
        if spec.HasField("expected_duration"):
            return spec.expected_duration.ToNanoseconds() / 1e9
        if spec.HasField("max_duration"):
            return spec.max_duration.ToNanoseconds() / 1e9
        return 3600.0

    @staticmethod
    def _snapshot(rec: JobRecord) -> job_pb2.Job:
        out = job_pb2.Job()
        out.CopyFrom(rec.job)
        return out

    async def _record(self, job_id: str) -> JobRecord:
        live = self._live.get(job_id)
        if live is not None:
            return live.rec
        if not job_id:
            raise InvalidArgument.field("job_id", "is required")
        rec = await self.store.get(job_id)
        if rec is None:
            raise NotFound(f"job {job_id!r} not found", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})
        return rec

    async def get(self, job_id: str) -> job_pb2.Job:
        """GetJob."""
        return self._snapshot(await self._record(job_id))

    async def list(self, **filters: Any) -> list[tuple[int, job_pb2.Job]]:
        """ListJobs page as (store sequence, job), newest first; live jobs are returned as they are in memory."""
        out = []
        for rec in await self.store.list(**filters):
            live = self._live.get(rec.job.job_id)
            out.append((rec.seq, self._snapshot(live.rec if live else rec)))
        return out

    # --- cancel / watch ----------------------------------------------------------------------------------------

    async def cancel(self, job_id: str, reason: str) -> job_pb2.Job:
        """CancelJob: PENDING -> CANCELLED, running states -> CANCELLING (the driver stops the run), terminal refused."""
        rec = await self._record(job_id)
        live = self._live.get(job_id)
        if live is None or st.is_terminal(rec.job.state):
            raise FailedPrecondition(f"job {job_id} is {st.name(rec.job.state)}, which cannot be cancelled",
                                     reason="JOB_TERMINAL", metadata={"job_id": job_id, "state": st.name(rec.job.state)})
        text = f"cancelled: {reason or 'user request'}"
        async with live.lock:
            state = live.rec.job.state
            if st.is_terminal(state):
                raise FailedPrecondition(f"job {job_id} is {st.name(state)}, which cannot be cancelled",
                                         reason="JOB_TERMINAL", metadata={"job_id": job_id, "state": st.name(state)})
            if state == st.CANCELLING:
                return self._snapshot(live.rec)
            live.rec.bookkeeping.cancel_reason = text
            if state == st.PENDING or (state == st.RECOVERING and not self._current_handle(live.rec)):
                await self._transition(live, st.CANCELLED, text)
            else:
                await self._transition(live, st.CANCELLING, text)
        live.wake.set()
        return self._snapshot(live.rec)

    async def watch(self, job_id: str) -> AsyncIterator[job_pb2.Job]:
        """WatchJob: the job now, then on every change; ends after a terminal snapshot."""
        rec = await self._record(job_id)
        live = self._live.get(job_id)
        if live is None:
            yield self._snapshot(rec)
            return
        seen = -1
        while True:
            async with live.changed:
                while live.version == seen:
                    await live.changed.wait()
                seen = live.version
                snap = self._snapshot(live.rec)
            yield snap
            if st.is_terminal(snap.state):
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

    # --- logs --------------------------------------------------------------------------------------------------

    def _log_path(self, job_id: str, stream: str) -> Path:
        return self.job_dir(job_id) / "logs" / f"{stream}.log"

    @staticmethod
    def _attempt_at(rec: JobRecord, stream: str, offset: int) -> tuple[int, int | None]:
        """(attempt that wrote byte `offset`, start offset of the next attempt or None)."""
        starts = sorted(((a, int(v[stream])) for a, v in rec.bookkeeping.log_starts.items()), key=lambda x: x[1])
        attempt, nxt = (starts[0][0] if starts else 1), None
        for i, (a, start) in enumerate(starts):
            if start <= offset:
                attempt = a
                nxt = None
                for _a2, s2 in starts[i + 1:]:
                    if s2 > start:
                        nxt = s2
                        break
        return attempt, nxt

    async def logs(self, job_id: str, streams: list[str], offsets: dict[str, int], follow: bool
                   ) -> AsyncIterator[tuple[str, int, int, int, str]]:
        """StreamJobLogs: (stream, attempt, offset, next_offset, text) chunks from the mirrored log files."""
        rec = await self._record(job_id)
        pos = dict(offsets)
        while True:
            rec = self._live[job_id].rec if job_id in self._live else rec
            terminal = st.is_terminal(rec.job.state)
            sent = False
            for stream in streams:
                path = self._log_path(job_id, stream)
                size = await asyncio.to_thread(_size, path)
                while pos[stream] < size:
                    attempt, nxt = self._attempt_at(rec, stream, pos[stream])
                    end = min(size, pos[stream] + LOG_CHUNK, nxt if nxt is not None else size)
                    data = await asyncio.to_thread(_read_at, path, pos[stream], end - pos[stream])
                    cut = utf8_cut(data)
                    if cut < len(data) and not (end == nxt or (end == size and terminal)):
                        if cut == 0:
                            break  # an incomplete character at the end: wait for its remaining bytes
                        data = data[:cut]
                    yield stream, attempt, pos[stream], pos[stream] + len(data), data.decode("utf-8", "replace")
                    pos[stream] += len(data)
                    sent = True
            if not follow or (terminal and not sent):
                return
            if not sent:
                await self._wait_change(job_id, 0.25)

    # --- artifacts ---------------------------------------------------------------------------------------------

    def _work(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "work"

    def _manifest(self, job_id: str) -> dict[str, list[int]]:
        try:
            return json.loads((self.job_dir(job_id) / "code_manifest.json").read_text())
        except (OSError, ValueError):
            return {}

    async def artifacts(self, job_id: str, prefix: str) -> list[tuple[str, int, float, bool]]:
        """(path, size, mtime, is_checkpoint) of every file the job produced, in path order."""
        rec = await self._record(job_id)
        root = self._work(job_id)
        ckpt = (rec.job.spec.checkpoint_dir or "checkpoints").rstrip("/") + "/"
        found = await asyncio.to_thread(lambda: files.scan(root, self._manifest(job_id)))
        handle = self._current_handle(rec)
        if handle is not None and handle.provider != "local":
            provider = self.registry.load(handle.provider)
            if provider is not None and provider.capabilities.artifacts:
                try:
                    for a in await provider.list_artifacts(handle):
                        found.setdefault(a.path, (a.size_bytes, a.modified_unix_s))
                except ProviderError as exc:
                    log.warning("listing artifacts of %s on %s failed: %s", job_id, handle.provider, exc)
        out = {p: (s, m, p.startswith(ckpt)) for p, (s, m) in found.items()}
        try:  # what earlier attempts uploaded, and the store's checkpoints: still there after the machine is gone
            stored = await asyncio.to_thread(joboutputs.listing, self.objects, job_id)
        except StoreError as exc:
            log.warning("listing the stored artifacts of %s failed: %s", job_id, exc)
            stored = {}
        for p, (s, m, c) in stored.items():
            out.setdefault(p, (s, m, c or p.startswith(ckpt)))
        return [(p, s, m, c) for p, (s, m, c) in sorted(out.items()) if p.startswith(prefix)]

    async def download(self, job_id: str, path: str, offset: int) -> AsyncIterator[tuple[int, bytes, int, str]]:
        """DownloadArtifact: (offset, data, total size, sha256 of the bytes from `offset` on the last chunk).

        Only a regular file physically inside the job's working directory is served (see artifacts.py); every file
        operation runs in a thread and nothing before `offset` is read."""
        files.check_path(path)
        rec = await self._record(job_id)
        opened = await asyncio.to_thread(files.open_file, self._work(job_id), path)
        if opened is None:
            handle = self._current_handle(rec)
            provider = self.registry.load(handle.provider) if handle is not None and handle.provider != "local" else None
            if provider is None or not provider.capabilities.artifacts:
                async for item in self._download_stored(job_id, path, offset):
                    yield item
                return
            async for item in self._download_remote(provider, handle, path, offset):  # type: ignore[arg-type]
                yield item
            return
        fd, before = opened
        try:
            size = before.st_size
            if offset > size:
                raise OutOfRange(f"offset {offset} is past the end of {path} ({size} bytes)", reason="OFFSET_PAST_END")
            digest = hashlib.sha256()
            pos = offset
            if size == offset:
                yield pos, b"", size, digest.hexdigest()
                return
            while pos < size:
                data = await asyncio.to_thread(files.read_chunk, fd, pos, min(ARTIFACT_CHUNK, size - pos), digest)
                if not data:
                    raise Aborted(f"{path} shrank while it was being sent", reason="ARTIFACT_CHANGED")
                last = pos + len(data) >= size
                if last:
                    after = await asyncio.to_thread(os.fstat, fd)
                    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                        raise Aborted(f"{path} changed while it was being sent", reason="ARTIFACT_CHANGED")
                yield pos, data, size, digest.hexdigest() if last else ""
                pos += len(data)
        finally:
            os.close(fd)

    async def _download_stored(self, job_id: str, path: str, offset: int) -> AsyncIterator[tuple[int, bytes, int, str]]:
        """An artifact from the object store (artifacts/, or checkpoints/ for "checkpoints/..."): ranged reads from
        `offset`, nothing before it; ABORTED when the object is replaced while it is being sent."""
        try:
            found = await asyncio.to_thread(joboutputs.locate, self.objects, job_id, path)
        except StoreError as exc:
            raise Unavailable(f"the artifact store cannot be read: {exc}", reason="STORE_UNAVAILABLE") from None
        if found is None:
            raise NotFound(f"artifact {path!r} not found for job {job_id}", reason="ARTIFACT_NOT_FOUND")
        kind, rel, size, mtime = found
        if offset > size:
            raise OutOfRange(f"offset {offset} is past the end of {path} ({size} bytes)", reason="OFFSET_PAST_END")
        digest, pos = hashlib.sha256(), offset
        if size == offset:
            yield pos, b"", size, digest.hexdigest()
            return
        while pos < size:
            try:
                data = await asyncio.to_thread(self.objects.read_range, job_id, kind, rel, pos,
                                               min(ARTIFACT_CHUNK, size - pos))
            except (StoreError, FileNotFoundError) as exc:
                raise Aborted(f"{path} changed or vanished while it was being sent: {exc}",
                              reason="ARTIFACT_CHANGED") from None
            if not data:
                raise Aborted(f"{path} shrank while it was being sent", reason="ARTIFACT_CHANGED")
            digest.update(data)
            last = pos + len(data) >= size
            if last:
                after = await asyncio.to_thread(self.objects.stat, job_id, kind, rel)
                if after is None or (after.size, after.mtime) != (size, mtime):
                    raise Aborted(f"{path} changed while it was being sent", reason="ARTIFACT_CHANGED")
            yield pos, data, size, digest.hexdigest() if last else ""
            pos += len(data)

    async def delete_artifacts(self, job_id: str) -> int:
        """DeleteJobArtifacts: remove an ended job's store objects and working folder; returns the objects removed."""
        rec = await self._record(job_id)
        if not st.is_terminal(rec.job.state):
            raise FailedPrecondition(f"job {job_id} is {st.name(rec.job.state)}; its artifacts can be deleted once it "
                                     "has ended (cancel it first)", reason="JOB_NOT_TERMINAL",
                                     metadata={"job_id": job_id, "state": st.name(rec.job.state)})
        return await asyncio.to_thread(self._delete_job_files, job_id)

    def _delete_job_files(self, job_id: str) -> int:
        try:
            count = self.objects.delete_job(job_id)
        except StoreError as exc:
            raise Unavailable(f"the artifact store refused the deletion: {exc}", reason="STORE_UNAVAILABLE") from None
        shutil.rmtree(self._work(job_id), ignore_errors=True)
        log.info("deleted the stored objects (%d) and working folder of job %s", count, job_id)
        return count

    async def _retention_loop(self) -> None:
        """Every hour (and at start): remove the files of jobs that ended more than artifact_retention_days ago."""
        while True:
            cutoff = self.clock() - self.settings.artifact_retention_days * 86400
            before: int | None = None
            while True:
                page = await self.store.list(states=list(st.TERMINAL), limit=200, before_seq=before)
                for rec in page:
                    if rec.job.HasField("end_time") and ts_s(rec.job.end_time) < cutoff and not rec.bookkeeping.files_expired:
                        try:
                            await asyncio.to_thread(self._delete_job_files, rec.job.job_id)
                        except CrucibleError as exc:
                            log.warning("retention: %s", exc)
                            continue
                        rec.bookkeeping.files_expired = True
                        await self.store.update(rec)
                if len(page) < 200:
                    break
                before = page[-1].seq
            await asyncio.sleep(3600)

    async def _download_remote(self, provider: Any, handle: RunHandle, path: str, offset: int
                               ) -> AsyncIterator[tuple[int, bytes, int, str]]:
        sizes = {a.path: a.size_bytes for a in await provider.list_artifacts(handle)}
        if path not in sizes:
            raise NotFound(f"artifact {path!r} not found", reason="ARTIFACT_NOT_FOUND")
        size = sizes[path]
        if offset > size:
            raise OutOfRange(f"offset {offset} is past the end of {path} ({size} bytes)", reason="OFFSET_PAST_END")
        digest, pos = hashlib.sha256(), 0
        buffered: list[tuple[int, bytes]] = []
        async for block in provider.open_artifact(handle, path, ARTIFACT_CHUNK):
            if pos + len(block) > offset:
                part = block[max(0, offset - pos):]
                digest.update(part)  # the sha256 covers the bytes sent, as for local files
                buffered.append((max(pos, offset), part))
            pos += len(block)
            while len(buffered) > 1:
                o, d = buffered.pop(0)
                yield o, d, size, ""
        if pos != size:
            raise Aborted(f"{path} changed while it was being sent", reason="ARTIFACT_CHANGED")
        o, d = buffered.pop(0) if buffered else (offset, b"")
        yield o, d, size, digest.hexdigest()

    # --- the driver --------------------------------------------------------------------------------------------

    @staticmethod
    def _current_handle(rec: JobRecord) -> RunHandle | None:
        n = len(rec.job.attempts)
        handle = rec.bookkeeping.handles.get(n)
        if handle is None or rec.job.attempts[n - 1].outcome != A.ATTEMPT_OUTCOME_IN_PROGRESS:
            return None
        return handle

    def _candidates(self, rec: JobRecord) -> list[Candidate]:
        out = []
        for c in rec.bookkeeping.candidates:
            out.append(Candidate(c.offer(), c.estimated_usd))
        return out

    def _blocked(self, rec: JobRecord, c: Candidate) -> bool:
        return rec.bookkeeping.is_blocked(c.provider, c.offer.region)

    async def _drive(self, live: _Live) -> None:
        job_id = live.rec.job.job_id
        try:
            while not st.is_terminal(live.rec.job.state):
                state = live.rec.job.state
                if state in (st.PENDING, st.RECOVERING) or (state == st.PROVISIONING and self._needs_launch(live.rec)):
                    await self._reattach_or_launch(live)
                elif state == st.CANCELLING and self._current_handle(live.rec) is None:
                    await self._cancel_unlaunched(live)
                else:
                    await self._follow_attempt(live)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: fail the job loudly instead of leaving it stuck
            log.exception("driver of job %s crashed", job_id)
            try:
                async with live.lock:
                    if not st.is_terminal(live.rec.job.state):
                        self._end_attempt(live.rec, A.ATTEMPT_OUTCOME_STOPPED, None, f"scheduler error: {exc}")
                        await self._transition(live, st.FAILED, f"scheduler error: {type(exc).__name__}: {exc}")
            except Exception:
                log.exception("could not record the failure of job %s", job_id)
        finally:
            if not self._stopping:
                self._tasks.pop(job_id, None)
                # Keep the record in memory briefly so watchers and log followers see the final state.
                asyncio.get_running_loop().call_later(60.0, self._live.pop, job_id, None)

    async def _cancel_unlaunched(self, live: _Live) -> None:
        """CANCELLING without a recorded handle (a restart during the launch): find the run, else cancel outright."""
        rec = live.rec
        if rec.job.attempts and rec.job.attempts[-1].outcome == A.ATTEMPT_OUTCOME_IN_PROGRESS:
            n, a = len(rec.job.attempts), rec.job.attempts[-1]
            provider = self.registry.load(a.provider)
            found = None
            if provider is not None:
                try:
                    found = await provider.find(self._launch_spec(rec, n, Candidate(a.offer, None), resume=n > 1))
                except ProviderError as exc:
                    log.warning("looking up attempt %d of %s failed: %s", n, rec.job.job_id, exc)
            if found is not None:
                async with live.lock:
                    self._remember_handle(rec, n, found)
                    await self._save(live)
                return  # the follow loop sends the cancel
        async with live.lock:
            self._end_attempt(rec, A.ATTEMPT_OUTCOME_STOPPED, None, rec.bookkeeping.cancel_text)
            await self._transition(live, st.CANCELLED, rec.bookkeeping.cancel_text)

    def _needs_launch(self, rec: JobRecord) -> bool:
        """PROVISIONING with no attempt in progress, or one whose handle was never recorded (crash during submit)."""
        if not rec.job.attempts:
            return True
        return self._current_handle(rec) is None

    def _launch_spec(self, rec: JobRecord, n: int, c: Candidate, resume: bool, store_env: dict[str, str] | None = None,
                     code_url: str = "", input_urls: tuple[tuple[str, str], ...] = ()) -> LaunchSpec:
        job = rec.job
        spec = job.spec
        ckpt = spec.checkpoint_dir or "checkpoints"
        env = dict(spec.env)
        env.update(store_env or {})  # CRUCIBLE_CHECKPOINT_URL, ARTIFACT_URL, scoped keys: never logged
        env.update({"CRUCIBLE_JOB_ID": job.job_id, "CRUCIBLE_ATTEMPT": str(n), "CRUCIBLE_CHECKPOINT_DIR": ckpt})
        if resume:
            env["CRUCIBLE_RESUME"] = "1"
        limit = self._max_duration(spec) - self._running_seconds(rec)
        return LaunchSpec(
            job_id=job.job_id, attempt=n, command=tuple(spec.command), env=env, offer=offer_ref(c.offer),
            work_dir=self.job_dir(job.job_id),
            # Only a job that brings code has code to ship; remote adapters refuse a code_dir they cannot upload.
            code_dir=self._work(job.job_id) if spec.WhichOneof("code") else None,
            container_image=spec.container_image or self.settings.container_image, checkpoint_dir=ckpt,
            max_duration_s=max(1.0, limit), resume=resume, log_cap_bytes=self.settings.log_cap_bytes,
            code_url=code_url, code_sha256=rec.bookkeeping.code_sha256 if code_url else "", input_urls=input_urls,
        )

    def _end_of_run(self, a: job_pb2.JobAttempt, status: RunStatus) -> float:
        """When the run ended: the provider's record (the local wrapper writes it) when it has one, else now.
        A job that ended while the scheduler was down is billed until its real end, not until the restart."""
        now = self.clock()
        if status.end_time is None:
            return now
        earliest = ts_s(a.start_time) if a.HasField("start_time") else ts_s(a.create_time)
        return max(earliest, min(float(status.end_time), now))

    def _max_duration(self, spec: job_pb2.JobSpec) -> float:
        if spec.HasField("max_duration"):
            return spec.max_duration.ToNanoseconds() / 1e9
        return self.settings.default_max_duration_s

    def _running_seconds(self, rec: JobRecord) -> float:
        total, now = 0.0, self.clock()
        for a in rec.job.attempts:
            if a.HasField("start_time"):
                end = ts_s(a.end_time) if a.HasField("end_time") else now
                total += max(0.0, end - ts_s(a.start_time))
        return total

    def _log_sizes(self, job_id: str) -> dict[str, int]:
        out = {}
        for s in STREAMS:
            try:
                out[s] = self._log_path(job_id, s).stat().st_size
            except FileNotFoundError:
                out[s] = 0
        return out

    def _end_attempt(self, rec: JobRecord, outcome: int, exit_code: int | None, reason: str) -> None:
        if not rec.job.attempts:
            return
        a = rec.job.attempts[-1]
        if a.outcome != A.ATTEMPT_OUTCOME_IN_PROGRESS:
            return
        a.outcome = outcome
        a.reason = reason[:500]
        if exit_code is not None:
            a.exit_code = exit_code
        if not a.HasField("end_time"):  # _finish sets the run's real end first (it may have ended while we were down)
            a.end_time.CopyFrom(now_ts(self.clock()))

    async def _reattach_or_launch(self, live: _Live) -> None:
        rec = live.rec
        # A crash between submit and recording the handle: ask the provider before launching again.
        if rec.job.attempts and rec.job.attempts[-1].outcome == A.ATTEMPT_OUTCOME_IN_PROGRESS:
            n = len(rec.job.attempts)
            a = rec.job.attempts[-1]
            provider = self.registry.load(a.provider)
            c = Candidate(a.offer, None)
            found = None
            if provider is not None:
                try:
                    found = await provider.find(self._launch_spec(rec, n, c, resume=n > 1))
                except ProviderError as exc:
                    log.warning("looking up attempt %d of %s failed: %s", n, rec.job.job_id, exc)
            async with live.lock:
                if found is not None:
                    self._remember_handle(rec, n, found)
                    await self._save(live)
                    return
                self._end_attempt(rec, A.ATTEMPT_OUTCOME_LAUNCH_FAILED, None,
                                  "the scheduler stopped during the launch and the provider has no run for it")
                await self._save(live)
        await self._launch(live)

    def _remember_handle(self, rec: JobRecord, n: int, handle: RunHandle) -> None:
        rec.bookkeeping.remember_handle(n, handle)
        rec.job.attempts[n - 1].provider_ref = handle.ref

    def _prepare_attempt(self, rec: JobRecord, relaunch: bool) -> None:
        """Before an attempt (in a thread): inputs staged to the store once; a relaunch gets a fresh working folder
        with only the code (the last attempt's outputs went to the store when it ended; checkpoints come back through
        CRUCIBLE_CHECKPOINT_URL), as it would on a new machine."""
        job_id, spec = rec.job.job_id, rec.job.spec
        if spec.inputs and not rec.bookkeeping.inputs_staged:
            sources = job_inputs.resolve_inputs(spec.inputs, self.settings.input_limits, self.objects)
            staged = job_inputs.stage_to_store(sources, self.objects, job_id)
            rec.bookkeeping.inputs_staged = staged
            log.info("job %s: %d input bytes staged to the store", job_id, staged)
        legacy = bool(spec.WhichOneof("code") or rec.job.code_archive_sha256) and not rec.bookkeeping.code_sha256
        if relaunch and not legacy:  # (a job created before the store kept its code relaunches in place, as it did)
            manifest = joboutputs.fresh_work(self.objects, job_id, self._work(job_id), rec.bookkeeping.code_sha256,
                                             self.settings.code_limits.max_bytes)
            (self.job_dir(job_id) / "code_manifest.json").write_text(json.dumps(manifest))
            rec.bookkeeping.inputs_local = False

    def _local_inputs(self, rec: JobRecord) -> None:
        """The staged inputs copied from the store into the local working folder (in a thread; once per folder)."""
        if rec.job.spec.inputs and not rec.bookkeeping.inputs_local:
            work = self._work(rec.job.job_id)
            self.objects.download_tree(rec.job.job_id, "inputs", work, max_bytes=self.settings.input_limits.max_bytes)
            # Inputs, like the code, are not outputs: unchanged, they are neither listed nor uploaded as artifacts.
            manifest = self._manifest(rec.job.job_id)
            manifest.update({p: v for p, v in joboutputs.code_manifest(work).items() if p not in manifest})
            (self.job_dir(rec.job.job_id) / "code_manifest.json").write_text(json.dumps(manifest))
            rec.bookkeeping.inputs_local = True

    def _remote_urls(self, rec: JobRecord) -> tuple[str, tuple[tuple[str, str], ...]]:
        """(code URL, input URLs) a rented machine can GET: presigned, short-lived; empty on a file:// store."""
        if self.objects.scheme != "s3":
            return "", ()
        job_id, ttl = rec.job.job_id, self.settings.code_url_ttl_s
        code = (self.objects.read_url(job_id, "code", joboutputs.CODE_OBJECT, ttl)
                if rec.bookkeeping.code_sha256 else "")
        objs = self.objects.list(job_id, "inputs") if rec.job.spec.inputs else []
        if len(objs) > 1000:
            raise StoreError(f"{len(objs)} input objects: remote machines fetch at most 1000 (pack them in one file)")
        return code, tuple((o.path, self.objects.read_url(job_id, "inputs", o.path, ttl)) for o in objs)

    async def _launch(self, live: _Live) -> None:
        rec = live.rec
        resume = any(a.HasField("start_time") for a in rec.job.attempts) or rec.job.state == st.RECOVERING
        failures: list[str] = []
        try:
            await asyncio.to_thread(self._prepare_attempt, rec, bool(rec.job.attempts))
            store_env = await asyncio.to_thread(self.objects.job_env, rec.job.job_id,
                                                self._max_duration(rec.job.spec) - self._running_seconds(rec))
        except (StoreError, OSError, ValueError, CrucibleError) as exc:
            async with live.lock:
                if not st.is_terminal(rec.job.state):
                    await self._transition(live, st.FAILED, f"the job's files could not be prepared: {exc}"[:1000])
            return
        for c in self._candidates(rec):
            if self._blocked(rec, c):
                continue
            async with live.lock:
                if rec.job.state not in (st.PENDING, st.RECOVERING, st.PROVISIONING):
                    return  # cancelled meanwhile
                n = len(rec.job.attempts) + 1
                rec.job.attempts.add(attempt=n, provider=c.provider, offer=c.offer, outcome=A.ATTEMPT_OUTCOME_IN_PROGRESS,
                                     create_time=now_ts(self.clock()))
                rec.bookkeeping.log_starts[n] = self._log_sizes(rec.job.job_id)
                rec.job.provider = c.provider
                rec.job.offer.CopyFrom(c.offer)
                if rec.job.state != st.PROVISIONING:
                    await self._transition(live, st.PROVISIONING, f"launching attempt {n} on {c.offer.offer_id}")
                else:
                    await self._save(live)
            provider = self.registry.load(c.provider)
            handle, error = None, None
            code_url, input_urls = "", ()
            try:
                if c.provider == "local":
                    await asyncio.to_thread(self._local_inputs, rec)
                    user = getattr(provider, "job_user", None)
                    if user is not None:
                        await asyncio.to_thread(joboutputs.lend_to_job_user, self.objects, rec.job.job_id, user.uid, user.gid)
                elif c.provider != "dryrun":
                    code_url, input_urls = await asyncio.to_thread(self._remote_urls, rec)
                    if rec.job.spec.inputs and c.provider not in FETCHES_INPUTS:
                        raise StoreError(f"{c.provider} does not stage inputs; providers that do: "
                                         f"{', '.join(sorted(FETCHES_INPUTS))} and local")
                    if rec.job.spec.inputs and not input_urls:
                        raise StoreError(f"inputs reach {c.provider} only through an s3:// store (set --artifact-store)")
            except (StoreError, OSError) as exc:
                provider, error = None, ProviderError(c.provider, K.INVALID, f"the job's files: {exc}")
            if provider is None:
                error = error or ProviderError(c.provider, K.AUTH, self.registry.error(c.provider) or "unavailable")
            else:
                spec = self._launch_spec(rec, n, c, resume, store_env, code_url, input_urls)
                for retry in range(self.settings.transient_retries + 1):
                    try:
                        handle = await provider.submit(spec)
                        error = None
                        break
                    except ProviderError as exc:
                        error = exc
                        if exc.kind not in (K.TRANSIENT, K.MALFORMED_RESPONSE) or retry == self.settings.transient_retries:
                            break
                        await asyncio.sleep(min(exc.retry_after_s or 0.5 * 2**retry, 10.0))
                    except Exception as exc:  # an adapter bug: treat like a failed launch, keep the job alive
                        log.exception("adapter %s failed to submit", c.provider)
                        error = ProviderError(c.provider, K.TRANSIENT, f"adapter error: {type(exc).__name__}: {exc}")
                        break
            async with live.lock:
                if handle is not None:
                    self._remember_handle(rec, n, handle)
                    await self._save(live)
                    if rec.job.state == st.CANCELLING:
                        live.wake.set()
                    return
                assert error is not None
                text = str(error)
                failures.append(text)
                self._end_attempt(rec, A.ATTEMPT_OUTCOME_LAUNCH_FAILED, None, text)
                if error.kind in (K.QUOTA, K.AUTH):
                    rec.bookkeeping.blocked_providers.append(c.provider)
                else:
                    rec.bookkeeping.blocked_locations.append((c.provider, c.offer.region))
                if rec.job.state == st.CANCELLING:
                    await self._transition(live, st.CANCELLED, rec.bookkeeping.cancel_text)
                    return
                if error.kind == K.INVALID:
                    await self._transition(live, st.FAILED, f"the provider rejected the job: {text}")
                    return
                await self._save(live)
                log.warning("launch of %s attempt %d failed (%s); failing over", rec.job.job_id, n, text)
        async with live.lock:
            if rec.job.state == st.CANCELLING:
                await self._transition(live, st.CANCELLED, rec.bookkeeping.cancel_text)
                return
            if st.is_terminal(rec.job.state):
                return
            detail = "; ".join(failures[-3:]) or "every offer's provider or location is blocked"
            await self._transition(live, st.FAILED, f"no offer could be launched: {detail}"[:1000])

    async def _follow_attempt(self, live: _Live) -> None:
        """Poll the current attempt until it ends, mirroring logs and recording usage."""
        rec = live.rec
        handle = self._current_handle(rec)
        assert handle is not None
        provider = self.registry.load(handle.provider)
        n = len(rec.job.attempts)
        while True:
            if provider is None:
                log.warning("job %s: provider %s is unavailable; cannot poll attempt %d", rec.job.job_id, handle.provider, n)
                status = RunStatus(RunState.UNKNOWN)
                provider = self.registry.load(handle.provider)
            else:
                if (rec.job.state == st.CANCELLING or rec.bookkeeping.stop_reason) and n not in rec.bookkeeping.cancel_sent:
                    try:
                        await provider.cancel(handle)
                        rec.bookkeeping.cancel_sent.add(n)
                    except ProviderError as exc:
                        log.warning("cancel of %s on %s failed (will retry): %s", rec.job.job_id, handle.provider, exc)
                try:
                    status = await provider.status(handle)
                except ProviderError as exc:
                    if exc.kind == K.NOT_FOUND:
                        status = RunStatus(RunState.PREEMPTED, message=f"the provider no longer knows the run: {exc}")
                    else:
                        status = RunStatus(RunState.UNKNOWN, message=str(exc))
                await self._tail_logs(live, provider, handle)
            if status.state == RunState.RUNNING and rec.job.state in (st.PROVISIONING, st.RECOVERING):
                async with live.lock:
                    if rec.job.state in (st.PROVISIONING, st.RECOVERING):
                        now = now_ts(self.clock())
                        rec.job.attempts[-1].start_time.CopyFrom(now)
                        if not rec.job.HasField("start_time"):
                            rec.job.start_time.CopyFrom(now)
                        await self._transition(live, st.RUNNING, f"attempt {n} running on {handle.provider} ({handle.ref})")
            if status.state.terminal:
                if provider is not None:
                    while await self._tail_logs(live, provider, handle):
                        pass  # the output written just before the end, however much, up to the cap
                    await self._provider_dropped(live, status)
                    await self._collect_outputs(live, provider, handle, n)
                await self._release(live, provider, handle, n)
                await self._finish(live, status)
                return
            await self._check_limits(live, final=False)
            await self._flush_progress(live, force=False)
            live.wake.clear()
            try:
                await asyncio.wait_for(live.wake.wait(), self.settings.poll_interval_s)
            except TimeoutError:
                pass

    async def _collect_outputs(self, live: _Live, provider: Any, handle: RunHandle, attempt: int) -> None:
        """Upload what the ended attempt left to the store's artifacts/ (bounded; before a remote machine is released),
        so ListArtifacts and DownloadArtifact serve it after the working folder or machine is gone."""
        rec = live.rec
        job_id = rec.job.job_id
        if attempt in rec.bookkeeping.collected:
            return
        done = rec.bookkeeping.uploaded_files()
        try:
            if handle.provider == "local":
                await asyncio.to_thread(joboutputs.reclaim_from_job_user, self.objects, job_id)
                result = await asyncio.to_thread(joboutputs.upload_outputs, self.objects, job_id, self._work(job_id),
                                                 self._manifest(job_id), done, self.settings.artifact_max_bytes)
            elif provider.capabilities.artifacts:
                result = await joboutputs.pull_remote_outputs(self.objects, job_id, provider, handle,
                                                              self.job_dir(job_id) / "pull", done,
                                                              self.settings.artifact_max_bytes, asyncio.to_thread)
            else:
                return
        except (StoreError, ProviderError, OSError, CrucibleError) as exc:
            log.warning("job %s attempt %d: outputs not uploaded to the store: %s", job_id, attempt, exc)
            rec.bookkeeping.collect_errors[attempt] = str(exc)[:500]
            return
        rec.bookkeeping.collected.add(attempt)
        if result.skipped:
            log.warning("job %s attempt %d: %d output file(s) over --artifact-max-bytes not uploaded: %s", job_id,
                        attempt, len(result.skipped), ", ".join(result.skipped[:10]))
            rec.bookkeeping.collect_skipped[attempt] = result.skipped[:100]
        log.info("job %s attempt %d: %d output file(s), %d bytes uploaded to the store", job_id, attempt,
                 result.uploaded, result.bytes)

    async def _release(self, live: _Live, provider: Any, handle: RunHandle, attempt: int) -> None:
        """Give the attempt's machine back once its run ended: VM providers (lambda, runpod, paperspace) keep billing
        a machine whose command has exited until it is terminated. cancel() is idempotent (a no-op for local runs)."""
        rec = live.rec
        if provider is None or attempt in rec.bookkeeping.released or attempt in rec.bookkeeping.cancel_sent:
            return  # already released, or already stopped by CancelJob / a limit
        for wait_s in (0.0, 1.0, 4.0):
            await asyncio.sleep(wait_s)
            try:
                await provider.cancel(handle)
            except ProviderError as exc:
                log.warning("releasing attempt %d of %s on %s failed: %s", attempt, rec.job.job_id, handle.provider, exc)
                continue
            rec.bookkeeping.released.add(attempt)
            return
        log.error("attempt %d of %s on %s could not be released; it may still be billing (ref %s)",
                  attempt, rec.job.job_id, handle.provider, handle.ref)

    async def _tail_logs(self, live: _Live, provider: Any, handle: RunHandle) -> int:
        """Mirror new output of the current attempt into the job's log files; returns the bytes read from the provider.

        Each stream keeps at most `log_cap_bytes` per job; past it a marker line is written once and further bytes
        are dropped and counted (Job.log_bytes_dropped), never silently. Until a stream is capped, the provider offset
        is derived from the mirrored file's size (crash-consistent); after, from the bookkeeping's log_read."""
        rec = live.rec
        n = len(rec.job.attempts)
        starts = rec.bookkeeping.log_starts.get(n, {"stdout": 0, "stderr": 0})
        cap = self.settings.log_cap_bytes
        total = 0
        for stream in STREAMS:
            path = self._log_path(rec.job.job_id, stream)
            read_at = rec.bookkeeping.log_read.setdefault(n, {})
            read = 0
            while read < MAX_LOG_READ_PER_POLL:
                size = await asyncio.to_thread(_size, path)
                capped = stream in rec.bookkeeping.log_capped
                offset = int(read_at[stream]) if capped and stream in read_at else size - int(starts[stream])
                try:
                    chunk = await provider.read_logs(handle, stream, offset)
                except ProviderError as exc:
                    log.debug("log read of %s failed: %s", rec.job.job_id, exc)
                    break
                if not chunk.data:
                    break
                data = chunk.data
                read_at[stream] = offset + len(data)
                keep = data if capped else data[:max(0, cap - size)]
                dropped = len(data) - len(keep)
                marker = b""
                if dropped and not capped:
                    marker = self._cap_marker(rec, stream)
                if keep or marker:
                    await asyncio.to_thread(_append, path, keep + marker)
                if dropped:
                    self._count_dropped(rec, stream, dropped)
                read += len(data)
                if keep:
                    self._feed(live, stream, keep)
            total += read
            if read:
                async with live.changed:
                    live.changed.notify_all()  # log followers
        return total

    def _cap_marker(self, rec: JobRecord, stream: str) -> bytes:
        """The one line that says a stream reached its cap (written once per stream per job)."""
        rec.bookkeeping.log_capped.add(stream)
        rec.job.logs_truncated = True
        return (f"\n[crucible] {stream} reached the per-job log cap of {self.settings.log_cap_bytes} bytes; further "
                "output is dropped and counted in Job.log_bytes_dropped\n").encode()

    def _count_dropped(self, rec: JobRecord, stream: str, n: int) -> None:
        dropped = rec.bookkeeping.log_dropped
        dropped[stream] = dropped.get(stream, 0) + n
        rec.job.log_bytes_dropped = sum(dropped.values())
        rec.job.logs_truncated = True

    async def _provider_dropped(self, live: _Live, status: RunStatus) -> None:
        """Output the provider itself dropped at the cap (the local wrapper bounds its files): counted and marked."""
        rec = live.rec
        for stream, n in (status.log_bytes_dropped or {}).items():
            if n <= 0 or stream not in STREAMS:
                continue
            if stream not in rec.bookkeeping.log_capped:
                await asyncio.to_thread(_append, self._log_path(rec.job.job_id, stream), self._cap_marker(rec, stream))
            self._count_dropped(rec, stream, int(n))

    def _feed(self, live: _Live, stream: str, data: bytes) -> None:
        buf = live.partial[stream] + data
        *lines, rest = buf.split(b"\n")
        live.partial[stream] = rest[-65536:]
        now = self.clock()
        for raw in lines:
            for part in raw.split(b"\r"):  # progress bars rewrite a line with carriage returns
                if live.tracker.feed(part.decode("utf-8", "replace"), now):
                    live.progress_dirty = True
                    self.store.note_progress(live.rec.job.job_id, line_point(
                        part.decode("utf-8", "replace"), now, live.tracker.progress, len(live.rec.job.attempts)))

    def _apply_progress(self, job: job_pb2.Job, p: Progress) -> None:
        out = job.progress
        out.Clear()
        for name in ("step", "total_steps", "epoch", "total_epochs"):
            value = getattr(p, name)
            if value is not None:
                setattr(out, name, value)
        for k, v in p.metrics.items():
            out.metrics[k] = v
        if p.eta_s is not None:
            out.eta.CopyFrom(duration_pb2.Duration(seconds=int(p.eta_s), nanos=int((p.eta_s % 1) * 1e9)))
        if p.update_time is not None:
            out.update_time.CopyFrom(now_ts(p.update_time))

    async def _flush_progress(self, live: _Live, *, force: bool) -> None:
        now = self.clock()
        if not live.progress_dirty or (not force and now - live.progress_saved_at < PROGRESS_SAVE_INTERVAL_S):
            return
        newest = await asyncio.to_thread(self._newest_checkpoint, self._work(live.rec.job.job_id),
                                         live.rec.job.spec.checkpoint_dir or "checkpoints")
        if newest is None and force:  # at the end of an attempt: the newest complete checkpoint in the store
            try:
                manifests = [o for o in await asyncio.to_thread(self.objects.list, live.rec.job.job_id, "checkpoints")
                             if o.path.endswith("/manifest.json")]
            except StoreError:
                manifests = []
            if manifests:
                newest = joboutputs.CHECKPOINTS_PREFIX + max(manifests, key=lambda o: o.path).path
        async with live.lock:
            self._apply_progress(live.rec.job, live.tracker.progress)
            if newest is not None:
                live.rec.job.latest_checkpoint = newest
            live.progress_dirty = False
            live.progress_saved_at = now
            await self._save(live)

    @staticmethod
    def _newest_checkpoint(work: Path, checkpoint_dir: str) -> str | None:
        """Newest servable file under the checkpoint directory (local working directory); runs in a thread."""
        folder = work / checkpoint_dir
        found = files.scan(folder, {}) if folder.is_dir() and not folder.is_symlink() else {}
        found = {p: v for p, v in found.items() if not p.endswith(".tmp")}
        if not found:
            return None
        newest = max(found, key=lambda p: found[p][1])
        return (folder / newest).relative_to(work).as_posix()

    async def _record_usage(self, live: _Live, final: bool) -> None:
        rec = live.rec
        if not self.pricing.known or not rec.job.attempts:
            return
        a = rec.job.attempts[-1]
        if not a.HasField("start_time") or not priced(a.offer):
            return
        start = rec.bookkeeping.usage_until.get(a.attempt, ts_s(a.start_time))
        end = ts_s(a.end_time) if a.HasField("end_time") else self.clock()
        if end <= start or (not final and end - start < self.settings.usage_interval_s):
            return
        result = await self.pricing.record(rec.job.job_id, a.offer.offer_id, rec.job.spec.budget_scope, start, end)
        if result is None:
            return
        rec.bookkeeping.usage_until[a.attempt] = end
        rec.job.cost.spent_usd = result.job_spent_usd
        rec.job.cost.update_time.CopyFrom(now_ts(self.clock()))
        spec = rec.job.spec
        if result.hard_budget_exhausted and not rec.bookkeeping.stop_reason:
            rec.bookkeeping.stop_reason = result.hard_budget_exhausted
        elif spec.HasField("max_cost_usd") and result.job_spent_usd >= spec.max_cost_usd and not rec.bookkeeping.stop_reason:
            rec.bookkeeping.stop_reason = f"max_cost_usd ${spec.max_cost_usd:.2f} reached (spent ${result.job_spent_usd:.4f})"

    async def _check_limits(self, live: _Live, final: bool) -> None:
        rec = live.rec
        before = rec.bookkeeping.stop_reason
        await self._record_usage(live, final)
        if not rec.bookkeeping.stop_reason and self._running_seconds(rec) > self._max_duration(rec.job.spec) + 5:
            rec.bookkeeping.stop_reason = f"maximum duration {self._max_duration(rec.job.spec):.0f}s reached"
        if rec.bookkeeping.stop_reason != before or final:
            async with live.lock:
                await self._save(live)
            live.wake.set()

    async def _finish(self, live: _Live, status: RunStatus) -> None:
        rec = live.rec
        job = rec.job
        n = len(job.attempts)
        spec = job.spec
        ended = self._end_of_run(job.attempts[-1], status)
        async with live.lock:
            a = job.attempts[-1]
            a.end_time.CopyFrom(now_ts(ended))
        await self._record_usage(live, final=True)
        live.progress_dirty = True
        await self._flush_progress(live, force=True)
        async with live.lock:
            exit_code = status.exit_code
            detail = status.message or (f"exit status {exit_code}" if exit_code is not None else status.state.value)
            stop_reason = rec.bookkeeping.stop_reason
            limit_hit = status.message == "time limit reached" or self._running_seconds(rec) >= self._max_duration(spec)
            a = job.attempts[-1]
            if status.state == RunState.SUCCEEDED:
                self._end_attempt(rec, A.ATTEMPT_OUTCOME_SUCCEEDED, 0, "exit status 0")
                note = "finished before the cancellation took effect; " if job.state == st.CANCELLING else ""
                await self._transition(live, st.SUCCEEDED, f"{note}attempt {n} exited with status 0")
            elif job.state == st.CANCELLING:
                self._end_attempt(rec, A.ATTEMPT_OUTCOME_STOPPED, exit_code, rec.bookkeeping.cancel_text)
                await self._transition(live, st.CANCELLED, rec.bookkeeping.cancel_text)
            elif stop_reason:
                self._end_attempt(rec, A.ATTEMPT_OUTCOME_STOPPED, exit_code, stop_reason)
                await self._transition(live, st.FAILED, f"stopped: {stop_reason}")
            elif status.state == RunState.FAILED and limit_hit:
                text = f"maximum duration {self._max_duration(spec):.0f}s reached"
                self._end_attempt(rec, A.ATTEMPT_OUTCOME_STOPPED, exit_code, text)
                await self._transition(live, st.FAILED, f"stopped: {text}")
            elif status.state == RunState.FAILED:
                self._end_attempt(rec, A.ATTEMPT_OUTCOME_USER_ERROR, exit_code, detail)
                used, limit = rec.bookkeeping.restarts_used, spec.restart_policy.max_restarts_on_errors
                if used < limit:
                    rec.bookkeeping.restarts_used = used + 1
                    await self._transition(live, st.RECOVERING, f"{detail} (restart {used + 1} of {limit})")
                else:
                    suffix = f" (restart limit {limit} reached)" if limit else ""
                    await self._transition(live, st.FAILED, f"attempt {n}: {detail}{suffix}")
            else:  # PREEMPTED, or CANCELLED by the provider on its own
                lost = not a.offer.spot or status.state == RunState.CANCELLED
                outcome = A.ATTEMPT_OUTCOME_LOST if lost else A.ATTEMPT_OUTCOME_PREEMPTED
                what = (f"lost by {a.provider}" if lost else f"preempted by {a.provider}") + (f": {detail}" if detail else "")
                self._end_attempt(rec, outcome, exit_code, what)
                recover = (not spec.restart_policy.HasField("recover_on_preemption")
                           or spec.restart_policy.recover_on_preemption)
                recoveries = rec.bookkeeping.recoveries
                if recover and recoveries < self.settings.max_recoveries:
                    rec.bookkeeping.recoveries = recoveries + 1
                    await self._transition(live, st.RECOVERING, f"{what}; relaunching to resume from the latest checkpoint")
                else:
                    why = "recovery disabled" if not recover else f"{recoveries} recoveries already"
                    await self._transition(live, st.FAILED, f"{what} ({why})")
