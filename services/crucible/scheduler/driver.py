"""The driving loop of one job (one asyncio task per unfinished job): launch or re-attach, follow the attempt while
it runs (cancel requests and limits, logs, progress, usage), and when its run ends collect its outputs, give its
machine back and let the lifecycle decide what comes next, until the job is terminal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from crucible.runtime.convert import timestamp_from_unix
from crucible.scheduler.core import states
from crucible.scheduler.engine_settings import EngineSettings
from crucible.scheduler.job_artifacts import JobArtifacts
from crucible.scheduler.jobstate import LiveJob
from crucible.scheduler.launching import JobLauncher
from crucible.scheduler.lifecycle import JobLifecycle, Outcome, current_handle
from crucible.scheduler.logmirror import LogMirror
from crucible.scheduler.progress_recorder import ProgressRecorder
from crucible.scheduler.providers.base import Provider, ProviderError, ProviderErrorKind, RunHandle, RunState, RunStatus
from crucible.scheduler.providers.registry import ProviderRegistry
from crucible.scheduler.usage_limits import UsageAndLimits

log = logging.getLogger(__name__)

#: Waits before each try to give back an ended attempt's machine.
RELEASE_WAITS_S = (0.0, 1.0, 4.0)


class JobDriver:
    """Drives jobs through their states; `drive()` is the body of each job's task."""

    def __init__(
        self,
        settings: EngineSettings,
        registry: ProviderRegistry,
        lifecycle: JobLifecycle,
        launcher: JobLauncher,
        logs: LogMirror,
        progress: ProgressRecorder,
        artifacts: JobArtifacts,
        limits: UsageAndLimits,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = registry
        self.lifecycle = lifecycle
        self.launcher = launcher
        self.logs = logs
        self.progress = progress
        self.artifacts = artifacts
        self.limits = limits

    async def drive(self, live: LiveJob) -> None:
        """Run the job to a terminal state; a crash of this loop (a bug) fails the job instead of leaving it stuck."""
        job_id = live.job.job_id
        try:
            while not states.is_terminal(live.job.state):
                state = live.job.state
                unlaunched = current_handle(live.rec) is None
                if state in (states.PENDING, states.RECOVERING) or (state == states.PROVISIONING and unlaunched):
                    await self.launcher.reattach_or_launch(live)
                elif state == states.CANCELLING and unlaunched:
                    await self.launcher.cancel_unlaunched(live)
                else:
                    await self._follow_attempt(live)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("driver of job %s crashed", job_id)
            try:
                async with live.lock:
                    if not states.is_terminal(live.job.state):
                        self.lifecycle.end_attempt(live.rec, Outcome.ATTEMPT_OUTCOME_STOPPED, None, f"scheduler error: {exc}")
                        await self.lifecycle.transition(live, states.FAILED, f"scheduler error: {type(exc).__name__}: {exc}")
            except Exception:
                log.exception("could not record the failure of job %s", job_id)

    async def _poll(self, live: LiveJob, provider: Provider, handle: RunHandle, attempt: int) -> RunStatus:
        """One poll of the run: a pending cancel (or limit stop) sent first, then its status and new output."""
        book = live.book
        if (live.job.state == states.CANCELLING or book.stop_reason) and attempt not in book.cancel_sent:
            try:
                await provider.cancel(handle)
                book.cancel_sent.add(attempt)
            except ProviderError as exc:
                log.warning("cancel of %s on %s failed (will retry): %s", live.job.job_id, handle.provider, exc)
        try:
            status = await provider.status(handle)
        except ProviderError as exc:
            if exc.kind == ProviderErrorKind.NOT_FOUND:
                status = RunStatus(RunState.PREEMPTED, message=f"the provider no longer knows the run: {exc}")
            else:
                status = RunStatus(RunState.UNKNOWN, message=str(exc))
        await self.logs.tail(live, provider, handle)
        return status

    async def _follow_attempt(self, live: LiveJob) -> None:
        """Poll the current attempt until it ends, mirroring logs and recording usage."""
        rec = live.rec
        handle = current_handle(rec)
        if handle is None:
            raise RuntimeError(f"job {rec.job.job_id} has no run to follow")
        provider = self.registry.load(handle.provider)
        attempt = len(rec.job.attempts)
        while True:
            if provider is None:
                log.warning(
                    "job %s: provider %s is unavailable; cannot poll attempt %d", rec.job.job_id, handle.provider, attempt
                )
                status = RunStatus(RunState.UNKNOWN)
                provider = self.registry.load(handle.provider)
            else:
                status = await self._poll(live, provider, handle, attempt)
            if status.state == RunState.RUNNING and rec.job.state in (states.PROVISIONING, states.RECOVERING):
                async with live.lock:
                    if rec.job.state in (states.PROVISIONING, states.RECOVERING):
                        now = timestamp_from_unix(self.clock())
                        rec.job.attempts[-1].start_time.CopyFrom(now)
                        if not rec.job.HasField("start_time"):
                            rec.job.start_time.CopyFrom(now)
                        await self.lifecycle.transition(
                            live, states.RUNNING, f"attempt {attempt} running on {handle.provider} ({handle.ref})"
                        )
            if status.state.terminal:
                if provider is not None:
                    while await self.logs.tail(live, provider, handle):
                        pass  # the output written just before the end, however much, up to the cap
                    await self.logs.provider_dropped(live, status)
                    await self.artifacts.collect(live, provider, handle, attempt)
                await self._release(live, provider, handle, attempt)
                await self._finish(live, status)
                return
            await self.limits.check_limits(live, final=False)
            await self.progress.flush(live, force=False)
            live.wake.clear()
            try:
                await asyncio.wait_for(live.wake.wait(), self.settings.poll_interval_s)
            except TimeoutError:
                pass

    async def _release(self, live: LiveJob, provider: Provider | None, handle: RunHandle, attempt: int) -> None:
        """Give the attempt's machine back once its run ended: VM providers (lambda, runpod, paperspace) keep billing
        a machine whose command has exited until it is terminated. cancel() is idempotent (a no-op for local runs)."""
        book = live.book
        if provider is None or attempt in book.released or attempt in book.cancel_sent:
            return  # already released, or already stopped by CancelJob / a limit
        for wait_s in RELEASE_WAITS_S:
            await asyncio.sleep(wait_s)
            try:
                await provider.cancel(handle)
            except ProviderError as exc:
                log.warning("releasing attempt %d of %s on %s failed: %s", attempt, live.job.job_id, handle.provider, exc)
                continue
            book.released.add(attempt)
            return
        log.error(
            "attempt %d of %s on %s could not be released; it may still be billing (ref %s)",
            attempt,
            live.job.job_id,
            handle.provider,
            handle.ref,
        )

    async def _finish(self, live: LiveJob, status: RunStatus) -> None:
        """The attempt's run ended: its real end time, the final usage record and progress, then the next state."""
        job = live.job
        ended = self.limits.end_of_run(job.attempts[-1], status)
        async with live.lock:
            job.attempts[-1].end_time.CopyFrom(timestamp_from_unix(ended))
        await self.limits.record_usage(live, final=True)
        live.progress_dirty = True
        await self.progress.flush(live, force=True)
        async with live.lock:
            max_duration_s = self.limits.max_duration_s(job.spec)
            reached = self.limits.running_seconds(live.rec) >= max_duration_s
            await self.lifecycle.settle(live, status, reached, max_duration_s)
