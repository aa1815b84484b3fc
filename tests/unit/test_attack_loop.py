"""The attack loop's plumbing without models: retries with backoff on busy answers, parallelism bounded by the
services' batching, drop counts and the summary, and resumption that redoes errored questions.

The mesh here is a small in-process stand-in returning scripted replies and real grpc.aio errors; the loop against
the real services runs in tests/e2e/test_loops.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import types

import grpc
import pytest

from crucible.clients.attack import MCQ, AttackConfig, AttackOutcome, SecaAttack, Trace, summarize
from crucible.clients.proposer import Equivalence, Proposal
from crucible.clients.retry import AttackCallError, Retrier, RetryPolicy
from crucible.clients.scorer import ChoiceScores
from crucible.runtime.errors import ResourceExhausted, to_status

Q = MCQ("toy/0", "toy", "Which planet is closest to the Sun?", ("Venus", "Earth", "Mercury", "Mars"), 2)


class Busy(grpc.aio.AioRpcError):
    """A real grpc.aio error with a status code (and optionally the batcher's expected-wait detail)."""

    def __init__(self, code: grpc.StatusCode, expected_wait: float | None = None) -> None:
        trailing = grpc.aio.Metadata()
        if expected_wait is not None:  # what the batcher sends (crucible.runtime.errors.to_status)
            err = ResourceExhausted(
                "busy", reason="QUEUE_WAIT_EXCEEDS_DEADLINE", metadata={"expected_wait_s": f"{expected_wait:.3f}"}
            )
            trailing = grpc.aio.Metadata(*to_status(err, "proposer.crucible").trailing_metadata)
        super().__init__(code, grpc.aio.Metadata(), trailing, details="busy")


def _scores(top: int, target_logprob: float) -> ChoiceScores:
    logprobs = [-3.0, -2.0, -1.0, -4.0]
    logprobs[1] = target_logprob
    if top != 2:
        logprobs[top] = 0.0
    probs = [1.0 / 4] * 4
    return ChoiceScores("p", [" A", " B", " C", " D"], logprobs, probs, [1] * 4, top)


class FakeMesh:
    """Scripted proposer and scorer: the first `fail` calls of each kind raise `error`, later ones answer."""

    def __init__(
        self, *, fail: int = 0, error: grpc.StatusCode = grpc.StatusCode.DEADLINE_EXCEEDED, batch: int = 32, flip_at: int = 2
    ) -> None:
        self.fail = {"propose": fail, "score": fail, "check": fail}
        self.error = error
        self.flip_at = flip_at
        self.deadlines: dict[str, list[float]] = {"propose": [], "score": [], "check": []}
        self.active = 0
        self.most_active = 0
        info = types.SimpleNamespace(batching=types.SimpleNamespace(max_batch_size=batch))
        self.proposer = types.SimpleNamespace(propose=self._propose, check_equivalence=self._check, info=self._info(info))
        self.scorer = types.SimpleNamespace(score_choices=self._score, info=self._info(info))
        self.iteration = 0

    @staticmethod
    def _info(info):
        async def call(timeout=None):
            return info

        return call

    async def _maybe_fail(self, kind: str, timeout: float) -> None:
        self.deadlines[kind].append(timeout)
        if self.fail[kind] > 0:
            self.fail[kind] -= 1
            raise Busy(self.error)

    async def _propose(self, text, *, seed, timeout, **kwargs):
        await self._maybe_fail("propose", timeout)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        await asyncio.sleep(0.01)
        self.active -= 1
        return Proposal(
            [f"{text} v{seed % 7}", "Which planet orbits nearest the Sun?"],
            ["STOP"] * 2,
            1,
            0,
            seed,
            "",
            {},
            {"empty": 1, "answers": 2},
        )

    async def _score(self, queries, *, timeout):
        await self._maybe_fail("score", timeout)
        if len(queries) == 1:
            return [_scores(2, -2.0)]
        self.iteration += 1
        flip = self.iteration >= self.flip_at
        return [_scores(1 if flip and i == 0 else 2, -1.5 + 0.1 * self.iteration - 0.01 * i) for i in range(len(queries))]

    async def _check(self, pairs, *, method, threshold, options, timeout, content_threshold=None):
        await self._maybe_fail("check", timeout)
        assert method == "question" and options == Q.options
        return [Equivalence(0.9, True, 0.7, "question") for _ in pairs]


async def _no_sleep(seconds: float) -> None:
    return None


def test_backoff_grows_to_its_cap_with_jitter_below_it():
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=8.0, jitter=0.5)
    rng = random.Random(0)
    waits = [policy.backoff(k, rng) for k in range(1, 8)]
    for k, wait in enumerate(waits, start=1):
        cap = min(8.0, 2.0 ** (k - 1))
        assert cap * 0.5 <= wait <= cap
    assert len(set(waits)) == len(waits)  # jittered


