"""A job as the scheduler's decisions see it: plain, immutable values (no protobuf, no I/O).

The engine builds a `JobState` from its stored record before each decision; `decide.py` returns the next one.
"""

from __future__ import annotations

import dataclasses
import enum

from crucible.scheduler.domain.states import CANCELLING, State

#: Longest reason kept on an attempt (the job's transitions keep up to 1000 characters).
MAX_ATTEMPT_REASON = 500


class Outcome(enum.IntEnum):
    """How an attempt ended (numbers as in `crucible.scheduler.v1.AttemptOutcome`)."""

    UNSPECIFIED = 0
    IN_PROGRESS = 1
    SUCCEEDED = 2
    USER_ERROR = 3
    PREEMPTED = 4
    LAUNCH_FAILED = 5
    LOST = 6
    STOPPED = 7


class RunEnd(enum.Enum):
    """How a run ended, as its provider reports it (values as the providers' `RunState`)."""

    SUCCEEDED = "succeeded"  # the command exited 0
    FAILED = "failed"  # the command exited non-zero, or hit its time limit
    PREEMPTED = "preempted"  # spot reclaim, lost host, or a run the provider no longer knows
    CANCELLED = "cancelled"  # stopped (by us, or by the provider on its own)


class LaunchError(enum.Enum):
    """Why a launch failed (values as the providers' `ProviderErrorKind`); decides what is blocked."""

    CAPACITY = "capacity"  # blocks the offer's region
    QUOTA = "quota"  # blocks the whole provider
    TRANSIENT = "transient"  # retried by the launcher first; then blocks the region
    AUTH = "auth"  # blocks the whole provider
    INVALID = "invalid"  # the provider (or the job's files) rejected the job: the job fails
    NOT_FOUND = "not_found"
    MALFORMED_RESPONSE = "malformed_response"


#: Launch errors that block the whole provider (the others block only the offer's region).
PROVIDER_WIDE = frozenset({LaunchError.QUOTA, LaunchError.AUTH})


@dataclasses.dataclass(frozen=True)
class Offer:
    """Where an attempt may run: a priced offer (fields as `crucible.cost.v1.Offer`; the decisions read the first four).

    Enums are their API numbers; `price_observed_at` is nanoseconds since the epoch, None when the offer has none."""

    offer_id: str
    provider: str
    region: str = ""
    spot: bool = False
    instance_type: str = ""
    gpu_name: str = ""
    gpu_count: int = 0
    gpu_memory_gib: float = 0.0
    vcpus: int = 0
    memory_gib: float = 0.0
    price_usd_per_hour: float = 0.0
    storage_price_usd_per_gb_hour: float = 0.0
    egress_price_usd_per_gb: float = 0.0
    billing_granularity: int = 0
    availability: int = 0
    price_origin: int = 0
    price_source: str = ""
    price_observed_at: int | None = None

    @property
    def priced(self) -> bool:
        """Whether the offer comes from the cost catalog (usage can be recorded against it)."""
        return not self.price_source.startswith("unknown")


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One launch of the job (numbered from 1)."""

    number: int
    offer: Offer
    outcome: Outcome = Outcome.IN_PROGRESS
    has_run: bool = False  # the provider's run handle is recorded (else a crash may have lost it)
    started: bool = False  # the run was seen running
    exit_code: int | None = None
    reason: str = ""

    @property
    def in_progress(self) -> bool:
        """Whether the attempt has not ended."""
        return self.outcome == Outcome.IN_PROGRESS


@dataclasses.dataclass(frozen=True)
class Policy:
    """How far the scheduler goes to finish the job: the spec's restart policy and the scheduler's recovery limit."""

    max_restarts_on_errors: int = 0
    recover_on_preemption: bool = True
    max_recoveries: int = 10


@dataclasses.dataclass(frozen=True)
class JobState:
    """Everything a decision reads about one job."""

    state: State
    attempts: tuple[Attempt, ...] = ()
    candidates: tuple[Offer, ...] = ()  # in launch order
    policy: Policy = Policy()
    blocked_providers: frozenset[str] = frozenset()
    blocked_locations: frozenset[tuple[str, str]] = frozenset()  # (provider, region)
    restarts_used: int = 0  # relaunches after a non-zero exit
    recoveries: int = 0  # relaunches after preemption or a lost run
    cancel_reason: str = ""
    stop_reason: str = ""  # a limit that stops the job
    cancel_sent: frozenset[int] = frozenset()  # attempts whose run was asked to stop
    released: frozenset[int] = frozenset()  # attempts whose machine was given back
    files_ready: bool = False  # the job's files are prepared for the next launch (in memory only)

    @property
    def current(self) -> Attempt | None:
        """The attempt in progress, if any."""
        if self.attempts and self.attempts[-1].in_progress:
            return self.attempts[-1]
        return None

    @property
    def cancel_text(self) -> str:
        """The reason of a cancellation, as the job's last transition says it."""
        return self.cancel_reason or "cancelled"

    @property
    def stopping(self) -> bool:
        """Whether the run in progress must be stopped (a cancellation or a limit)."""
        return self.state == CANCELLING or bool(self.stop_reason)

    def is_blocked(self, offer: Offer) -> bool:
        """Whether a launch error ruled out the offer's provider, or its region."""
        return offer.provider in self.blocked_providers or (offer.provider, offer.region) in self.blocked_locations

    def resumes(self) -> bool:
        """Whether the next launch resumes earlier work (a run was seen, or ended, before it)."""
        ran = (Outcome.USER_ERROR, Outcome.PREEMPTED, Outcome.LOST)
        return any(a.started or a.outcome in ran for a in self.attempts)
