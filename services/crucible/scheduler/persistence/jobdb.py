"""Durable job store on SQLite in WAL mode: one row per job holding the Job message (the engine's `domain.record.Job`,
converted by `convert.py`) and the engine's bookkeeping (`records.JobBookkeeping`, JSON in the `meta` column).

Every write is one committed transaction (synchronous=FULL by default) made before the caller acknowledges anything.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import concurrent.futures
import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.sqlite import SYNCHRONOUS_LEVELS, open_database
from crucible.scheduler import convert
from crucible.scheduler.domain import history
from crucible.scheduler.domain.history import MAX_POINTS, ProgressPoint
from crucible.scheduler.domain.record import unix_s
from crucible.scheduler.persistence.records import JobBookkeeping, JobRecord

log = logging.getLogger(__name__)

#: Progress points kept in memory per job between two saves of the job (points come at most once a second, saves
#: about as often).
MAX_PENDING_PROGRESS = 1_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    request_id TEXT UNIQUE,
    spec_sha256 TEXT NOT NULL,
    state INTEGER NOT NULL,
    provider TEXT NOT NULL DEFAULT '',
    budget_scope TEXT NOT NULL DEFAULT '',
    create_time REAL NOT NULL,
    job BLOB NOT NULL,
    meta TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS job_progress (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    total_steps INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    time REAL NOT NULL,
    attempt INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS job_progress_job ON job_progress(job_id, seq);
CREATE INDEX IF NOT EXISTS job_progress_step ON job_progress(job_id, step);
"""


