"""Checks of protobuf well-known-type inputs shared by the services: Durations and Timestamps within usable ranges.

Each failure is an InvalidArgument naming the field; values come back as integer nanoseconds (exact, int64-safe).
"""

from __future__ import annotations

from typing import Any

from crucible.runtime.errors import InvalidArgument

NS_PER_S = 1_000_000_000
#: Longest duration any service accepts: 100 years (in nanoseconds it stays far inside int64, whatever rounding follows).
MAX_DURATION_S = 100 * 366 * 24 * 3600
#: Timestamps must fall between the Unix epoch and 2262-04-11, the range int64 nanoseconds can hold (SQLite INTEGER).
MAX_TIMESTAMP_S = (2**63 - 1) // NS_PER_S - 1


def duration_ns(value: Any, field: str, *, allow_zero: bool = True, max_seconds: int = MAX_DURATION_S) -> int:
    """A google.protobuf.Duration as nanoseconds in [0 (or 1), max_seconds]; InvalidArgument otherwise."""
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument.field(field, "must not be negative", reason="NEGATIVE_DURATION")
    if value.nanos >= NS_PER_S:
        raise InvalidArgument.field(field, "nanos must be below 1e9", reason="BAD_DURATION")
    if value.seconds > max_seconds:
        raise InvalidArgument.field(field, f"must be at most {max_seconds} s", reason="DURATION_TOO_LONG")
    ns = value.seconds * NS_PER_S + value.nanos
    if ns == 0 and not allow_zero:
        raise InvalidArgument.field(field, "must be positive", reason="BAD_DURATION")
    return ns


def timestamp_ns(value: Any, field: str) -> int:
    """A google.protobuf.Timestamp as nanoseconds since the epoch, between 1970 and 2262; InvalidArgument otherwise."""
    if not 0 <= value.nanos < NS_PER_S:
        raise InvalidArgument.field(field, "nanos must be within 0..999999999", reason="BAD_TIME")
    if not 0 <= value.seconds <= MAX_TIMESTAMP_S:
        raise InvalidArgument.field(field, "must be between 1970-01-01 and 2262-04-11", reason="BAD_TIME")
    return value.seconds * NS_PER_S + value.nanos
