"""Shared protobuf time conversions: exact for nanoseconds, protobuf's sign rule for negative durations.

These replace per-module copies in the scheduler, cost and model services.
"""

import datetime as dt

from crucible.runtime import convert


def test_timestamp_round_trips_exact_nanoseconds() -> None:
    ns = 1_764_000_000_123_456_789
    ts = convert.timestamp_from_ns(ns)
    assert (ts.seconds, ts.nanos) == (1_764_000_000, 123_456_789) and ts.ToNanoseconds() == ns
    assert abs(convert.unix_seconds(convert.timestamp_from_unix(1.5)) - 1.5) < 1e-9


def test_naive_datetime_is_utc() -> None:
    naive = convert.timestamp_from_datetime(dt.datetime(2026, 5, 7, 12, 0, 0))
    aware = convert.timestamp_from_datetime(dt.datetime(2026, 5, 7, 12, 0, 0, tzinfo=dt.timezone.utc))
    assert naive == aware and naive.seconds == 1_778_155_200


def test_durations_including_negative() -> None:
    d = convert.duration_from_seconds(2.25)
    assert (d.seconds, d.nanos) == (2, 250_000_000) and convert.seconds(d) == 2.25
    neg = convert.duration_from_ns(-1_500_000_000)
    assert (neg.seconds, neg.nanos) == (-1, -500_000_000) and convert.seconds(neg) == -1.5
