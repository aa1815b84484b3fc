"""Conversions between the scheduler's protobuf messages (API and job-file format) and its plain domain types.

The one place the engine's protobuf record is read into `domain/` types and domain values are written back into it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.convert import duration_from_seconds, timestamp_from_unix, unix_seconds
from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import MAX_ATTEMPT_REASON, Attempt, JobState, Offer, Outcome, Policy
from crucible.scheduler.domain.progress import Progress
from crucible.scheduler.persistence.records import JobBookkeeping, JobRecord
from crucible.scheduler.providers.base import OfferRef


def domain_offer(offer: offer_pb2.Offer) -> Offer:
    """What the decisions need of a priced offer."""
    return Offer(offer.offer_id, offer.provider, offer.region, offer.spot)


def offer_ref(offer: offer_pb2.Offer) -> OfferRef:
    """The provider-interface view of an offer."""
    return OfferRef(
        offer.provider,
        offer.instance_type,
        offer.region,
        offer.gpu_name,
        offer.gpu_count,
        offer.spot,
        offer.price_usd_per_hour,
        offer.offer_id,
    )


def job_state(
    job: job_pb2.Job,
    book: JobBookkeeping,
    candidates: Iterable[offer_pb2.Offer],
    files_ready: bool,
    max_recoveries: int,
) -> JobState:
    """The job as the decisions see it: its record, bookkeeping and candidate offers as plain domain values."""
    attempts = tuple(
        Attempt(
            number=a.attempt,
            offer=domain_offer(a.offer),
            outcome=Outcome(a.outcome),
            has_run=a.attempt in book.handles,
            started=a.HasField("start_time"),
            exit_code=a.exit_code if a.HasField("exit_code") else None,
            reason=a.reason,
        )
        for a in job.attempts
    )
    restart = job.spec.restart_policy
    return JobState(
        state=states.State(job.state),
        attempts=attempts,
        candidates=tuple(domain_offer(offer) for offer in candidates),
        policy=Policy(
            max_restarts_on_errors=restart.max_restarts_on_errors,
            recover_on_preemption=not restart.HasField("recover_on_preemption") or restart.recover_on_preemption,
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


def read_progress(job: job_pb2.Job, progress: Progress) -> None:
    """Load the job's stored progress (step, totals, metrics) into a tracker's `Progress`."""
    stored = job.progress
    progress.step = stored.step if stored.HasField("step") else None
    progress.total_steps = stored.total_steps if stored.HasField("total_steps") else None
    progress.epoch = stored.epoch if stored.HasField("epoch") else None
    progress.total_epochs = stored.total_epochs if stored.HasField("total_epochs") else None
    progress.metrics = dict(stored.metrics)


def apply_progress(job: job_pb2.Job, progress: Progress) -> None:
    """Copy the tracker's progress onto the Job message."""
    out = job.progress
    out.Clear()
    for name in ("step", "total_steps", "epoch", "total_epochs"):
        value = getattr(progress, name)
        if value is not None:
            setattr(out, name, value)
    for metric, value in progress.metrics.items():
        out.metrics[metric] = value
    if progress.eta_s is not None:
        out.eta.CopyFrom(duration_from_seconds(progress.eta_s))
    if progress.update_time is not None:
        out.update_time.CopyFrom(timestamp_from_unix(progress.update_time))


def snapshot(rec: JobRecord) -> job_pb2.Job:
    """A copy of the job, safe to hand out while the driver goes on changing the original."""
    out = job_pb2.Job()
    out.CopyFrom(rec.job)
    return out


# --- domain values written into the stored Job message -----------------------------------------------------------


def add_attempt(job: job_pb2.Job, number: int, offer: offer_pb2.Offer, now: float) -> None:
    """Record attempt `number` on `offer` as in progress (the job's current provider and offer become its own)."""
    job.attempts.add(
        attempt=number,
        provider=offer.provider,
        offer=offer,
        outcome=job_pb2.AttemptOutcome.ValueType(Outcome.IN_PROGRESS),
        create_time=timestamp_from_unix(now),
    )
    job.provider = offer.provider
    job.offer.CopyFrom(offer)


def close_attempt(job: job_pb2.Job, outcome: Outcome, exit_code: int | None, reason: str, now: float) -> None:
    """Close the attempt in progress with its outcome (a no-op when none is in progress); an end time the driver
    recorded first (the run's real end, perhaps while the scheduler was down) is kept."""
    if not job.attempts or job.attempts[-1].outcome != Outcome.IN_PROGRESS:
        return
    attempt = job.attempts[-1]
    attempt.outcome = job_pb2.AttemptOutcome.ValueType(outcome)
    attempt.reason = reason[:MAX_ATTEMPT_REASON]
    if exit_code is not None:
        attempt.exit_code = exit_code
    if not attempt.HasField("end_time"):
        attempt.end_time.CopyFrom(timestamp_from_unix(now))


def add_transition(job: job_pb2.Job, to: int, reason: str, now: float) -> None:
    """Record the move to state `to` with its reason (the caller checked it is allowed); a terminal state ends the job."""
    stamp = timestamp_from_unix(now)
    target = job_pb2.JobState.ValueType(to)
    job.transitions.add(from_state=job.state, to_state=target, time=stamp, reason=reason, attempt=len(job.attempts))
    job.state = target
    if states.is_terminal(to):
        job.end_time.CopyFrom(stamp)


def stamp_start(job: job_pb2.Job, number: int, now: float) -> None:
    """Attempt `number` started running now (and the job, at its first start)."""
    stamp = timestamp_from_unix(now)
    job.attempts[number - 1].start_time.CopyFrom(stamp)
    if not job.HasField("start_time"):
        job.start_time.CopyFrom(stamp)


def stamp_run_end(job: job_pb2.Job, number: int, ended: float) -> None:
    """The run of attempt `number` ended at `ended` (its provider's record, or now)."""
    job.attempts[number - 1].end_time.CopyFrom(timestamp_from_unix(ended))


def stamp_update(job: job_pb2.Job, now: float) -> None:
    """The job changed now."""
    job.update_time.CopyFrom(timestamp_from_unix(now))


def set_spent(job: job_pb2.Job, spent_usd: float, now: float) -> None:
    """The job's spend, as the cost service last reported it."""
    job.cost.spent_usd = spent_usd
    job.cost.update_time.CopyFrom(timestamp_from_unix(now))


# --- the record read as plain values (usage and limits) ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Period:
    """When an attempt ran: its number, start, end (None while it runs) and its offer (id, priced by the catalog)."""

    attempt: int
    start: float
    end: float | None
    offer_id: str
    priced: bool


def priced(offer: offer_pb2.Offer) -> bool:
    """Whether the offer comes from the cost catalog (usage can be recorded against it)."""
    return not offer.price_source.startswith("unknown")


def run_periods(job: job_pb2.Job) -> list[Period]:
    """The attempts that started running, with their times (provisioning excluded)."""
    return [
        Period(
            a.attempt,
            unix_seconds(a.start_time),
            unix_seconds(a.end_time) if a.HasField("end_time") else None,
            a.offer.offer_id,
            priced(a.offer),
        )
        for a in job.attempts
        if a.HasField("start_time")
    ]


def attempt_began(job: job_pb2.Job, number: int) -> float:
    """When attempt `number` started running, else when it was created."""
    attempt = job.attempts[number - 1]
    return unix_seconds(attempt.start_time if attempt.HasField("start_time") else attempt.create_time)


def max_cost_usd(job: job_pb2.Job) -> float | None:
    """The job's spending limit, or None."""
    return job.spec.max_cost_usd if job.spec.HasField("max_cost_usd") else None
