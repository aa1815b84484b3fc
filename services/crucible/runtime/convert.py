"""Conversions every servicer shares: Timestamp and Duration to and from Python times, model identities, batching
settings and the caller's deadline. Checks of client-sent values live in `crucible.runtime.validation`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Protocol

from google.protobuf import duration_pb2, timestamp_pb2

from crucible.api.common.v1 import common_pb2

if TYPE_CHECKING:
    from crucible.models.loading import ModelIdentity
    from crucible.runtime.batching import BatchSettings

NS_PER_S = 1_000_000_000


def timestamp_from_ns(ns: int) -> timestamp_pb2.Timestamp:
    """Timestamp of integer nanoseconds since the Unix epoch (exact)."""
    return timestamp_pb2.Timestamp(seconds=ns // NS_PER_S, nanos=ns % NS_PER_S)


def timestamp_from_unix(unix_s: float) -> timestamp_pb2.Timestamp:
    """Timestamp of a Unix time in (float) seconds, such as `time.time()`."""
    return timestamp_from_ns(round(unix_s * NS_PER_S))  # nearest ns: 0.3 s is 300000000 ns, not 299999999


def timestamp_from_datetime(when: dt.datetime) -> timestamp_pb2.Timestamp:
    """Timestamp of a datetime; a naive datetime is taken as UTC."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
    return ts


def unix_seconds(ts: timestamp_pb2.Timestamp) -> float:
    """Unix seconds of a Timestamp."""
    return ts.ToNanoseconds() / NS_PER_S


def duration_from_ns(ns: int) -> duration_pb2.Duration:
    """Duration of integer nanoseconds (exact)."""
    return duration_pb2.Duration(seconds=ns // NS_PER_S, nanos=ns % NS_PER_S) if ns >= 0 else _negative(ns)


def duration_from_seconds(seconds: float) -> duration_pb2.Duration:
    """Duration of (float) seconds."""
    return duration_from_ns(round(seconds * NS_PER_S))  # nearest ns, as every Duration the services send


def seconds(duration: duration_pb2.Duration) -> float:
    """Seconds of a Duration, as a float."""
    return duration.ToNanoseconds() / NS_PER_S


def model_identity(identity: ModelIdentity) -> common_pb2.ModelIdentity:
    """A loaded model's identity (crucible.models.ModelIdentity) as common.v1.ModelIdentity."""
    return common_pb2.ModelIdentity(
        name=identity.name,
        revision=identity.revision,
        dtype=identity.dtype,
        device=identity.device,
        quantization=identity.quantization,
    )


def batching_settings(settings: BatchSettings) -> common_pb2.BatchingSettings:
    """A batcher's settings as common.v1.BatchingSettings; max_wait rounded to the nearest nanosecond."""
    return common_pb2.BatchingSettings(
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait=duration_from_seconds(settings.max_wait_s),
        max_queue_size=settings.max_queue_size,
    )


class _HasDeadline(Protocol):
    def time_remaining(self) -> float | None: ...


#: Seconds beyond which a "remaining time" means no deadline (grpc reports a huge number for a call without one).
_NO_DEADLINE_S = 1e8


def remaining_seconds(context: _HasDeadline) -> float | None:
    """Seconds left before the caller's deadline (a grpc.aio.ServicerContext), or None when the call has none."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < _NO_DEADLINE_S else None


def _negative(ns: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(ns)  # protobuf's rule for negatives: seconds and nanos share the sign
    return d
