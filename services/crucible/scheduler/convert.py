"""Conversions between the scheduler's protobuf messages (API and job-file format) and its plain domain types.

The one place the engine's protobuf record is read into `domain/` types and domain values are written back into it.
"""

from __future__ import annotations

from collections.abc import Iterable

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.convert import duration_from_seconds, timestamp_from_unix
from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import Attempt, JobState, Offer, Outcome, Policy
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
