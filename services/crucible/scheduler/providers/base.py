"""The provider interface every scheduler backend implements (local, kubernetes, lambda, runpod, paperspace, ...).

The scheduler core drives jobs only through this interface; adapters translate it to one provider's real API.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any


class ProviderErrorKind(enum.Enum):
    """Why a provider call failed; the scheduler's recovery policy keys on this."""

    CAPACITY = "capacity"  # no instances of that type/region now: fail over to the next offer, block this location
    QUOTA = "quota"  # account limit reached: fail over, block this provider
    TRANSIENT = "transient"  # 429, 5xx, timeouts, connection resets: retry with backoff, then fail over
    AUTH = "auth"  # missing or rejected credentials: fail over, never retry the same provider
    INVALID = "invalid"  # the provider rejected the request as malformed (a bug or bad spec): fail the attempt
    NOT_FOUND = "not_found"  # the provider no longer knows the instance/run
    MALFORMED_RESPONSE = "malformed_response"  # the provider answered something we cannot parse: treat as transient


class ProviderError(Exception):
    """A provider call failed. Messages must never contain credentials (adapters scrub them)."""

    def __init__(
        self,
        provider: str,
        kind: ProviderErrorKind,
        message: str,
        *,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{provider}: {kind.value}: {message}")
        self.provider = provider
        self.kind = kind
        self.retry_after_s = retry_after_s
        self.status = status


class RunState(enum.Enum):
    """A run's state as the provider reports it, mapped onto what the scheduler needs to decide."""

    PENDING = "pending"  # accepted, not yet placed
    PROVISIONING = "provisioning"  # instance booting / image pulling
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # user command exited 0
    FAILED = "failed"  # user command exited non-zero (user-code failure: restart policy applies)
    PREEMPTED = "preempted"  # spot interruption or host loss (recover from checkpoint)
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # could not be determined this time (e.g. manual providers); poll again

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.PREEMPTED, RunState.CANCELLED)


@dataclasses.dataclass(frozen=True)
class OfferRef:
    """The offer chosen for an attempt (from the cost service's catalog)."""

    provider: str
    instance_type: str
    region: str = ""
    gpu_name: str = ""
    gpu_count: int = 0
    spot: bool = False
    price_usd_per_hour: float = 0.0
    offer_id: str = ""


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """Everything an adapter needs to start one attempt of a job."""

    job_id: str
    attempt: int
    command: tuple[str, ...]  # argv, run without a shell
    env: Mapping[str, str]
    offer: OfferRef
    work_dir: Path  # scheduler-side folder of this job: logs, artifacts, exit files for local runs
    code_dir: Path | None = None  # user code to ship/run in (already unpacked if it came as an archive)
    container_image: str = ""
    checkpoint_dir: str = ""  # where the program reads/writes checkpoints (mounted/synced by the adapter)
    max_duration_s: float = 0.0  # 0 = no limit; the adapter enforces it where the provider can
    resume: bool = False  # True when relaunching after preemption/failure: the program should resume
    log_cap_bytes: int = 0  # bytes of stdout and of stderr (each) the attempt may keep; 0 = no limit
    # The job's code as a .tar.gz a remote machine can GET without keys (a presigned store URL, short-lived), and its
    # SHA-256; empty when the job has no code or the store is not reachable from outside (file://).
    code_url: str = ""
    code_sha256: str = ""
    # Staged inputs as (path relative to the working directory, presigned GET URL) pairs, for remote machines.
    input_urls: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class RunHandle:
    """A provider-side reference to a launched attempt; `data` is JSON-serialisable and persisted for re-attachment."""

    provider: str
    ref: str
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """One status poll."""

    state: RunState
    exit_code: int | None = None
    message: str = ""
    end_time: float | None = None  # unix seconds the run ended, when the provider recorded it (billing uses it)
    log_bytes_dropped: Mapping[str, int] = dataclasses.field(default_factory=dict)  # per stream, past the log cap


@dataclasses.dataclass(frozen=True)
class LogChunk:
    """New log bytes of one stream from `offset`; `next_offset` is where the next read starts."""

    stream: str  # "stdout" | "stderr"
    offset: int
    data: bytes
    next_offset: int


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """A file produced by a run, relative to the job's artifact root."""

    path: str
    size_bytes: int
    modified_unix_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class ProviderCapabilities:
    """What a provider can do; reported by ListProviders and used by the selection logic."""

    spot: bool = False
    live_logs: bool = False
    artifacts: bool = False
    manual: bool = False  # the user runs it (colab) and reports status by hand


class Provider(abc.ABC):
    """One compute backend. All methods are async and must not block the event loop."""

    name: str = ""
    capabilities: ProviderCapabilities = ProviderCapabilities()

    @abc.abstractmethod
    def credentials_present(self) -> bool:
        """Whether credentials are configured (never returns or logs them)."""

    def credentials_hint(self) -> str:
        """Where credentials are looked for, e.g. 'env LAMBDA_API_KEY or secrets file key lambda.api_key'."""
        return ""

    @abc.abstractmethod
    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """Launch one attempt; raise ProviderError (CAPACITY/QUOTA/TRANSIENT/AUTH/INVALID) on failure."""

    @abc.abstractmethod
    async def status(self, handle: RunHandle) -> RunStatus:
        """Poll the attempt's state."""

    @abc.abstractmethod
    async def cancel(self, handle: RunHandle) -> None:
        """Stop the attempt and release its resources; idempotent."""

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """Re-attach after a scheduler crash between launching an attempt and recording its handle.

        Returns the handle of the run launched for `spec.job_id` / `spec.attempt` if the provider can find it (by a
        name or marker the adapter set at submit), else None; the scheduler then treats the launch as never made.
        Adapters that cannot look runs up keep this default.
        """
        return None

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """New log bytes since `offset`; providers without a log API return an empty chunk."""
        return LogChunk(stream, offset, b"", offset)

    async def list_artifacts(self, handle: RunHandle) -> list[ArtifactInfo]:
        """Files the attempt produced that can be downloaded."""
        return []

    async def open_artifact(self, handle: RunHandle, path: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream one artifact's bytes; `path` has been checked to stay inside the job's artifact root."""
        raise ProviderError(self.name, ProviderErrorKind.NOT_FOUND, f"{self.name} keeps no artifacts")
        yield b""  # pragma: no cover - makes this an async generator
