"""A job as the engine keeps it: `JobRecord` (the domain `Job`, stored as the Job message, the file format of state
folders) plus the engine's `JobBookkeeping` (JSON in the `meta` column).

`JobBookkeeping` is stored as JSON in the `meta` column of the job store with the same keys the engine has always
written (per-attempt entries as `cancel_sent_3`, maps keyed by the attempt number as a string), so state folders of
earlier versions load unchanged; keys this version does not know are kept and written back as they were.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from crucible.scheduler import convert
from crucible.scheduler.domain.job import Offer
from crucible.scheduler.domain.record import Job
from crucible.scheduler.providers.base import RunHandle

#: The two log streams every attempt has, in the order they are mirrored.
STREAMS = ("stdout", "stderr")

#: Per-attempt flags and values, stored as "<prefix><attempt>" keys (the format of the first versions).
_ATTEMPT_FLAG_KEYS = ("cancel_sent_", "released_", "collected_")
_ATTEMPT_VALUE_KEYS = ("collect_error_", "collect_skipped_")

#: Keys a JobBookkeeping reads; any other key of a stored row goes to `unknown` and is written back unchanged.
_KNOWN_KEYS = frozenset(
    {
        "candidates",
        "assumptions",
        "handles",
        "log_starts",
        "log_read",
        "log_capped",
        "log_dropped",
        "blocked_providers",
        "blocked_locations",
        "restarts_used",
        "recoveries",
        "usage_until",
        "code_sha256",
        "code_bytes",
        "cancel_reason",
        "stop_reason",
        "uploaded",
        "inputs_staged",
        "inputs_local",
        "files_expired",
    }
)


@dataclasses.dataclass
class StoredCandidate:
    """An offer the job may launch on and its estimated total cost (stored as the hex of the Offer message)."""

    offer: Offer
    estimated_usd: float | None


@dataclasses.dataclass
class JobBookkeeping:
    """What the engine remembers about a job beyond the Job message; persisted with every save of the job."""

    candidates: list[StoredCandidate] = dataclasses.field(default_factory=list)  # offers, in launch order
    assumptions: list[str] = dataclasses.field(default_factory=list)  # of the cost estimate made at CreateJob
    handles: dict[int, RunHandle] = dataclasses.field(default_factory=dict)  # attempt -> provider's run handle
    log_starts: dict[int, dict[str, int]] = dataclasses.field(default_factory=dict)  # attempt -> stream -> log offset
    log_read: dict[int, dict[str, int]] = dataclasses.field(default_factory=dict)  # attempt -> stream -> provider offset
    log_capped: set[str] = dataclasses.field(default_factory=set)  # streams that reached the per-job cap
    log_dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # stream -> bytes dropped past the cap
    blocked_providers: list[str] = dataclasses.field(default_factory=list)  # after QUOTA/AUTH launch errors
    blocked_locations: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (provider, region)
    restarts_used: int = 0  # restarts after a non-zero exit
    recoveries: int = 0  # relaunches after preemption or a lost run
    usage_until: dict[int, float] = dataclasses.field(default_factory=dict)  # attempt -> usage recorded up to (unix s)
    code_sha256: str = ""  # of the job's code archive in the store; "" without code (or from before the store)
    code_bytes: int | None = None
    cancel_reason: str = ""  # set by CancelJob
    stop_reason: str = ""  # a limit that stops the job (max cost, hard budget, max duration)
    uploaded: dict[str, list[float]] | None = None  # output path -> [size, mtime] already uploaded to the store
    inputs_staged: int | None = None  # input bytes staged to the store (None: not yet)
    inputs_local: bool = False  # staged inputs copied into the current local working folder
    files_expired: bool = False  # store objects and working folder removed by the retention sweep
    cancel_sent: set[int] = dataclasses.field(default_factory=set)  # attempts whose run was sent a cancel
    released: set[int] = dataclasses.field(default_factory=set)  # attempts whose machine was given back
    collected: set[int] = dataclasses.field(default_factory=set)  # attempts whose outputs went to the store
    collect_errors: dict[int, str] = dataclasses.field(default_factory=dict)
    collect_skipped: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # files over the byte limit
    unknown: dict[str, Any] = dataclasses.field(default_factory=dict)  # keys of another version, kept as they were

    @property
    def cancel_text(self) -> str:
        """The reason of a cancellation, as the job's last transition says it."""
        return self.cancel_reason or "cancelled"

    def uploaded_files(self) -> dict[str, list[float]]:
        """The uploaded-outputs table, created on first use (it is updated in place by the uploaders)."""
        if self.uploaded is None:
            self.uploaded = {}
        return self.uploaded

    def remember_handle(self, attempt: int, handle: RunHandle) -> None:
        """Record the run handle of an attempt (what a restarted scheduler re-attaches to)."""
        self.handles[attempt] = RunHandle(handle.provider, handle.ref, dict(handle.data))

    def is_blocked(self, provider: str, region: str) -> bool:
        """Whether a launch error ruled out the provider, or this region of it."""
        return provider in self.blocked_providers or (provider, region) in self.blocked_locations

    # --- JSON (the `meta` column) ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the `meta` column (keys as the first versions wrote them)."""
        out: dict[str, Any] = dict(self.unknown)
        out.update(
            {
                "candidates": [{"offer": convert.offer_hex(c.offer), "estimated_usd": c.estimated_usd} for c in self.candidates],
                "assumptions": list(self.assumptions),
                "handles": {
                    str(n): {"provider": h.provider, "ref": h.ref, "data": dict(h.data)} for n, h in self.handles.items()
                },
                "log_starts": {str(n): dict(v) for n, v in self.log_starts.items()},
                "blocked_providers": list(self.blocked_providers),
                "blocked_locations": [[provider, region] for provider, region in self.blocked_locations],
                "restarts_used": self.restarts_used,
                "recoveries": self.recoveries,
                "usage_until": {str(n): until for n, until in self.usage_until.items()},
            }
        )
        if self.log_read:
            out["log_read"] = {str(n): dict(v) for n, v in self.log_read.items()}
        if self.log_capped:
            out["log_capped"] = dict.fromkeys(sorted(self.log_capped), True)
        if self.log_dropped:
            out["log_dropped"] = dict(self.log_dropped)
        if self.code_sha256:
            out["code_sha256"] = self.code_sha256
        if self.code_bytes is not None:
            out["code_bytes"] = self.code_bytes
        if self.cancel_reason:
            out["cancel_reason"] = self.cancel_reason
        if self.stop_reason:
            out["stop_reason"] = self.stop_reason
        if self.uploaded is not None:
            out["uploaded"] = {path: list(value) for path, value in self.uploaded.items()}
        if self.inputs_staged is not None:
            out["inputs_staged"] = self.inputs_staged
        if self.inputs_local:
            out["inputs_local"] = True
        if self.files_expired:
            out["files_expired"] = True
        for attempt in self.cancel_sent:
            out[f"cancel_sent_{attempt}"] = True
        for attempt in self.released:
            out[f"released_{attempt}"] = True
        for attempt in self.collected:
            out[f"collected_{attempt}"] = True
        for attempt, error in self.collect_errors.items():
            out[f"collect_error_{attempt}"] = error
        for attempt, skipped in self.collect_skipped.items():
            out[f"collect_skipped_{attempt}"] = list(skipped)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobBookkeeping:
        """Read a stored `meta` object (any version: absent keys take their defaults, unknown keys are kept)."""
        book = cls(
            candidates=[
                StoredCandidate(convert.offer_from_hex(c["offer"]), c.get("estimated_usd")) for c in data.get("candidates", [])
            ],
            assumptions=[str(a) for a in data.get("assumptions", [])],
            handles={
                int(n): RunHandle(h["provider"], h["ref"], dict(h.get("data", {}))) for n, h in data.get("handles", {}).items()
            },
            log_starts=_by_attempt(data.get("log_starts", {}), _stream_offsets),
            log_read=_by_attempt(data.get("log_read", {}), _stream_offsets),
            log_capped=set(data.get("log_capped", {})),
            log_dropped={str(s): int(n) for s, n in data.get("log_dropped", {}).items()},
            blocked_providers=[str(p) for p in data.get("blocked_providers", [])],
            blocked_locations=[(str(p), str(r)) for p, r in data.get("blocked_locations", [])],
            restarts_used=int(data.get("restarts_used", 0)),
            recoveries=int(data.get("recoveries", 0)),
            usage_until=_by_attempt(data.get("usage_until", {}), float),
            code_sha256=str(data.get("code_sha256", "") or ""),
            code_bytes=int(data["code_bytes"]) if data.get("code_bytes") is not None else None,
            cancel_reason=str(data.get("cancel_reason", "") or ""),
            stop_reason=str(data.get("stop_reason", "") or ""),
            uploaded={str(p): list(v) for p, v in data["uploaded"].items()} if "uploaded" in data else None,
            inputs_staged=int(data["inputs_staged"]) if data.get("inputs_staged") is not None else None,
            inputs_local=bool(data.get("inputs_local", False)),
            files_expired=bool(data.get("files_expired", False)),
        )
        for key, value in data.items():
            if key in _KNOWN_KEYS:
                continue
            prefix, attempt = _attempt_key(key)
            if prefix == "cancel_sent_" and value:
                book.cancel_sent.add(attempt)
            elif prefix == "released_" and value:
                book.released.add(attempt)
            elif prefix == "collected_" and value:
                book.collected.add(attempt)
            elif prefix == "collect_error_":
                book.collect_errors[attempt] = str(value)
            elif prefix == "collect_skipped_":
                book.collect_skipped[attempt] = [str(p) for p in value]
            else:
                book.unknown[key] = value
        return book

    def copy(self) -> JobBookkeeping:
        """An independent copy (what a store write keeps while the job goes on changing)."""
        return copy.deepcopy(self)


def _stream_offsets(value: dict[str, Any]) -> dict[str, int]:
    return {str(stream): int(offset) for stream, offset in value.items()}


def _by_attempt(table: dict[str, Any], convert: Callable[[Any], Any]) -> dict[int, Any]:
    return {int(attempt): convert(value) for attempt, value in table.items()}


def _attempt_key(key: str) -> tuple[str, int]:
    """("cancel_sent_", 3) for "cancel_sent_3"; ("", 0) for a key that is not a per-attempt one."""
    for prefix in (*_ATTEMPT_FLAG_KEYS, *_ATTEMPT_VALUE_KEYS):
        suffix = key[len(prefix) :]
        if key.startswith(prefix) and suffix.isdigit():
            return prefix, int(suffix)
    return "", 0


@dataclasses.dataclass
class JobRecord:
    """A job as the engine keeps it: its record (spec without the code archive; the job database stores it as the Job
    message) plus the engine's bookkeeping (JSON in `meta`)."""

    job: Job
    spec_sha256: str
    request_id: str = ""
    bookkeeping: JobBookkeeping = dataclasses.field(default_factory=JobBookkeeping)
    seq: int = 0
