"""Progress and metrics of a running job: parsed from its log lines, kept on the Job (step, totals, metrics, ETA,
latest checkpoint) at most once a second, and folded into at most one point per second of the job's progress history.

Line formats and the ETA live in `core/progress.py` (pure); this module applies them to a live job.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from crucible.scheduler.domain import history
from crucible.scheduler.domain.history import PointWindow, report_point
from crucible.scheduler.domain.record import apply_progress
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.lifecycle import JobLifecycle
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.objects import nofollow, transfer
from crucible.scheduler.objects.objectstore import StoreError

#: Progress is persisted (and streamed to watchers) at most this often.
PROGRESS_SAVE_INTERVAL_S = 1.0
#: The end of an unfinished line kept per stream until its newline arrives.
MAX_PARTIAL_LINE_BYTES = 65536


def newest_checkpoint(work: Path, checkpoint_dir: str) -> str | None:
    """Newest servable file under the checkpoint directory (local working directory); runs in a thread. The folder is
    reached one component at a time without following a link, and links inside it are left out (nofollow.py)."""
    try:
        root = nofollow.open_dir(work)
    except (OSError, nofollow.UnsafePath):
        return None
    try:
        folder = nofollow.open_dirs(root, [part for part in checkpoint_dir.split("/") if part not in ("", ".")])
    except (OSError, nofollow.UnsafePath):
        return None
    finally:
        os.close(root)
    try:
        found = {rel: st.st_mtime for rel, st in nofollow.files(folder) if not rel.endswith(".tmp")}
    finally:
        os.close(folder)
    if not found:
        return None
    newest = max(found, key=lambda path: found[path])
    return (Path(checkpoint_dir) / newest).as_posix()


class ProgressRecorder:
    """Feeds a job's output to its progress tracker and saves the progress (throttled)."""

    def __init__(self, ctx: SchedulerContext, lifecycle: JobLifecycle) -> None:
        self.store = ctx.store
        self.objects = ctx.objects
        self.folders = ctx.folders
        self.lifecycle = lifecycle
        self.clock = ctx.clock
        self._windows: dict[str, PointWindow] = {}  # per job: the history point of the current second

    def _note(self, live: LiveJob, point: history.ProgressPoint | None) -> None:
        if point is not None:
            self.store.note_progress(live.job.job_id, point)

    def feed(self, live: LiveJob, stream: str, data: bytes) -> None:
        """Parse the complete lines of newly mirrored output; each progress line becomes a history point."""
        buffered = live.partial[stream] + data
        *lines, rest = buffered.split(b"\n")
        live.partial[stream] = rest[-MAX_PARTIAL_LINE_BYTES:]
        now = self.clock()
        for raw in lines:
            for part in raw.split(b"\r"):  # progress bars rewrite a line with carriage returns
                text = part.decode("utf-8", "replace")
                if live.tracker.feed(text, now):
                    live.progress_dirty = True
                    point = report_point(live.tracker.line, now, live.tracker.progress, len(live.job.attempts))
                    if point is not None:
                        window = self._windows.setdefault(live.job.job_id, PointWindow())
                        self._note(live, window.add(point))

    async def flush(self, live: LiveJob, *, force: bool) -> None:
        """Save new progress and the latest checkpoint (at most once per PROGRESS_SAVE_INTERVAL_S unless forced; at
        the end of an attempt the newest complete checkpoint in the store counts too)."""
        now = self.clock()
        window = self._windows.pop(live.job.job_id, None) if force else self._windows.get(live.job.job_id)
        if window is not None and (point := window.due(now, force=force)) is not None:
            self._note(live, point)  # committed with the next save
            live.progress_dirty = True
        if not live.progress_dirty or (not force and now - live.progress_saved_at < PROGRESS_SAVE_INTERVAL_S):
            return
        job = live.job
        newest = await asyncio.to_thread(
            newest_checkpoint, self.folders.work(job.job_id), job.spec.checkpoint_dir or "checkpoints"
        )
        if newest is None and force:
            try:
                manifests = [
                    stored
                    for stored in await asyncio.to_thread(self.objects.list, job.job_id, "checkpoints")
                    if stored.path.endswith("/manifest.json")
                ]
            except StoreError:
                manifests = []
            if manifests:
                newest = transfer.CHECKPOINTS_PREFIX + max(manifests, key=lambda stored: stored.path).path
        async with live.lock:
            apply_progress(job, live.tracker.progress)
            if newest is not None:
                job.latest_checkpoint = newest
            live.progress_dirty = False
            live.progress_saved_at = now
            await self.lifecycle.save(live)
