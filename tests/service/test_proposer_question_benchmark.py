"""The default QUESTION check measured on real proposer candidates labelled by hand (issue 23).

tests/data/question_equivalence_real.jsonl: pairs SmolLM2-135M really produced for MMLU questions, labelled by a
careful reader (rules: tests/data/question_equivalence_RULES.md). Through the real server with its default settings
(MiniLM, no NLI model, no judge), "equivalent" must be right at least 90% of the times it is said (precision), and
still be said for some of the faithful rewrites (recall).
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from crucible import models
from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as pb_grpc
from crucible.proposer.config import ProposerConfig
from crucible.proposer.server import create_server
from crucible.runtime.config import load_config

pytestmark = pytest.mark.slow

BENCHMARK = Path(__file__).resolve().parents[1] / "data" / "question_equivalence_real.jsonl"
CATEGORIES = {"faithful", "added", "dropped", "refocused", "changed_answer", "garbled", "statement", "answer"}
#: What the default check must keep on this set: the issue's bar for precision, and a floor under the measured recall.
MIN_PRECISION = 0.9
MIN_RECALL = 0.5


def _pairs() -> list[dict]:
    return [json.loads(line) for line in BENCHMARK.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_benchmark_is_real_labelled_and_covers_every_kind():
    rows = _pairs()
    assert len(rows) >= 200
    assert {r["category"] for r in rows} == CATEGORIES
    for r in rows:
        assert r["label"] == ("equivalent" if r["category"] == "faithful" else "not_equivalent"), r
        assert r["original"].strip() and r["candidate"].strip() and len(r["choices"]) == 4, r
    assert len({r["subject"] for r in rows}) >= 8


@pytest.fixture(scope="module")
async def stub():
    try:
        models.prepare_models(log=lambda line: None)
    except models.ModelPackageMissingError as exc:
        pytest.skip(str(exc))
    config = load_config(ProposerConfig, "proposer", env={}, port=0, metrics_enabled=False, device="cpu", dtype="float32")
    server, _port = create_server(config)
    await server.start()
    await server.wait_ready(180)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield pb_grpc.ProposerServiceStub(channel)
    finally:
        await server.stop(0)


async def test_the_default_question_check_is_precise_on_real_candidates(stub):
    rows = _pairs()
    verdicts = []
    for start in range(0, len(rows), 128):
        chunk = rows[start : start + 128]
        reply = await stub.CheckEquivalence(
            pb.CheckEquivalenceRequest(
                pairs=[pb.TextPair(first=r["original"], second=r["candidate"], options=r["choices"]) for r in chunk],
                method=pb.EQUIVALENCE_METHOD_QUESTION,
            ),
            timeout=300,
        )
        verdicts.extend(reply.results)
    accepted = [(r, v) for r, v in zip(rows, verdicts, strict=True) if v.equivalent]
    right = [r for r, _ in accepted if r["label"] == "equivalent"]
    positives = sum(r["label"] == "equivalent" for r in rows)
    precision, recall = len(right) / max(1, len(accepted)), len(right) / positives
    wrong = [
        (r["category"], r["original"][:60], r["candidate"], round(v.content_score, 2)) for r, v in accepted if r not in right
    ]
    print(f"default QUESTION check: precision {precision:.3f} ({len(right)}/{len(accepted)}), recall {recall:.3f}; {wrong}")
    assert precision >= MIN_PRECISION, wrong
    assert recall >= MIN_RECALL


async def test_the_attacks_verification_bar_is_precise_on_the_candidates_a_search_selected(stub):
    """The batch `campaign-selected` holds the candidates a SECA campaign kept because they moved the target: the
    ones the check wrongly passed are over-represented there. The attack verifies a flip at content bar 0.7
    (AttackConfig.verify_content_threshold); at that bar "equivalent" must still be right 9 times in 10 there."""
    from crucible.clients.attack import AttackConfig

    rows = [r for r in _pairs() if r.get("batch") == "campaign-selected"]
    assert len(rows) >= 30
    reply = await stub.CheckEquivalence(
        pb.CheckEquivalenceRequest(
            pairs=[pb.TextPair(first=r["original"], second=r["candidate"], options=r["choices"]) for r in rows],
            method=pb.EQUIVALENCE_METHOD_QUESTION,
            content_threshold=AttackConfig.verify_content_threshold,
        ),
        timeout=300,
    )
    accepted = [r for r, v in zip(rows, reply.results, strict=True) if v.equivalent]
    right = [r for r in accepted if r["label"] == "equivalent"]
    print(f"verification bar on the search-selected batch: {len(right)}/{len(accepted)}")
    assert len(right) / max(1, len(accepted)) >= MIN_PRECISION, [r["candidate"] for r in accepted if r not in right]
    assert len(right) >= 10
