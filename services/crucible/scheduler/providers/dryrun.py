"""The `dryrun` provider: accepts and tracks attempts without running anything, for benchmarks and validation.

A dry-run attempt "runs" for `duration_s` seconds (setting; 0 by default) and then succeeds; its log says what would run.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping

from crucible.scheduler.providers.base import (
    LaunchSpec,
    LogChunk,
    Provider,
    ProviderCapabilities,
    RunHandle,
    RunState,
    RunStatus,
)


class DryRunProvider(Provider):
    """Runs nothing: each attempt is RUNNING for `duration_s` seconds after submit, then SUCCEEDED."""

    name = "dryrun"
    capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=False, manual=False)

    def __init__(self, duration_s: float = 0.0) -> None:
        self.duration_s = duration_s

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> DryRunProvider:
        """Settings: duration_s (seconds each attempt pretends to run)."""
        try:
            duration = float(settings.get("duration_s", "0"))
        except ValueError:
            raise ValueError(f"dryrun.duration_s: expected a number, got {settings.get('duration_s')!r}") from None
        if duration < 0:
            raise ValueError("dryrun.duration_s: must not be negative")
        return cls(duration)

    def credentials_present(self) -> bool:
        """No credentials needed."""
        return True

    def credentials_hint(self) -> str:
        """Nothing to configure."""
        return "none needed"

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """Record what would run; nothing is started."""
        line = (
            f"dry run: would run {shlex.join(spec.command)} on {spec.offer.provider} {spec.offer.instance_type}"
            f" (attempt {spec.attempt}{', resuming' if spec.resume else ''})\n"
        )
        return RunHandle(
            self.name,
            f"dryrun-{spec.job_id}-{spec.attempt}",
            {"submitted": time.time(), "duration_s": self.duration_s, "log": line},
        )

    async def status(self, handle: RunHandle) -> RunStatus:
        """RUNNING until the pretend duration has passed, then SUCCEEDED with exit status 0."""
        if handle.data.get("cancelled"):
            return RunStatus(RunState.CANCELLED)
        if time.time() - float(handle.data["submitted"]) < float(handle.data.get("duration_s", 0)):
            return RunStatus(RunState.RUNNING)
        return RunStatus(RunState.SUCCEEDED, 0)

    async def cancel(self, handle: RunHandle) -> None:
        """Mark the attempt cancelled (handle data is mutable bookkeeping of this provider)."""
        if isinstance(handle.data, dict):
            handle.data["cancelled"] = True

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """The one line saying what would have run, on stdout."""
        data = str(handle.data.get("log", "")).encode() if stream == "stdout" else b""
        part = data[offset:]
        return LogChunk(stream, offset, part, offset + len(part))
