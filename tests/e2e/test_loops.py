"""End to end: the reward loop and the attack loop over the real mesh (detector, proposer, scorer) on loopback.

Real embedded models (SmolLM2, MiniLM), kept few and short; the SDK is the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from crucible.clients.attack import MCQ, AttackConfig, SecaAttack, Trace, summarize
from crucible.clients.mesh import Mesh
from crucible.clients.reward import CompositeReward, RewardConfig
from crucible.mesh import MeshLauncher as Launcher
from crucible.mesh import default_ports
from tests.conftest import free_port_block

pytestmark = pytest.mark.slow

ORIGINAL = "The city council voted on Tuesday to expand the bike lane network across the downtown area next spring."
PARAPHRASE = "On Tuesday the city council approved a plan to extend downtown bike lanes starting next spring."
UNRELATED = "Penguins huddle together on the ice to keep warm during the long and dark Antarctic winter months."
#: One the embedded target (SmolLM2-135M, float32) answers right, so the search really runs (one it answers wrong
#: ends at iteration 0 and tests nothing); the demo's built-in set has it.
QUESTION = MCQ("e2e/0", "astronomy", "Which planet is known as the Red Planet?", ("Mars", "Venus", "Jupiter", "Saturn"), 0)


@pytest.fixture(scope="module")
def mesh_base(tmp_path_factory):
    base = free_port_block(5)
    work = tmp_path_factory.mktemp("loops")
    launcher = Launcher(
        ["detector", "proposer", "scorer"],
        ports=default_ports(base),
        log_dir=work / "logs",
        env={"CRUCIBLE_STATE_DIR": str(work / "state")},
    )
    launcher.start()
    import asyncio

    try:
        asyncio.run(launcher.wait_ready(timeout=240))
    except BaseException:
        launcher.stop()
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (work / "logs").glob("*.log"))
        pytest.fail("mesh did not come up:\n" + logs)
    yield base
    launcher.stop()


async def test_composite_reward_components_and_group_advantages(mesh_base):
    async with Mesh.local(mesh_base) as mesh:
        reward = CompositeReward(mesh, RewardConfig(detector_signal="criterion"))
        group = await reward.score_group(ORIGINAL, [PARAPHRASE, UNRELATED, "", "Bikes.\x00"])
    faithful, unrelated, empty, short = group.rewards
    assert faithful.similarity > unrelated.similarity + 0.15
    assert 0.0 <= faithful.detector <= 1.0 and 0.0 <= faithful.fluency <= 1.0
    assert faithful.criterion is not None and faithful.perplexity is not None and faithful.perplexity > 1
    assert empty.total == -1.0 and empty.flags == ("empty",)
    assert "too_short" in short.flags and short.penalty == -0.5
    assert faithful.total > unrelated.total > empty.total
    assert abs(sum(group.advantages)) < 1e-6 and group.advantages[0] > 0 > group.advantages[2]


async def test_degenerate_repetition_scores_below_sensible_rewrites(mesh_base):
    """Reward hygiene over the real services, with the demo's settings: the repetition `make run` scored +1.65 (as it
    still does with the hygiene weights at 0) loses the repetition and language components and falls below both a
    faithful and a looser rewrite, which keep their scores."""
    from crucible.demo import REWARD_SAMPLES

    original, (faithful, degenerate) = REWARD_SAMPLES[1]
    looser = (
        "People who exercise often tend to rest better at night and feel calmer, and their weight stays in check. "
        "Health experts suggest a couple of hours of gentle movement over a week, and think small bits of activity help."
    )
    config = RewardConfig(detector_signal="criterion", perplexity_target=40.0, perplexity_min=8.0, perplexity_max=250.0)
    unhygienic = dataclasses.replace(config, w_repetition=0.0, w_language=0.0, w_length=0.0)
    async with Mesh.local(mesh_base) as mesh:
        scored = await CompositeReward(mesh, config).score([original] * 3, [faithful, looser, degenerate])
        before = await CompositeReward(mesh, unhygienic).score([original] * 3, [faithful, looser, degenerate])
    good, loose, bad = scored
    assert bad.total < loose.total and bad.total < good.total
    assert before[2].total - bad.total > 0.8  # the hygiene takes most of the degenerate text's reward away
    assert before[0].total == pytest.approx(good.total) and before[1].total == pytest.approx(loose.total)
    assert "repetitive" in bad.flags and bad.repetition > 0.8 and good.repetition < 0.05
    assert good.language == 1.0 and good.length == 1.0
    parts = bad.components(config)
    assert parts["repetition"] < -0.8 and sum(parts.values()) == pytest.approx(bad.total)


async def test_attack_writes_a_trace_and_resumes_without_redoing_work(mesh_base, tmp_path):
    trace = Trace(tmp_path / "trace.jsonl")
    async with Mesh.local(mesh_base) as mesh:
        attack = SecaAttack(mesh, AttackConfig(iterations=2, seed=3), trace)
        outcomes = await attack.campaign([QUESTION], parallel=1)
        lines = trace.path.read_text().splitlines()
        events = [json.loads(line) for line in lines]
        again = await SecaAttack(mesh, AttackConfig(iterations=2, seed=3), trace).campaign([QUESTION], parallel=1)
    (outcome,) = outcomes
    assert outcome.status in ("flipped", "flipped_unverified", "not_flipped"), outcome
    if outcome.status.startswith("flipped"):  # every flip is verified again, with the scores in the outcome (issue 23)
        assert outcome.verification["question"]["equivalent"] is (outcome.status == "flipped")
    assert events[0]["event"] == "original" and events[-1]["event"] == "done"
    assert 1 <= outcome.iterations <= 2 and outcome.candidates_generated >= 3
    assert outcome.candidates_valid + sum(outcome.dropped.values()) == outcome.candidates_generated
    iterations = [e for e in events if e["event"] == "iteration"]
    assert [e["iteration"] for e in iterations] == list(range(1, outcome.iterations + 1))
    for e in (e for e in events if e["event"] == "candidate"):
        assert len(e["probabilities"]) == 4
        if e["equivalent"]:  # only improving candidates are checked; a pass is a question that passed the form checks
            assert e["candidate"].rstrip().endswith("?") or not e["form_violation"]
    assert trace.path.read_text().splitlines() == lines  # resumed: nothing redone
    assert again[0].qid == outcome.qid and summarize(again)["questions"] == 1


def test_reward_and_attack_commands_print_tables(mesh_base, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"original": ORIGINAL, "completions": [PARAPHRASE, UNRELATED]}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reward = subprocess.run(
        [sys.executable, "-m", "crucible", "reward", "--data", str(data), "--base-port", str(mesh_base)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert reward.returncode == 0, reward.stderr
    assert "2 pairs, mean reward" in reward.stdout and "similarity" in reward.stdout

    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    (mmlu / "geography_test.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\n"
        '"Which planet is known as the Red Planet?",Mars,Venus,Jupiter,Saturn,0\n'
    )
    attack = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible",
            "attack",
            "--data",
            str(mmlu),
            "--iterations",
            "1",
            "--parallel",
            "1",
            "--trace",
            str(tmp_path / "t.jsonl"),
            "--base-port",
            str(mesh_base),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert attack.returncode == 0, attack.stderr
    for metric in (
        "attack_success_rate",
        "questions",
        "target_accuracy",
        "valid_candidate_rate",
        "equivalence_pass_rate",
        "errors",
    ):
        assert metric in attack.stdout
