"""The job's record under the scheduler's decisions: builds the domain view of a live job, asks `domain/decide.py`
what an event leads to, and carries out the actions that change the record (saving and announcing each change).

The I/O actions (launching, polling, collecting, billing) are returned to the driver, which carries them out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from crucible.scheduler.domain import decide as rules
from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import Attempt, JobState, Offer, Outcome, Policy
from crucible.scheduler.domain.record import Job
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.persistence.records import JobBookkeeping, JobRecord
from crucible.scheduler.providers.base import RunHandle

log = logging.getLogger(__name__)


def current_handle(rec: JobRecord) -> RunHandle | None:
    """The run handle of the attempt in progress, or None (no attempt, it ended, or its handle was never recorded)."""
    attempt = len(rec.job.attempts)
    handle = rec.bookkeeping.handles.get(attempt)
    if handle is None or rec.job.attempts[attempt - 1].outcome != Outcome.IN_PROGRESS:
        return None
    return handle


def remember_handle(rec: JobRecord, attempt: int, handle: RunHandle) -> None:
    """Record the run handle of an attempt, in the bookkeeping and as the attempt's provider_ref."""
    rec.bookkeeping.remember_handle(attempt, handle)
    rec.job.attempts[attempt - 1].provider_ref = handle.ref


def job_state(
    record: Job,
    book: JobBookkeeping,
    candidates: Iterable[Offer],
    files_ready: bool,
    max_recoveries: int,
) -> JobState:
    """The job as the decisions see it: its record, bookkeeping and candidate offers as immutable values."""
    attempts = tuple(
        Attempt(
            number=a.attempt,
            offer=a.offer or Offer("", ""),
            outcome=Outcome(a.outcome),
            has_run=a.attempt in book.handles,
            started=a.start_time is not None,
            exit_code=a.exit_code,
            reason=a.reason,
        )
        for a in record.attempts
    )
    return JobState(
        state=states.State(record.state),
        attempts=attempts,
        candidates=tuple(candidates),
        policy=Policy(
            max_restarts_on_errors=record.spec.restart_policy.max_restarts_on_errors,
            recover_on_preemption=record.spec.recover_on_preemption,
            max_recoveries=max_recoveries,
        ),
        blocked_providers=frozenset(book.blocked_providers),
        blocked_locations=frozenset(book.blocked_locations),
        restarts_used=book.restarts_used,
        recoveries=book.recoveries,
        cancel_reason=book.cancel_reason,
        stop_reason=book.stop_reason,
        cancel_sent=frozenset(book.cancel_sent),
        released=frozenset(book.released),
        files_ready=files_ready,
    )


def job_view(live: LiveJob, max_recoveries: int) -> JobState:
    """The live job as the decisions see it."""
    return job_state(live.job, live.book, live.candidate_offers(), live.files_ready, max_recoveries)


class JobLifecycle:
    """Decides with `domain.decide` and applies the record changes; persists every change before announcing it."""

    def __init__(self, ctx: SchedulerContext) -> None:
        self.settings = ctx.settings
        self.store = ctx.store
        self.folders = ctx.folders
        self.clock = ctx.clock

    async def decide(self, live: LiveJob, event: rules.Event) -> list[rules.Action]:
        """Decide what `event` leads to (under the job's lock), carry out the record changes, return the I/O actions."""
        new, actions = rules.decide(job_view(live, self.settings.max_recoveries), event)
        live.files_ready = new.files_ready  # the one part of the state kept only in memory
        io: list[rules.Action] = []
        for action in actions:
            if isinstance(action, rules.IO_ACTIONS):
                io.append(action)
            else:
                await self.record(live, action)
        return io

    async def record(self, live: LiveJob, action: rules.Action) -> None:
        """Carry out one action that changes only the job's record."""
        rec, job, book = live.rec, live.job, live.book
        match action:
            case rules.Transition(to=to, reason=reason):
                await self.transition(live, to, reason)
            case rules.StartAttempt(number=number, offer=offer):
                chosen = next(o for o in live.candidate_offers() if o.offer_id == offer.offer_id)
                job.add_attempt(number, chosen, self.clock())
                book.log_starts[number] = self.folders.log_sizes(job.job_id)
            case rules.EndAttempt(outcome=outcome, exit_code=exit_code, reason=reason):
                job.close_attempt(outcome, exit_code, reason, self.clock())
            case rules.Block(provider=provider, region=None):
                book.blocked_providers.append(provider)
            case rules.Block(provider=provider, region=str(region)):
                book.blocked_locations.append((provider, region))
            case rules.Relaunch(kind="restart"):
                book.restarts_used += 1
            case rules.Relaunch():
                book.recoveries += 1
            case rules.RememberRun(attempt=number, ref=ref):
                handle = live.new_handle
                if handle is None or handle.ref != ref:
                    raise RuntimeError(f"no run handle {ref!r} to record for attempt {number} of {job.job_id}")
                remember_handle(rec, number, handle)
                live.new_handle = None
            case rules.StampStart(attempt=number):
                job.stamp_start(number, self.clock())
            case rules.SetCancelReason(text=text):
                book.cancel_reason = text
            case rules.SetStopReason(text=text):
                book.stop_reason = text
            case rules.Save():
                await self.save(live)
            case rules.Wake():
                live.wake.set()
            case _:
                raise TypeError(f"not a record action: {action!r}")

    async def save(self, live: LiveJob) -> None:
        """Commit the job (and its bookkeeping), then wake its watchers."""
        live.job.stamp_update(self.clock())
        await self.store.update(live.rec)
        async with live.changed:
            live.version += 1
            live.changed.notify_all()

    async def transition(self, live: LiveJob, to: int, reason: str) -> None:
        """Move the job to state `to` (refused unless the state machine allows it), recorded with its reason."""
        job = live.job
        states.check_transition(job.state, to)
        job.add_transition(to, reason, self.clock())
        log.info("job %s -> %s: %s", job.job_id, states.name(to), reason)
        await self.save(live)