class JobStore:
    """Synchronous SQLite access; use AsyncJobStore from the event loop."""

    def __init__(self, path: Path, *, synchronous: str = "FULL", max_progress_points: int = MAX_POINTS) -> None:
        self.path = path
        self.max_progress_points = max(16, max_progress_points)
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}, not {synchronous!r}")
        # The one opener of every service: an empty or corrupt file refuses the start (issue 12), WAL, the sync level.
        self._db = open_database(
            path,
            field="state_dir",
            what="scheduler job store",
            schema=SCHEMA,
            synchronous="FULL" if synchronous == "FULL" else "NORMAL",
            busy_timeout_s=30,
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        with self._lock:
            self._db.close()

    def _row(self, rec: JobRecord) -> tuple[Any, ...]:
        j = rec.job
        return (
            j.job_id,
            rec.request_id or None,
            rec.spec_sha256,
            j.state,
            j.provider,
            j.spec.budget_scope,
            unix_s(j.create_time or 0),
            convert.job_message(j).SerializeToString(),
            _meta_json(rec),
        )

    def insert(self, rec: JobRecord) -> JobRecord:
        """Store a new job; raises sqlite3.IntegrityError when its id or request id is taken."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs(job_id, request_id, spec_sha256, state, provider, budget_scope, create_time, job, meta)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                self._row(rec),
            )
            rec.seq = int(cur.lastrowid or 0)
        return rec

    def write_batch(self, ops: list[tuple[str, JobRecord]]) -> list[Any]:
        """Apply inserts/updates in ONE committed transaction (group commit); each op's result or exception, in order.

        An op that fails (a taken request id) is rolled back alone through a savepoint; the others still commit.
        """
        results: list[Any] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for op, rec in ops:
                    self._db.execute("SAVEPOINT op")
                    try:
                        if op == "insert":
                            cur = self._db.execute(
                                "INSERT INTO jobs(job_id, request_id, spec_sha256, state, provider, budget_scope, create_time,"
                                " job, meta) VALUES (?,?,?,?,?,?,?,?,?)",
                                self._row(rec),
                            )
                            rec.seq = int(cur.lastrowid or 0)
                            results.append(rec)
                        else:
                            j = rec.job
                            self._db.execute(
                                "UPDATE jobs SET state=?, provider=?, job=?, meta=? WHERE job_id=?",
                                (j.state, j.provider, convert.job_message(j).SerializeToString(), _meta_json(rec), j.job_id),
                            )
                            results.append(None)
                        self._db.execute("RELEASE op")
                    except sqlite3.IntegrityError as exc:
                        self._db.execute("ROLLBACK TO op")
                        self._db.execute("RELEASE op")
                        results.append(exc)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return results

    def update(self, rec: JobRecord) -> None:
        """Overwrite a job's row in one transaction."""
        j = rec.job
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state=?, provider=?, job=?, meta=? WHERE job_id=?",
                (j.state, j.provider, convert.job_message(j).SerializeToString(), _meta_json(rec), j.job_id),
            )

    @staticmethod
    def _decode(row: Sequence[Any]) -> JobRecord:
        seq, request_id, sha, blob, meta = row
        job = job_pb2.Job()
        job.ParseFromString(blob)
        return JobRecord(convert.job(job), sha, request_id or "", JobBookkeeping.from_json(json.loads(meta)), seq)

    _COLS = "seq, request_id, spec_sha256, job, meta"

    def get(self, job_id: str) -> JobRecord | None:
        """One job by id, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLS} FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        return self._decode(row) if row else None

    def by_request_id(self, request_id: str) -> JobRecord | None:
        """The job created with this idempotency key, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLS} FROM jobs WHERE request_id=?", (request_id,)).fetchone()
        return self._decode(row) if row else None

    def list(
        self,
        *,
        states: Sequence[int] = (),
        providers: Sequence[str] = (),
        budget_scope: str = "",
        limit: int = 50,
        before_seq: int | None = None,
        max_bytes: int | None = None,
    ) -> list[JobRecord]:
        """Jobs newest first matching every filter, at most `limit`, with seq < before_seq when given. With
        `max_bytes`, reading stops at the first job after the first whose stored record takes the total past it (that
        job is returned too, so the caller knows a next page exists): a page never decodes much more than it sends."""
        where: list[str] = []
        args: list[int | str] = []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if providers:
            where.append(f"provider IN ({','.join('?' * len(providers))})")
            args.extend(providers)
        if budget_scope:
            where.append("budget_scope = ?")
            args.append(budget_scope)
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        sql = f"SELECT {self._COLS} FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            if max_bytes is None:
                rows = self._db.execute(sql, (*args, limit)).fetchall()
            else:
                rows, total = [], 0
                for row in self._db.execute(sql, (*args, limit)):
                    rows.append(row)
                    total += len(row[3])  # the serialized Job
                    if total > max_bytes and len(rows) > 1:
                        break
        return [self._decode(r) for r in rows]

    def unfinished(self, terminal: Sequence[int]) -> builtins.list[JobRecord]:
        """Every job not in a terminal state, oldest first (what a restart must reconcile)."""
        sql = f"SELECT {self._COLS} FROM jobs WHERE state NOT IN ({','.join('?' * len(terminal))}) ORDER BY seq"
        with self._lock:
            rows = self._db.execute(sql, tuple(terminal)).fetchall()
        return [self._decode(r) for r in rows]

    def add_progress(self, job_id: str, points: Sequence[ProgressPoint]) -> None:
        """Add progress points of a job in one committed transaction, one point per step: a step already stored is
        replaced (its metrics merged when the same attempt reports it again; a later attempt's redone step replaces
        the earlier measurement). Past `max_progress_points` the older points are thinned (history.MAX_POINTS)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for p in points:
                    metrics = p.metrics
                    old = self._db.execute(
                        "SELECT attempt, metrics FROM job_progress WHERE job_id=? AND step=? ORDER BY seq DESC LIMIT 1",
                        (job_id, p.step),
                    ).fetchone()
                    if old is not None:
                        if old[0] == p.attempt:
                            merged = history.merge(ProgressPoint(p.step, 0, json.loads(old[1]), 0.0, p.attempt), p)
                            metrics = merged.metrics
                        self._db.execute("DELETE FROM job_progress WHERE job_id=? AND step=?", (job_id, p.step))
                    self._db.execute(
                        "INSERT INTO job_progress(job_id, step, total_steps, metrics, time, attempt) VALUES (?,?,?,?,?,?)",
                        (job_id, p.step, p.total_steps, json.dumps(metrics, separators=(",", ":")), p.time, p.attempt),
                    )
                count = int(self._db.execute("SELECT COUNT(*) FROM job_progress WHERE job_id=?", (job_id,)).fetchone()[0])
                if count > self.max_progress_points:
                    self._thin_progress(job_id)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _thin_progress(self, job_id: str) -> None:
        """Thin a job's history to about 3/4 of the cap (inside add_progress's transaction): the newest quarter of the
        cap stays whole; of the older points one per equal step range is kept (the whole run stays covered evenly, at
        a coarser grain), and the first, the last and each metric's lowest and highest value always stay."""
        rows = self._db.execute("SELECT seq, step, metrics FROM job_progress WHERE job_id=? ORDER BY seq", (job_id,)).fetchall()
        cap = self.max_progress_points
        recent = {seq for seq, _step, _m in rows[len(rows) - cap // 4 :]}
        by_step = sorted(rows, key=lambda row: row[1])
        keep = {by_step[0][0], by_step[-1][0], rows[-1][0]} | recent
        lowest: dict[str, tuple[float, int]] = {}
        highest: dict[str, tuple[float, int]] = {}
        for seq, _step, text in rows:
            for name, value in json.loads(text).items():
                if name not in lowest or value < lowest[name][0]:
                    lowest[name] = (value, seq)
                if name not in highest or value > highest[name][0]:
                    highest[name] = (value, seq)
        keep.update(seq for _v, seq in lowest.values())
        keep.update(seq for _v, seq in highest.values())
        buckets = max(1, cap // 2)
        first, span = by_step[0][1], by_step[-1][1] - by_step[0][1] + 1
        taken: set[int] = set()
        drop = []
        for seq, step, _m in by_step:
            if seq in keep:
                continue
            bucket = (step - first) * buckets // span
            if bucket in taken:
                drop.append(seq)
            else:
                taken.add(bucket)
        for start in range(0, len(drop), 500):
            chunk = drop[start : start + 500]
            self._db.execute(f"DELETE FROM job_progress WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
        log.info("job %s: progress history thinned from %d to %d points", job_id, len(rows), len(rows) - len(drop))

    def list_progress(self, job_id: str, *, after_seq: int = 0, limit: int = 500) -> builtins.list[tuple[int, ProgressPoint]]:
        """Up to `limit` points of a job stored after `after_seq`, oldest first, each with its sequence number."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, step, total_steps, metrics, time, attempt FROM job_progress WHERE job_id=? AND seq>?"
                " ORDER BY seq LIMIT ?",
                (job_id, after_seq, limit),
            ).fetchall()
        return [
            (seq, ProgressPoint(step, total, json.loads(metrics), t, attempt)) for seq, step, total, metrics, t, attempt in rows
        ]

    def delete(self, job_id: str) -> bool:
        """Remove a job's row and its progress history in one committed transaction; False when there was no row."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM job_progress WHERE job_id=?", (job_id,))
                removed = self._db.execute("DELETE FROM jobs WHERE job_id=?", (job_id,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return bool(removed)

    def count(self) -> int:
        """Number of stored jobs."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


class AsyncJobStore:
    """JobStore behind one worker thread, so commits (fsync) never block the event loop and stay in order.

    Writes are group-committed: those queued while a commit is in flight go together in the next transaction, so each
    caller still returns only after its write is durable, but concurrent writers share one fsync.
    """

    def __init__(self, store: JobStore) -> None:
        self.sync = store
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-store")
        self._queue: list[tuple[str, JobRecord, asyncio.Future[Any]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None  # held so the running flush is not garbage-collected
        self._progress: dict[str, list[ProgressPoint]] = {}  # points parsed since the job's last save

    async def _write(self, op: str, rec: JobRecord) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((op, rec, fut))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await loop.run_in_executor(self._pool, self.sync.write_batch, [(o, r) for o, r, _ in batch])
                except BaseException as exc:  # the whole transaction failed: every writer hears about it
                    for _o, _r, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("store closed"))
                    continue
                for (_o, _r, fut), result in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, Exception):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
        finally:
            self._flushing = False

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def insert(self, rec: JobRecord) -> JobRecord:
        """See JobStore.insert; returns once committed."""
        stored = await self._write("insert", rec)
        return stored

    async def update(self, rec: JobRecord) -> None:
        """See JobStore.update; the record is copied when called and the call returns once it is committed."""
        snapshot = JobRecord(rec.job.copy(), rec.spec_sha256, rec.request_id, rec.bookkeeping.copy(), rec.seq)
        await self._write("update", snapshot)
        await self._save_progress(rec.job.job_id)

    async def get(self, job_id: str) -> JobRecord | None:
        """See JobStore.get."""
        return await self._run(self.sync.get, job_id)

    async def by_request_id(self, request_id: str) -> JobRecord | None:
        """See JobStore.by_request_id."""
        return await self._run(self.sync.by_request_id, request_id)

    async def list(self, **kwargs: Any) -> list[JobRecord]:
        """See JobStore.list."""
        return await self._run(self.sync.list, **kwargs)

    async def unfinished(self, terminal: Sequence[int]) -> builtins.list[JobRecord]:
        """See JobStore.unfinished."""
        return await self._run(self.sync.unfinished, terminal)

    def note_progress(self, job_id: str, point: ProgressPoint | None) -> None:
        """Queue a progress point; it is committed right after the job's next update (so it is as durable as the
        job's latest progress). At most MAX_PENDING_PROGRESS wait per job; past that the oldest go, with a warning."""
        if point is None:
            return
        pending = self._progress.setdefault(job_id, [])
        pending.append(point)
        if len(pending) > MAX_PENDING_PROGRESS:
            del pending[: len(pending) - MAX_PENDING_PROGRESS]
            log.warning(
                "job %s: more than %d progress points between saves; the oldest were not kept", job_id, MAX_PENDING_PROGRESS
            )

    async def _save_progress(self, job_id: str) -> None:
        points = self._progress.pop(job_id, None)
        if points:
            await self._run(self.sync.add_progress, job_id, points)

    async def list_progress(
        self, job_id: str, *, after_seq: int = 0, limit: int = 500
    ) -> builtins.list[tuple[int, ProgressPoint]]:
        """See JobStore.list_progress."""
        return await self._run(self.sync.list_progress, job_id, after_seq=after_seq, limit=limit)

    async def delete(self, job_id: str) -> bool:
        """See JobStore.delete; progress points still waiting for the job's next save are dropped too."""
        self._progress.pop(job_id, None)
        return bool(await self._run(self.sync.delete, job_id))

    async def close(self) -> None:
        """Finish pending writes and close."""
        await self._run(self.sync.close)
        self._pool.shutdown(wait=True)


def _meta_json(rec: JobRecord) -> str:
    """The `meta` column of a record: its bookkeeping as compact JSON."""
    return json.dumps(rec.bookkeeping.to_json(), separators=(",", ":"))


def encode_page_token(seq: int) -> str:
    """Opaque page token for ListJobs."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def decode_page_token(token: str) -> int | None:
    """The seq in a page token, or None when it is malformed."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        kind, _, value = text.partition(":")
        return int(value) if kind == "seq" and int(value) > 0 else None
    except (ValueError, UnicodeDecodeError):
        return None


def encode_progress_token(seq: int) -> str:
    """Opaque ListJobProgress page token: the last point sent."""
    return base64.urlsafe_b64encode(f"progress:{seq}".encode()).decode()


def decode_progress_token(token: str) -> int | None:
    """The sequence number in a ListJobProgress page token, or None when it is malformed."""
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        return int(value) if kind == "progress" and int(value) >= 0 else None
    except (ValueError, UnicodeDecodeError):
        return None
