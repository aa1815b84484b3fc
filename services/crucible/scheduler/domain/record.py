"""The job as the engine keeps and changes it: plain, mutable values (no protobuf, no I/O), one per job.

Field names are those of `crucible.scheduler.v1.Job`; times are integer nanoseconds since the epoch (None = unset), so
a job read from the job database and written back is unchanged. `convert.py` turns it into the Job message.
"""

from __future__ import annotations

import dataclasses

from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import MAX_ATTEMPT_REASON, Offer, Outcome
from crucible.scheduler.domain.progress import Progress
from crucible.scheduler.domain.spec import JobSpec

NS_PER_S = 1_000_000_000


def time_ns(unix_s: float) -> int:
    """Nanoseconds of a unix time in (float) seconds, to the nearest (0.3 s is 300000000 ns, not 299999999)."""
    return round(unix_s * NS_PER_S)


def unix_s(ns: int) -> float:
    """Unix seconds of a time in nanoseconds."""
    return ns / NS_PER_S


@dataclasses.dataclass
class AttemptRecord:
    """One launch of the job, as recorded (numbered from 1)."""

    attempt: int
    provider: str = ""
    offer: Offer | None = None
    provider_ref: str = ""
    outcome: int = Outcome.UNSPECIFIED
    exit_code: int | None = None
    reason: str = ""
    create_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None


@dataclasses.dataclass
class TransitionRecord:
    """A move between two states, with when, why and during which attempt (0 = before the first)."""

    from_state: int
    to_state: int
    time: int | None = None
    reason: str = ""
    attempt: int = 0


@dataclasses.dataclass
class JobCost:
    """The job's estimated total and its spend so far, as the cost service last reported it."""

    estimated_usd: float = 0.0
    spent_usd: float = 0.0
    update_time: int | None = None


@dataclasses.dataclass
class JobProgress:
    """The job's latest parsed progress; `eta` is in nanoseconds."""

    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    eta: int | None = None
    update_time: int | None = None


@dataclasses.dataclass
class Job:
    """A job: its spec, state, transitions, attempts, cost and progress."""

    job_id: str = ""
    spec: JobSpec = dataclasses.field(default_factory=JobSpec)
    state: int = states.UNSPECIFIED
    transitions: list[TransitionRecord] = dataclasses.field(default_factory=list)
    provider: str = ""
    offer: Offer | None = None
    attempts: list[AttemptRecord] = dataclasses.field(default_factory=list)
    cost: JobCost = dataclasses.field(default_factory=JobCost)
    progress: JobProgress = dataclasses.field(default_factory=JobProgress)
    latest_checkpoint: str = ""
    create_time: int | None = None
    update_time: int | None = None
    start_time: int | None = None
    end_time: int | None = None
    code_archive_sha256: str = ""
    logs_truncated: bool = False
    log_bytes_dropped: int = 0

    def copy(self) -> Job:
        """An independent copy (safe to hand out while the driver goes on changing this one; the spec is shared:
        it never changes)."""
        out = dataclasses.replace(self)
        out.transitions = [dataclasses.replace(t) for t in self.transitions]
        out.attempts = [dataclasses.replace(a) for a in self.attempts]
        out.cost = dataclasses.replace(self.cost)
        out.progress = dataclasses.replace(self.progress, metrics=dict(self.progress.metrics))
        return out

    # --- the record changes the decisions ask for ----------------------------------------------------------------

    def add_attempt(self, number: int, offer: Offer, now: float) -> None:
        """Record attempt `number` on `offer` as in progress (the job's current provider and offer become its own)."""
        self.attempts.append(AttemptRecord(number, offer.provider, offer, outcome=Outcome.IN_PROGRESS, create_time=time_ns(now)))
        self.provider = offer.provider
        self.offer = offer

    def close_attempt(self, outcome: Outcome, exit_code: int | None, reason: str, now: float) -> None:
        """Close the attempt in progress with its outcome (a no-op when none is in progress); an end time the driver
        recorded first (the run's real end, perhaps while the scheduler was down) is kept."""
        if not self.attempts or self.attempts[-1].outcome != Outcome.IN_PROGRESS:
            return
        attempt = self.attempts[-1]
        attempt.outcome = outcome
        attempt.reason = reason[:MAX_ATTEMPT_REASON]
        if exit_code is not None:
            attempt.exit_code = exit_code
        if attempt.end_time is None:
            attempt.end_time = time_ns(now)

    def add_transition(self, to: int, reason: str, now: float) -> None:
        """Record the move to state `to` with its reason (the caller checked it is allowed); a terminal state ends
        the job."""
        stamp = time_ns(now)
        self.transitions.append(TransitionRecord(self.state, to, stamp, reason, len(self.attempts)))
        self.state = to
        if states.is_terminal(to):
            self.end_time = stamp

    def stamp_start(self, number: int, now: float) -> None:
        """Attempt `number` started running now (and the job, at its first start)."""
        stamp = time_ns(now)
        self.attempts[number - 1].start_time = stamp
        if self.start_time is None:
            self.start_time = stamp

    def stamp_run_end(self, number: int, ended: float) -> None:
        """The run of attempt `number` ended at `ended` (its provider's record, or now)."""
        self.attempts[number - 1].end_time = time_ns(ended)

    def stamp_update(self, now: float) -> None:
        """The job changed now."""
        self.update_time = time_ns(now)

    def set_spent(self, spent_usd: float, now: float) -> None:
        """The job's spend, as the cost service last reported it."""
        self.cost.spent_usd = spent_usd
        self.cost.update_time = time_ns(now)

    # --- read as plain values (usage and limits) -----------------------------------------------------------------

    def run_periods(self) -> list[Period]:
        """The attempts that started running, with their times (provisioning excluded)."""
        return [
            Period(
                a.attempt,
                unix_s(a.start_time),
                unix_s(a.end_time) if a.end_time is not None else None,
                a.offer.offer_id if a.offer else "",
                a.offer.priced if a.offer else True,
            )
            for a in self.attempts
            if a.start_time is not None
        ]

    def attempt_began(self, number: int) -> float:
        """When attempt `number` started running, else when it was created."""
        attempt = self.attempts[number - 1]
        began = attempt.start_time if attempt.start_time is not None else attempt.create_time
        return unix_s(began or 0)


@dataclasses.dataclass(frozen=True)
class Period:
    """When an attempt ran: its number, start, end (None while it runs) and its offer (id, priced by the catalog)."""

    attempt: int
    start: float
    end: float | None
    offer_id: str
    priced: bool


def read_progress(job: Job, progress: Progress) -> None:
    """Load the job's stored progress (step, totals, metrics) into a tracker's `Progress`."""
    stored = job.progress
    progress.step = stored.step
    progress.total_steps = stored.total_steps
    progress.epoch = stored.epoch
    progress.total_epochs = stored.total_epochs
    progress.metrics = dict(stored.metrics)


def apply_progress(job: Job, progress: Progress) -> None:
    """Copy the tracker's progress onto the job."""
    job.progress = JobProgress(
        step=progress.step,
        total_steps=progress.total_steps,
        epoch=progress.epoch,
        total_epochs=progress.total_epochs,
        metrics=dict(progress.metrics),
        eta=time_ns(progress.eta_s) if progress.eta_s is not None else None,
        update_time=time_ns(progress.update_time) if progress.update_time is not None else None,
    )