async def test_busy_codes_are_retried_with_growing_deadlines_and_other_codes_are_not():
    retrier = Retrier(RetryPolicy(attempts=4, initial_backoff_s=0.0), {"propose": 10.0})
    seen: list[float] = []

    async def flaky(deadline: float) -> str:
        seen.append(deadline)
        if len(seen) < 3:
            raise Busy(grpc.StatusCode.DEADLINE_EXCEEDED)
        return "ok"

    result, retries = await retrier.call("propose", "Propose", flaky, sleep=_no_sleep)
    assert (result, retries) == ("ok", 2) and seen == [10.0, 20.0, 40.0]

    async def always(deadline: float) -> str:
        raise Busy(grpc.StatusCode.RESOURCE_EXHAUSTED)

    with pytest.raises(AttackCallError) as caught:
        await retrier.call("propose", "Propose q1", always, sleep=_no_sleep)
    assert caught.value.attempts == 4 and "RESOURCE_EXHAUSTED after 4 attempt(s)" in str(caught.value)

    calls = []

    async def invalid(deadline: float) -> str:
        calls.append(deadline)
        raise Busy(grpc.StatusCode.INVALID_ARGUMENT)

    with pytest.raises(AttackCallError):
        await retrier.call("score", "Score", invalid, sleep=_no_sleep)
    assert len(calls) == 1  # a bad request is not retried


async def test_a_refusal_stating_its_expected_wait_raises_the_next_deadline_to_fit_it():
    retrier = Retrier(RetryPolicy(attempts=3, initial_backoff_s=0.0), {"propose": 10.0})
    seen: list[float] = []
    error = Busy(grpc.StatusCode.RESOURCE_EXHAUSTED, expected_wait=100.0)

    async def refused_once(deadline: float) -> str:
        seen.append(deadline)
        if len(seen) == 1:
            raise error
        return "ok"

    await retrier.call("propose", "Propose", refused_once, sleep=_no_sleep)
    assert seen == [10.0, 155.0]  # 1.5 x the stated wait + 5 s


async def test_slow_calls_raise_later_deadlines():
    retrier = Retrier(RetryPolicy(latency_factor=4.0), {"score": 1.0})
    retrier.slowest["score"] = 5.0
    assert retrier.deadline("score") == 20.0
    assert retrier.deadline("other") == 60.0


async def test_busy_services_slow_the_campaign_but_no_question_errors(tmp_path):
    mesh = FakeMesh(fail=3, error=grpc.StatusCode.UNAVAILABLE)
    config = AttackConfig(iterations=4, retry=RetryPolicy(attempts=5, initial_backoff_s=0.0))
    attack = SecaAttack(mesh, config, Trace(tmp_path / "t.jsonl"))
    outcomes = await attack.campaign([Q], parallel=1)
    assert [o.status for o in outcomes] == ["flipped"]
    assert outcomes[0].retries == 9  # three of each kind of call
    assert outcomes[0].dropped == {"empty": 4, "answers": 8}  # 1 parent in iteration 1, then 3: 4 proposals
    assert (outcomes[0].candidates_generated, outcomes[0].candidates_valid) == (20, 8)


async def test_a_question_errors_only_after_every_retry_and_is_redone_on_resume(tmp_path):
    trace = Trace(tmp_path / "t.jsonl")
    config = AttackConfig(iterations=2, retry=RetryPolicy(attempts=2, initial_backoff_s=0.0))
    first = await SecaAttack(FakeMesh(fail=5), config, trace).campaign([Q], parallel=1)
    assert first[0].status == "error" and "DEADLINE_EXCEEDED after 2 attempt(s)" in first[0].error
    again = await SecaAttack(FakeMesh(), config, trace).campaign([Q], parallel=1)
    assert [o.status for o in again] == ["flipped"]


async def test_parallel_is_bounded_by_what_the_services_batch():
    attack = SecaAttack(FakeMesh(batch=20), AttackConfig())
    assert await attack.admitted_parallel(5) == 2  # 20 rows per batch, 9 rows per question iteration
    assert await SecaAttack(FakeMesh(batch=64), AttackConfig()).admitted_parallel(3) == 3
    questions = [dataclasses.replace(Q, qid=f"toy/{i}") for i in range(6)]
    mesh = FakeMesh(batch=9, flip_at=100)
    await SecaAttack(mesh, AttackConfig(iterations=1)).campaign(questions, parallel=6)
    assert mesh.most_active <= 3  # one question at a time sends 3 concurrent Propose calls


def test_summary_reports_accuracy_validity_drops_equivalence_and_errors():
    def outcome(status, **kw):
        return AttackOutcome("q", status, 1, 0, 1, "q?", -1.0, -2.0, kw.pop("checked", 0), kw.pop("passed", 0), **kw)

    outcomes = [
        outcome(
            "flipped",
            checked=4,
            passed=2,
            candidates_generated=9,
            candidates_valid=6,
            dropped={"answers": 2, "empty": 1},
            final_equivalent=True,
            final_score=0.8,
        ),
        outcome(
            "not_flipped",
            checked=2,
            passed=0,
            candidates_generated=9,
            candidates_valid=3,
            dropped={"not_a_question": 6},
            retries=2,
        ),
        outcome("skipped_wrong"),
        outcome("error", error="x"),
    ]
    s = summarize(outcomes)
    assert s["target_accuracy"] == pytest.approx(2 / 3) and s["errors"] == 1 and s["attacked"] == 2
    assert s["valid_candidate_rate"] == pytest.approx(9 / 18) and s["equivalence_pass_rate"] == pytest.approx(2 / 6)
    assert (s["dropped_answers"], s["dropped_empty"], s["dropped_not_a_question"]) == (2, 1, 6)
    assert s["flipped_final_equivalent"] == 1 and s["retries"] == 2
