"""The job state machine in the engine: saving and announcing changes, transitions, ending attempts, and the policy
that turns an ended run into the job's next state (success, restart, recovery, failure, cancellation).

Allowed transitions are declared in `core/states.py`; this module applies them to a live job and persists each one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.convert import timestamp_from_unix
from crucible.scheduler.core import states
from crucible.scheduler.engine_settings import EngineSettings
from crucible.scheduler.jobstate import JobRecord, LiveJob
from crucible.scheduler.providers.base import RunHandle, RunState, RunStatus
from crucible.scheduler.store import AsyncJobStore

log = logging.getLogger(__name__)

Outcome = job_pb2.AttemptOutcome


def current_handle(rec: JobRecord) -> RunHandle | None:
    """The run handle of the attempt in progress, or None (no attempt, it ended, or its handle was never recorded)."""
    attempt = len(rec.job.attempts)
    handle = rec.bookkeeping.handles.get(attempt)
    if handle is None or rec.job.attempts[attempt - 1].outcome != Outcome.ATTEMPT_OUTCOME_IN_PROGRESS:
        return None
    return handle


def attempt_in_progress(rec: JobRecord) -> bool:
    """Whether the job's last attempt has not ended (it may lack a handle after a crash during its launch)."""
    return bool(rec.job.attempts) and rec.job.attempts[-1].outcome == Outcome.ATTEMPT_OUTCOME_IN_PROGRESS


class JobLifecycle:
    """Persists every change of a live job before announcing it, and moves it through the state machine."""

    def __init__(self, settings: EngineSettings, store: AsyncJobStore, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    async def save(self, live: LiveJob) -> None:
        """Commit the job (and its bookkeeping), then wake its watchers."""
        live.job.update_time.CopyFrom(timestamp_from_unix(self.clock()))
        await self.store.update(live.rec)
        async with live.changed:
            live.version += 1
            live.changed.notify_all()

    async def transition(self, live: LiveJob, to: job_pb2.JobState.ValueType, reason: str) -> None:
        """Move the job to state `to` (refused unless the state machine allows it), recorded with its reason."""
        job = live.job
        states.check_transition(job.state, to)
        now = timestamp_from_unix(self.clock())
        job.transitions.add(from_state=job.state, to_state=to, time=now, reason=reason, attempt=len(job.attempts))
        job.state = to
        if states.is_terminal(to):
            job.end_time.CopyFrom(now)
        log.info("job %s -> %s: %s", job.job_id, states.name(to), reason)
        await self.save(live)

    def end_attempt(self, rec: JobRecord, outcome: job_pb2.AttemptOutcome.ValueType, exit_code: int | None, reason: str) -> None:
        """Close the attempt in progress with its outcome (a no-op when none is in progress)."""
        if not attempt_in_progress(rec):
            return
        attempt = rec.job.attempts[-1]
        attempt.outcome = outcome
        attempt.reason = reason[:500]
        if exit_code is not None:
            attempt.exit_code = exit_code
        if not attempt.HasField("end_time"):  # settle() gets the run's real end first (it may have ended while down)
            attempt.end_time.CopyFrom(timestamp_from_unix(self.clock()))

    async def cancel(self, live: LiveJob, text: str) -> None:
        """CancelJob on a live job (under its lock): cancelled at once when nothing runs, else CANCELLING."""
        live.book.cancel_reason = text
        state = live.job.state
        if state == states.PENDING or (state == states.RECOVERING and current_handle(live.rec) is None):
            await self.transition(live, states.CANCELLED, text)
        else:
            await self.transition(live, states.CANCELLING, text)

    async def cancelled_without_run(self, live: LiveJob) -> None:
        """A cancellation that found no run to stop: the attempt (if any) is stopped and the job CANCELLED."""
        self.end_attempt(live.rec, Outcome.ATTEMPT_OUTCOME_STOPPED, None, live.book.cancel_text)
        await self.transition(live, states.CANCELLED, live.book.cancel_text)

    async def settle(self, live: LiveJob, status: RunStatus, max_duration_reached: bool, max_duration_s: float) -> None:
        """The job's next state after its attempt's run ended (under the job's lock): succeeded, cancelled, stopped by
        a limit, restarted after a non-zero exit, recovered after preemption or a lost machine, or failed."""
        rec, job = live.rec, live.job
        book, spec = live.book, job.spec
        attempt_number = len(job.attempts)
        exit_code = status.exit_code
        detail = status.message or (f"exit status {exit_code}" if exit_code is not None else status.state.value)
        limit_hit = status.message == "time limit reached" or max_duration_reached
        attempt = job.attempts[-1]
        if status.state == RunState.SUCCEEDED:
            self.end_attempt(rec, Outcome.ATTEMPT_OUTCOME_SUCCEEDED, 0, "exit status 0")
            note = "finished before the cancellation took effect; " if job.state == states.CANCELLING else ""
            await self.transition(live, states.SUCCEEDED, f"{note}attempt {attempt_number} exited with status 0")
        elif job.state == states.CANCELLING:
            self.end_attempt(rec, Outcome.ATTEMPT_OUTCOME_STOPPED, exit_code, book.cancel_text)
            await self.transition(live, states.CANCELLED, book.cancel_text)
        elif book.stop_reason:
            self.end_attempt(rec, Outcome.ATTEMPT_OUTCOME_STOPPED, exit_code, book.stop_reason)
            await self.transition(live, states.FAILED, f"stopped: {book.stop_reason}")
        elif status.state == RunState.FAILED and limit_hit:
            text = f"maximum duration {max_duration_s:.0f}s reached"
            self.end_attempt(rec, Outcome.ATTEMPT_OUTCOME_STOPPED, exit_code, text)
            await self.transition(live, states.FAILED, f"stopped: {text}")
        elif status.state == RunState.FAILED:
            self.end_attempt(rec, Outcome.ATTEMPT_OUTCOME_USER_ERROR, exit_code, detail)
            used, limit = book.restarts_used, spec.restart_policy.max_restarts_on_errors
            if used < limit:
                book.restarts_used = used + 1
                await self.transition(live, states.RECOVERING, f"{detail} (restart {used + 1} of {limit})")
            else:
                suffix = f" (restart limit {limit} reached)" if limit else ""
                await self.transition(live, states.FAILED, f"attempt {attempt_number}: {detail}{suffix}")
        else:  # PREEMPTED, or CANCELLED by the provider on its own
            lost = not attempt.offer.spot or status.state == RunState.CANCELLED
            outcome = Outcome.ATTEMPT_OUTCOME_LOST if lost else Outcome.ATTEMPT_OUTCOME_PREEMPTED
            what = (f"lost by {attempt.provider}" if lost else f"preempted by {attempt.provider}") + (
                f": {detail}" if detail else ""
            )
            self.end_attempt(rec, outcome, exit_code, what)
            recover = not spec.restart_policy.HasField("recover_on_preemption") or spec.restart_policy.recover_on_preemption
            if recover and book.recoveries < self.settings.max_recoveries:
                book.recoveries += 1
                await self.transition(live, states.RECOVERING, f"{what}; relaunching to resume from the latest checkpoint")
            else:
                why = "recovery disabled" if not recover else f"{book.recoveries} recoveries already"
                await self.transition(live, states.FAILED, f"{what} ({why})")
