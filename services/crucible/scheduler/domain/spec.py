"""What a job asks for: the JobSpec as plain values (no protobuf), read once at the API edge by `convert.py`.

Field names and meanings are those of `crucible.scheduler.v1.JobSpec`; an unset optional field is None.
"""

from __future__ import annotations

import dataclasses
import enum


class ProviderPolicy(enum.IntEnum):
    """How the providers of a job are chosen (numbers as in `crucible.scheduler.v1.ProviderPolicy`)."""

    UNSPECIFIED = 0
    EXPLICIT = 1
    CHEAPEST = 2
    FASTEST = 3
    ORDERED = 4


@dataclasses.dataclass(frozen=True)
class Duration:
    """A duration as the API carries it (whole seconds and nanoseconds, each checked by the spec's validation)."""

    seconds: int = 0
    nanos: int = 0

    def total_seconds(self) -> float:
        """The duration in (float) seconds."""
        return (self.seconds * 1_000_000_000 + self.nanos) / 1_000_000_000


@dataclasses.dataclass(frozen=True)
class Resources:
    """What the machine must have (`crucible.cost.v1.ResourceRequirements`)."""

    gpu_names: tuple[str, ...] = ()
    gpu_count: int = 0
    min_gpu_memory_gib: float = 0.0
    min_vcpus: int = 0
    min_memory_gib: float = 0.0


@dataclasses.dataclass(frozen=True)
class JobInput:
    """A file or folder the job reads, and where it lands in the working folder ("" = data/<last part>)."""

    uri: str
    path: str = ""


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """How often a failing job is run again; `recover_on_preemption` None means the default (True)."""

    max_restarts_on_errors: int = 0
    recover_on_preemption: bool | None = None


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """A job's specification. At most one of `code_dir` / `code_archive` is set (the API's `code` oneof).

    `wire_sha256` and `wire_bytes` are what the edge measured of the message as sent (the digest that makes a
    request id idempotent, and its size without the code archive); they are "" and 0 for a spec read back from the
    job database, and never compared."""

    display_name: str = ""
    command: tuple[str, ...] = ()
    code_dir: str | None = None
    code_archive: bytes | None = None
    container_image: str = ""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    resources: Resources = Resources()
    max_duration: Duration | None = None
    expected_duration: Duration | None = None
    max_cost_usd: float | None = None
    max_price_usd_per_hour: float | None = None
    provider_policy: int = ProviderPolicy.UNSPECIFIED  # an int: the API may send a value this version does not know
    providers: tuple[str, ...] = ()
    spot_allowed: bool = False
    checkpoint_dir: str = ""
    restart_policy: RestartPolicy = RestartPolicy()
    budget_scope: str = ""
    inputs: tuple[JobInput, ...] = ()
    wire_sha256: str = dataclasses.field(default="", compare=False)
    wire_bytes: int = dataclasses.field(default=0, compare=False)

    @property
    def code(self) -> str | None:
        """Which code the job brings: "code_dir", "code_archive" or None."""
        if self.code_dir is not None:
            return "code_dir"
        if self.code_archive is not None:
            return "code_archive"
        return None

    @property
    def recover_on_preemption(self) -> bool:
        """Whether a preempted or lost run is relaunched (the default when the spec does not say)."""
        value = self.restart_policy.recover_on_preemption
        return True if value is None else value
