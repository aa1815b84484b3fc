"""Honest attack summaries (issue 23): every flip's final question is checked again by the strictest check the
proposer has (QUESTION, plus the LLM judge when GetInfo lists it); a flip that fails it is reported apart as
"flipped_unverified" and not counted as a success, and the trace says which check verified what, with its scores.
"""

from __future__ import annotations

import json
import types

from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.clients.attack import AttackConfig, SecaAttack, Trace, summarize
from crucible.clients.proposer import Equivalence
from tests.unit.test_attack_loop import FakeMesh, Q


class VerifyingMesh(FakeMesh):
    """The scripted mesh whose proposer also has a judge (GetInfo) that accepts or refuses the flipped question."""

    def __init__(self, *, judge_says: bool, judge: bool = True, content: float = 0.75) -> None:
        super().__init__(flip_at=1)
        self.calls: list[str] = []
        self.content = content
        self.bars: list[float | None] = []
        listed = [types.SimpleNamespace(method=pb.EQUIVALENCE_METHOD_QUESTION)]
        if judge:
            listed.append(types.SimpleNamespace(method=pb.EQUIVALENCE_METHOD_LLM_JUDGE))
        info = types.SimpleNamespace(batching=types.SimpleNamespace(max_batch_size=32), equivalence=listed)
        self.judge_says = judge_says
        self.proposer.check_equivalence = self._verify_check
        self.proposer.info = self._info(info)

    async def _verify_check(self, pairs, *, method, threshold, options, timeout, content_threshold=None):
        self.calls.append(method)
        self.bars.append(content_threshold)
        if method == "judge":
            return [Equivalence(0.9 if self.judge_says else 0.2, self.judge_says, 0.5, "judge", 0.9, 0.2) for _ in pairs]
        passes = self.content >= (0.5 if content_threshold is None else content_threshold)  # the proposer's bar: 0.5
        return [
            Equivalence(
                0.8 if passes else 0.0,
                passes,
                0.7,
                "question",
                similarity_method="embedding",
                content_score=self.content,
                content_recall=0.9,
                form_violation="" if passes else "content_change",
            )
            for _ in pairs
        ]


async def test_a_flip_the_judge_refuses_is_reported_apart_and_not_a_success(tmp_path):
    trace = Trace(tmp_path / "t.jsonl")
    mesh = VerifyingMesh(judge_says=False)
    (outcome,) = await SecaAttack(mesh, AttackConfig(iterations=3), trace).campaign([Q], parallel=1)
    assert outcome.status == "flipped_unverified"
    assert outcome.verification["judge"]["equivalent"] is False and outcome.verification["question"]["equivalent"]
    assert outcome.verification["judge"]["entailment_backward"] == 0.2
    assert mesh.calls[-2:] == ["question", "judge"]
    summary = summarize([outcome])
    assert summary["flipped"] == 0 and summary["flipped_unverified"] == 1 and summary["attack_success_rate"] == 0.0
    assert summary["verified_by"] == "judge,question"
    events = [json.loads(line) for line in trace.path.read_text().splitlines()]
    (checked,) = [e for e in events if e["event"] == "verification"]
    assert checked["checks"]["question"]["content_score"] == 0.75
    candidate = next(e for e in events if e["event"] == "candidate" and e["check"])
    assert candidate["check"]["similarity_method"] == "embedding"
    done = next(e for e in events if e["event"] == "done")
    assert done["status"] == "flipped_unverified" and done["verification"]["judge"]["score"] == 0.2


async def test_a_flip_every_check_accepts_counts_and_without_a_judge_question_verifies(tmp_path):
    (verified,) = await SecaAttack(VerifyingMesh(judge_says=True), AttackConfig(iterations=3)).campaign([Q], parallel=1)
    assert verified.status == "flipped" and set(verified.verification) == {"question", "judge"}
    mesh = VerifyingMesh(judge_says=False, judge=False)
    (alone,) = await SecaAttack(mesh, AttackConfig(iterations=3)).campaign([Q], parallel=1)
    assert alone.status == "flipped" and set(alone.verification) == {"question"} and "judge" not in mesh.calls
    summary = summarize([verified, alone])
    assert summary["flipped"] == 2 and summary["flipped_unverified"] == 0 and summary["attack_success_rate"] == 1.0


async def test_a_flip_is_verified_at_the_stricter_content_bar_the_search_does_not_use(tmp_path):
    """The search passes candidates at the proposer's content bar (0.5); the flip must also reach
    verify_content_threshold (0.7), because the search selects the candidates the check wrongly passed."""
    mesh = VerifyingMesh(judge_says=True, judge=False, content=0.6)
    (weak,) = await SecaAttack(mesh, AttackConfig(iterations=3)).campaign([Q], parallel=1)
    assert weak.status == "flipped_unverified"
    assert weak.verification["question"]["equivalent"] is False and weak.verification["question"]["content_threshold"] == 0.7
    assert mesh.bars[-1] == 0.7 and None in mesh.bars[:-1]  # the search's checks kept the proposer's bar
    (loose,) = await SecaAttack(
        VerifyingMesh(judge_says=True, judge=False, content=0.6), AttackConfig(iterations=3, verify_content_threshold=None)
    ).campaign([Q], parallel=1)
    assert loose.status == "flipped"


def test_a_verification_bar_outside_0_1_is_refused_before_any_work(tmp_path):
    import subprocess
    import sys

    import pytest

    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        AttackConfig(verify_content_threshold=1.5)
    done = subprocess.run(
        [sys.executable, "-m", "crucible", "attack", "--builtin", "--verify-content-threshold", "nan", "--base-port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "--verify-content-threshold must be within [0, 1], got nan" in done.stderr and "Traceback" not in done.stderr
