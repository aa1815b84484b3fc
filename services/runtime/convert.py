"""Conversions every servicer shares: protobuf Timestamp and Duration to and from Python times.

Checks of client-sent values (ranges, field names in errors) live in `crucible.runtime.validation`; these only convert.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf import duration_pb2, timestamp_pb2

NS_PER_S = 1_000_000_000


def timestamp_from_ns(ns: int) -> timestamp_pb2.Timestamp:
    """Timestamp of integer nanoseconds since the Unix epoch (exact)."""
    return timestamp_pb2.Timestamp(seconds=ns // NS_PER_S, nanos=ns % NS_PER_S)


def timestamp_from_unix(unix_s: float) -> timestamp_pb2.Timestamp:
    """Timestamp of a Unix time in (float) seconds, such as `time.time()`."""
    return timestamp_from_ns(int(unix_s * NS_PER_S))


def timestamp_from_datetime(when: dt.datetime) -> timestamp_pb2.Timestamp:
    """Timestamp of a datetime; a naive datetime is taken as UTC."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc))
    return ts


def unix_seconds(ts: timestamp_pb2.Timestamp) -> float:
    """Unix seconds of a Timestamp."""
    return ts.ToNanoseconds() / NS_PER_S


def duration_from_ns(ns: int) -> duration_pb2.Duration:
    """Duration of integer nanoseconds (exact)."""
    return duration_pb2.Duration(seconds=ns // NS_PER_S, nanos=ns % NS_PER_S) if ns >= 0 else _negative(ns)


def duration_from_seconds(seconds: float) -> duration_pb2.Duration:
    """Duration of (float) seconds."""
    return duration_from_ns(int(seconds * NS_PER_S))


def seconds(duration: duration_pb2.Duration) -> float:
    """Seconds of a Duration, as a float."""
    return duration.ToNanoseconds() / NS_PER_S


def _negative(ns: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)  # protobuf's rule for negatives: seconds and nanos share the sign
    return d
