"""A job being driven, in memory: its record, lock, change notification, progress tracker and log line buffers.

One `LiveJob` per unfinished job (and for a minute after it ends), shared by the parts of the engine.
"""

from __future__ import annotations

import asyncio

from crucible.scheduler.domain.job import Offer
from crucible.scheduler.domain.progress import ProgressTracker
from crucible.scheduler.domain.record import Job, read_progress
from crucible.scheduler.persistence.records import STREAMS, JobBookkeeping, JobRecord
from crucible.scheduler.providers.base import RunHandle, RunStatus


class LiveJob:
    """A job being driven, in memory: its record, lock, change notification, progress tracker and log line buffers."""

    def __init__(self, rec: JobRecord) -> None:
        self.rec = rec  # shared with every part of the engine; saved by the lifecycle
        self.lock = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.version = 0
        self.wake = asyncio.Event()
        self.tracker = ProgressTracker()
        self.partial: dict[str, bytes] = dict.fromkeys(STREAMS, b"")
        self.progress_saved_at = 0.0
        self.progress_dirty = False
        self.files_ready = False  # the job's files are prepared for the next launch (decide.PrepareFiles)
        self.store_env: dict[str, str] = {}  # store URLs and scoped keys of the next launch (never logged)
        self.new_handle: RunHandle | None = None  # a run handle just returned by a provider, until recorded
        self.ended_status: RunStatus | None = None  # how the attempt's run ended, until the attempt is closed
        read_progress(rec.job, self.tracker.progress)

    def candidate_offers(self) -> list[Offer]:
        """The job's candidate offers, in launch order (they do not change after CreateJob)."""
        return [stored.offer for stored in self.rec.bookkeeping.candidates]

    @property
    def job(self) -> Job:
        """The job's record (changed in place)."""
        return self.rec.job

    @property
    def book(self) -> JobBookkeeping:
        """The job's bookkeeping."""
        return self.rec.bookkeeping
