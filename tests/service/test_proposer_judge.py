"""The LLM_JUDGE equivalence method (issue 23): with --judge-model, GetInfo lists it with its model, CheckEquivalence
asks the judge both orders (greedy: P(yes) over yes/no of the first reply token) and the score is the smaller one,
equal to the straightforward per-pair computation; without a judge the method is FAILED_PRECONDITION.
"""

from __future__ import annotations

import grpc
import pytest

from crucible import models
from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as pb_grpc
from crucible.proposer import judge
from tests.service.test_proposer import _config, _serve, folders  # noqa: F401  (folders is a fixture)

JUDGE = pb.EQUIVALENCE_METHOD_LLM_JUDGE
PAIRS = [
    ("Which planet is closest to the Sun?", "Which planet lies nearest to the Sun?"),
    ("Which planet is closest to the Sun?", "Which planet is the largest?"),
]


async def test_the_judge_is_listed_asked_both_ways_and_matches_a_plain_computation(folders):  # noqa: F811
    server = await _serve(_config(folders, judge_model=folders["llama"]))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ProposerServiceStub(channel)
            info = await stub.GetInfo(pb.GetInfoRequest(), timeout=30)
            assert info.HasField("judge_model") and JUDGE in [e.method for e in info.equivalence]
            reply = await stub.CheckEquivalence(
                pb.CheckEquivalenceRequest(pairs=[pb.TextPair(first=a, second=b) for a, b in PAIRS], method=JUDGE),
                timeout=120,
            )
    finally:
        await server.stop(0)
    assert reply.method == JUDGE and reply.threshold == 0.5
    loaded = models.load_causal_lm(folders["llama"], device="cpu", dtype="float32")
    for (a, b), result in zip(PAIRS, reply.results, strict=True):
        (forward,) = judge.judge_probabilities(loaded, [(a, b)], pad_token_id=2)
        (backward,) = judge.judge_probabilities(loaded, [(b, a)], pad_token_id=2)
        assert result.entailment_forward == pytest.approx(forward, abs=1e-5)
        assert result.entailment_backward == pytest.approx(backward, abs=1e-5)
        assert result.score == pytest.approx(min(forward, backward), abs=1e-5)
        assert result.equivalent == (result.score >= 0.5)


async def test_without_a_judge_the_method_is_unavailable_and_not_listed(folders):  # noqa: F811
    server = await _serve(_config(folders))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ProposerServiceStub(channel)
            info = await stub.GetInfo(pb.GetInfoRequest(), timeout=30)
            assert not info.HasField("judge_model") and JUDGE not in [e.method for e in info.equivalence]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CheckEquivalence(
                    pb.CheckEquivalenceRequest(pairs=[pb.TextPair(first="a?", second="b?")], method=JUDGE), timeout=30
                )
    finally:
        await server.stop(0)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--judge-model" in err.value.details()
