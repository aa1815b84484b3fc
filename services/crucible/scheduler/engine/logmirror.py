"""Log mirroring: each attempt's stdout and stderr copied from its provider into the job's `logs/` files (bounded by
the per-job cap, with a marker line and a count of what was dropped), and read back for StreamJobLogs.

Attempt boundaries are byte offsets in the bookkeeping (`log_starts`), which is how offsets span attempts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from crucible.scheduler.domain import states
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.engine.progress_recorder import ProgressRecorder
from crucible.scheduler.persistence.records import STREAMS, JobRecord
from crucible.scheduler.providers.base import Provider, ProviderError, RunHandle, RunStatus

log = logging.getLogger(__name__)

#: Largest piece of a log sent in one StreamJobLogs message.
LOG_CHUNK = 64 * 1024
#: Bytes read from a provider per stream per poll (the rest comes on the next poll).
MAX_LOG_READ_PER_POLL = 16 << 20

#: One StreamJobLogs message: (stream, attempt, offset, next offset, text).
LogChunk = tuple[str, int, int, int, str]


def utf8_cut(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    size = len(data)
    for back in range(1, min(4, size) + 1):
        byte = data[size - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        return size if back >= need else size - back
    return size


def file_size(path: Path) -> int:
    """Size of a file, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_at(path: Path, offset: int, size: int) -> bytes:
    """Up to `size` bytes of a file from `offset` (nothing before it is read)."""
    with open(path, "rb") as handle:
        return os.pread(handle.fileno(), size, offset)


def append(path: Path, data: bytes) -> None:
    """Append bytes to a file."""
    with open(path, "ab") as handle:
        handle.write(data)


def attempt_at(rec: JobRecord, stream: str, offset: int) -> tuple[int, int | None]:
    """(attempt that wrote byte `offset` of a mirrored log, start offset of the next attempt or None)."""
    starts = sorted(
        ((attempt, int(sizes[stream])) for attempt, sizes in rec.bookkeeping.log_starts.items()), key=lambda item: item[1]
    )
    attempt, next_start = (starts[0][0] if starts else 1), None
    for index, (candidate, start) in enumerate(starts):
        if start <= offset:
            attempt = candidate
            next_start = None
            for _later, later_start in starts[index + 1 :]:
                if later_start > start:
                    next_start = later_start
                    break
    return attempt, next_start


class LogMirror:
    """Copies new output of a job's current attempt into its log files, and reads those files back."""

    def __init__(self, ctx: SchedulerContext, progress: ProgressRecorder) -> None:
        self.settings = ctx.settings
        self.folders = ctx.folders
        self.progress = progress

    async def tail(self, live: LiveJob, provider: Provider, handle: RunHandle) -> int:
        """Mirror new output of the current attempt into the job's log files; returns the bytes read from the provider.

        Each stream keeps at most `log_cap_bytes` per job; past it a marker line is written once and further bytes
        are dropped and counted (Job.log_bytes_dropped), never silently. Until a stream is capped, the provider offset
        is derived from the mirrored file's size (crash-consistent); after, from the bookkeeping's log_read."""
        rec, book = live.rec, live.book
        attempt = len(rec.job.attempts)
        starts = book.log_starts.get(attempt, {"stdout": 0, "stderr": 0})
        cap = self.settings.log_cap_bytes
        total = 0
        for stream in STREAMS:
            path = self.folders.log_path(rec.job.job_id, stream)
            read_offsets = book.log_read.setdefault(attempt, {})
            read = 0
            while read < MAX_LOG_READ_PER_POLL:
                size = await asyncio.to_thread(file_size, path)
                capped = stream in book.log_capped
                offset = int(read_offsets[stream]) if capped and stream in read_offsets else size - int(starts[stream])
                try:
                    chunk = await provider.read_logs(handle, stream, offset)
                except ProviderError as exc:
                    log.debug("log read of %s failed: %s", rec.job.job_id, exc)
                    break
                if not chunk.data:
                    break
                data = chunk.data
                read_offsets[stream] = offset + len(data)
                keep = data if capped else data[: max(0, cap - size)]
                dropped = len(data) - len(keep)
                marker = b""
                if dropped and not capped:
                    marker = self._cap_marker(rec, stream)
                if keep or marker:
                    await asyncio.to_thread(append, path, keep + marker)
                if dropped:
                    self._count_dropped(rec, stream, dropped)
                read += len(data)
                if keep:
                    self.progress.feed(live, stream, keep)
            total += read
            if read:
                async with live.changed:
                    live.changed.notify_all()  # log followers
        return total

    def _cap_marker(self, rec: JobRecord, stream: str) -> bytes:
        """The one line that says a stream reached its cap (written once per stream per job)."""
        rec.bookkeeping.log_capped.add(stream)
        rec.job.logs_truncated = True
        return (
            f"\n[crucible] {stream} reached the per-job log cap of {self.settings.log_cap_bytes} bytes; further "
            "output is dropped and counted in Job.log_bytes_dropped\n"
        ).encode()

    @staticmethod
    def _count_dropped(rec: JobRecord, stream: str, count: int) -> None:
        dropped = rec.bookkeeping.log_dropped
        dropped[stream] = dropped.get(stream, 0) + count
        rec.job.log_bytes_dropped = sum(dropped.values())
        rec.job.logs_truncated = True

    async def provider_dropped(self, live: LiveJob, status: RunStatus) -> None:
        """Output the provider itself dropped at the cap (the local wrapper bounds its files): counted and marked."""
        rec = live.rec
        for stream, count in (status.log_bytes_dropped or {}).items():
            if count <= 0 or stream not in STREAMS:
                continue
            if stream not in rec.bookkeeping.log_capped:
                await asyncio.to_thread(append, self.folders.log_path(rec.job.job_id, stream), self._cap_marker(rec, stream))
            self._count_dropped(rec, stream, int(count))

    async def read(
        self,
        rec: JobRecord,
        streams: list[str],
        offsets: dict[str, int],
        follow: bool,
        live_record: Callable[[], JobRecord | None],
        wait_change: Callable[[float], Awaitable[None]],
    ) -> AsyncIterator[LogChunk]:
        """StreamJobLogs: chunks of the mirrored log files from `offsets`; with `follow`, until the job has ended and
        everything was sent. A chunk never spans two attempts and never ends inside a UTF-8 character (until the end).
        `live_record` gives the job's in-memory record while it is driven; `wait_change` waits for new output."""
        job_id = rec.job.job_id
        positions = dict(offsets)
        while True:
            rec = live_record() or rec
            terminal = states.is_terminal(rec.job.state)
            sent = False
            for stream in streams:
                path = self.folders.log_path(job_id, stream)
                size = await asyncio.to_thread(file_size, path)
                while positions[stream] < size:
                    position = positions[stream]
                    attempt, next_start = attempt_at(rec, stream, position)
                    end = min(size, position + LOG_CHUNK, next_start if next_start is not None else size)
                    data = await asyncio.to_thread(read_at, path, position, end - position)
                    cut = utf8_cut(data)
                    if cut < len(data) and not (end == next_start or (end == size and terminal)):
                        if cut == 0:
                            break  # an incomplete character at the end: wait for its remaining bytes
                        data = data[:cut]
                    yield stream, attempt, position, position + len(data), data.decode("utf-8", "replace")
                    positions[stream] += len(data)
                    sent = True
            if not follow or (terminal and not sent):
                return
            if not sent:
                await wait_change(0.25)
