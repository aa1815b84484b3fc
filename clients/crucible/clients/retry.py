"""Retries for long model calls on a busy mesh: backoff with jitter, and deadlines sized to the work they wait for.

A campaign must not lose a question because a service was busy: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and UNAVAILABLE
are retried after a jittered exponential backoff with a deadline that grows with what the service reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Codes that mean "busy or slow", never "wrong": the same call may succeed later.
RETRYABLE = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a busy call is retried.

    Attempt k (k >= 1) waits a random time in [(1 - jitter) * b, b] with b = min(max_backoff_s,
    initial_backoff_s * multiplier ** (k - 1)) ("full jitter" when jitter = 1). The deadline of the first attempt is
    `floor_s` or `latency_factor` times the slowest call of that kind seen so far, whichever is larger; a
    DEADLINE_EXCEEDED doubles it, and a refusal that states the expected wait (the batcher's
    QUEUE_WAIT_EXCEEDS_DEADLINE: metadata expected_wait_s) raises it to 1.5x that wait plus 5 s; never above
    `max_deadline_s`. After `attempts` tries the last error is raised as AttackCallError.
    """

    attempts: int = 8
    initial_backoff_s: float = 1.0
    multiplier: float = 2.0
    max_backoff_s: float = 30.0
    jitter: float = 0.5
    latency_factor: float = 4.0
    max_deadline_s: float = 900.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_backoff_s < 0 or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("attempts >= 1, initial_backoff_s >= 0, multiplier >= 1 and jitter in [0, 1] are required")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * rng.random())


class AttackCallError(RuntimeError):
    """A service call that still failed after every retry (or failed with a non-retryable status)."""

    def __init__(self, what: str, code: grpc.StatusCode | None, details: str, attempts: int, seconds: float) -> None:
        name = code.name if code is not None else "ERROR"
        super().__init__(f"{what}: {name} after {attempts} attempt(s) over {seconds:.0f}s: {details}")
        self.code = code
        self.attempts = attempts


def _expected_wait(err: grpc.RpcError) -> float | None:
    """The wait a batcher said the call would need (ErrorInfo metadata expected_wait_s), if it said one."""
    try:
        from crucible.clients.status import parse_status_details

        info, _ = parse_status_details(err)
    except Exception:  # details missing or unparsable: no hint
        return None
    if info is None or "expected_wait_s" not in info.metadata:
        return None
    try:
        return float(info.metadata["expected_wait_s"])
    except ValueError:
        return None


class Retrier:
    """Runs calls with RetryPolicy; remembers the slowest successful call per kind to size later deadlines."""

    def __init__(self, policy: RetryPolicy, floors: dict[str, float], *, seed: int | None = None) -> None:
        self.policy = policy
        self.floors = dict(floors)
        self.slowest: dict[str, float] = {}
        self.retries = 0
        self._rng = random.Random(seed)

    def deadline(self, kind: str) -> float:
        """The first-attempt deadline of a call of `kind`, in seconds."""
        seen = self.slowest.get(kind, 0.0) * self.policy.latency_factor
        return min(self.policy.max_deadline_s, max(self.floors.get(kind, 60.0), seen))

    async def call(
        self, kind: str, what: str, fn: Callable[[float], Awaitable[T]], sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> tuple[T, int]:
        """`await fn(deadline_s)` until it succeeds; returns (result, retries used). Raises AttackCallError."""
        policy = self.policy
        deadline = self.deadline(kind)
        started = time.monotonic()
        for attempt in range(1, policy.attempts + 1):
            t0 = time.monotonic()
            try:
                result = await fn(deadline)
            except grpc.RpcError as err:
                code = err.code() if callable(getattr(err, "code", None)) else None
                details = err.details() if callable(getattr(err, "details", None)) else str(err)
                if code not in RETRYABLE or attempt == policy.attempts:
                    raise AttackCallError(what, code, details or "", attempt, time.monotonic() - started) from err
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    deadline = min(policy.max_deadline_s, deadline * 2.0)
                wait = _expected_wait(err)
                if wait is not None:
                    deadline = min(policy.max_deadline_s, max(deadline, 1.5 * wait + 5.0))
                pause = policy.backoff(attempt, self._rng)
                self.retries += 1
                log.info(
                    "%s: %s (attempt %s/%s); retrying in %.1fs with a %.0fs deadline",
                    what,
                    code.name if code else "error",
                    attempt,
                    policy.attempts,
                    pause,
                    deadline,
                )
                await sleep(pause)
                continue
            took = time.monotonic() - t0
            self.slowest[kind] = max(self.slowest.get(kind, 0.0), took)
            return result, attempt - 1
        raise AssertionError("unreachable")  # the loop returns or raises
