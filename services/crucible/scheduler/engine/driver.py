"""The driving loop of one job (one asyncio task per unfinished job): it asks `domain/decide.py` what to do next and
carries out the I/O actions (launch, re-find a lost launch, poll, stop, collect, release, bill), reporting each
result back as an event, until the job is terminal. It decides nothing itself.
"""

from __future__ import annotations

import asyncio
import logging

from crucible.scheduler.domain import decide as rules
from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import RunEnd
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.launcher import JobLauncher
from crucible.scheduler.engine.lifecycle import JobLifecycle, current_handle
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.engine.logmirror import LogMirror
from crucible.scheduler.engine.outputs import JobArtifacts
from crucible.scheduler.engine.progress_recorder import ProgressRecorder
from crucible.scheduler.engine.usage_limits import UsageAndLimits
from crucible.scheduler.providers.base import Provider, ProviderError, ProviderErrorKind, RunHandle, RunState, RunStatus

log = logging.getLogger(__name__)

#: Waits before each try to give back an ended attempt's machine.
RELEASE_WAITS_S = (0.0, 1.0, 4.0)


class JobDriver:
    """Drives jobs through their states; `drive()` is the body of each job's task."""

    def __init__(
        self,
        ctx: SchedulerContext,
        lifecycle: JobLifecycle,
        launcher: JobLauncher,
        logs: LogMirror,
        progress: ProgressRecorder,
        artifacts: JobArtifacts,
        limits: UsageAndLimits,
    ) -> None:
        self.settings = ctx.settings
        self.clock = ctx.clock
        self.registry = ctx.registry
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
                await self.step(live, rules.Tick())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("driver of job %s crashed", job_id)
            try:
                await self.step(live, rules.DriverCrashed(str(exc), type(exc).__name__))
            except Exception:
                log.exception("could not record the failure of job %s", job_id)

    async def step(self, live: LiveJob, event: rules.Event) -> None:
        """Decide what `event` leads to (record changes under the job's lock), then carry out the I/O actions."""
        async with live.lock:
            io = await self.lifecycle.decide(live, event)
        for action in io:
            follow_up = await self._carry_out(live, action)
            if follow_up is not None:
                await self.step(live, follow_up)

    async def _carry_out(self, live: LiveJob, action: rules.Action) -> rules.Event | None:
        """One I/O action; the event it reports, if any."""
        match action:
            case rules.PrepareFiles():
                return await self.launcher.prepare(live)
            case rules.Submit():
                return await self.launcher.submit(live, action)
            case rules.FindLostRun():
                return await self.launcher.find_lost_run(live)
            case rules.CancelRun(attempt=attempt):
                await self._cancel_run(live, attempt)
                return None
            case rules.PollRun(attempt=attempt):
                await self._poll(live, attempt)
                return None
            case rules.CloseRun(attempt=attempt, release=release):
                await self._close_run(live, attempt, release)
                return None
            case rules.Bill():
                reason = await self.limits.record_usage(live, final=True)
                live.progress_dirty = True
                await self.progress.flush(live, force=True)
                return rules.LimitReached(reason) if reason else None
        raise TypeError(f"not an I/O action: {action!r}")

    def _handle(self, live: LiveJob, attempt: int) -> RunHandle:
        handle = current_handle(live.rec)
        if handle is None or attempt != len(live.job.attempts):
            raise RuntimeError(f"job {live.job.job_id} has no run of attempt {attempt} to follow")
        return handle

    async def _cancel_run(self, live: LiveJob, attempt: int) -> None:
        """Ask the provider to stop the run (a failure is retried on the next poll)."""
        handle = self._handle(live, attempt)
        provider = self.registry.load(handle.provider)
        if provider is None:
            return
        try:
            await provider.cancel(handle)
            live.book.cancel_sent.add(attempt)
        except ProviderError as exc:
            log.warning("cancel of %s on %s failed (will retry): %s", live.job.job_id, handle.provider, exc)

    async def _poll(self, live: LiveJob, attempt: int) -> None:
        """One poll of the run: its status and new output; then the run's start or end is reported, or the limits are
        checked and the loop waits for the next poll (or a wake-up)."""
        handle = self._handle(live, attempt)
        provider = self.registry.load(handle.provider)
        if provider is None:
            log.warning("job %s: provider %s is unavailable; cannot poll attempt %d", live.job.job_id, handle.provider, attempt)
            status = RunStatus(RunState.UNKNOWN)
        else:
            try:
                status = await provider.status(handle)
            except ProviderError as exc:
                if exc.kind == ProviderErrorKind.NOT_FOUND:
                    status = RunStatus(RunState.PREEMPTED, message=f"the provider no longer knows the run: {exc}")
                else:
                    status = RunStatus(RunState.UNKNOWN, message=str(exc))
            await self.logs.tail(live, provider, handle)
        if status.state == RunState.RUNNING:
            await self.step(live, rules.RunStarted(f"{handle.provider} ({handle.ref})"))
        if status.state.terminal:
            end = RunEnd(status.state.value)
            live.ended_status = status
            await self.step(live, rules.RunEnded(end, status.exit_code, status.message))
            async with live.lock:
                max_duration_s = self.limits.max_duration_s(live.rec)
                reached = self.limits.running_seconds(live.rec) >= max_duration_s
            await self.step(live, rules.RunClosed(end, status.exit_code, status.message, reached, max_duration_s))
            return
        reason = await self.limits.check_limits(live)
        if reason:
            await self.step(live, rules.LimitReached(reason))
        await self.progress.flush(live, force=False)
        live.wake.clear()
        try:
            await asyncio.wait_for(live.wake.wait(), self.settings.poll_interval_s)
        except TimeoutError:
            pass

    async def _close_run(self, live: LiveJob, attempt: int, release: bool) -> None:
        """The run ended: its last output (however much, up to the cap), its outputs to the store, its machine given
        back when it still bills (VM providers bill a machine whose command exited until it is terminated), and the
        attempt's real end time (usage is billed until then, even when the scheduler was down)."""
        handle = self._handle(live, attempt)
        status = live.ended_status or RunStatus(RunState.UNKNOWN)
        provider = self.registry.load(handle.provider)
        if provider is not None:
            while await self.logs.tail(live, provider, handle):
                pass
            await self.logs.provider_dropped(live, status)
            await self.artifacts.collect(live, provider, handle, attempt)
            if release:
                await self._release(live, provider, handle, attempt)
        ended = self.limits.end_of_run(live.rec, attempt, status)
        async with live.lock:
            live.job.stamp_run_end(attempt, ended)

    async def _release(self, live: LiveJob, provider: Provider, handle: RunHandle, attempt: int) -> None:
        """Give the attempt's machine back; cancel() is idempotent (a no-op for local runs)."""
        for wait_s in RELEASE_WAITS_S:
            await asyncio.sleep(wait_s)
            try:
                await provider.cancel(handle)
            except ProviderError as exc:
                log.warning("releasing attempt %d of %s on %s failed: %s", attempt, live.job.job_id, handle.provider, exc)
                continue
            live.book.released.add(attempt)
            return
        log.error(
            "attempt %d of %s on %s could not be released; it may still be billing (ref %s)",
            attempt,
            live.job.job_id,
            handle.provider,
            handle.ref,
        )
