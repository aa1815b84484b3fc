"""The scorer service on port 0 with a tiny random Llama folder: golden scores over gRPC, errors, batching, placement.

The reference is a per-item forward pass over the same folder's weights; no mocks of our own services.
"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import grpc
import pytest
import torch
import transformers
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crucible.api.scorer.v1 import scorer_service_pb2 as pb
from crucible.api.scorer.v1 import scorer_service_pb2_grpc as pb_grpc
from crucible.runtime.config import load_config
from crucible.runtime.errors import ConfigError, Unavailable, parse_status_details
from crucible.scorer.config import ScorerConfig
from crucible.scorer.placement import allowed_cores
from crucible.scorer.seca import SECA_PROMPT_TEMPLATE, build_seca_prompt
from crucible.scorer.server import create_server
from tests.unit.test_scorer_core import (
    assert_close,
    reference_choice_logprob,
    reference_text,
    save_tiny_model_folder,
)

SERVICE = "crucible.scorer.v1.ScorerService"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_folder(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def reference(model_folder: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(model_folder)


async def _start(folder: Path, **settings):
    settings = {"dtype": "float32", "max_items_per_call": 8, "max_choices_per_item": 6, "max_tokens": 384, **settings}
    config = load_config(ScorerConfig, "scorer", env={}, port=0, metrics_port=0, model=str(folder), **settings)
    server, _ = create_server(config)
    await server.start()
    await server.wait_ready(60)
    return server


@pytest.fixture(scope="module")
async def server(model_folder: Path):
    server = await _start(model_folder)
    yield server
    await server.stop(0)


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.ScorerServiceStub(channel)


async def test_health_serving_and_get_info(server, stub) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    info = await stub.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert (info.model.device, info.model.dtype, info.model.quantization) == ("cpu", "float32", "none")
    assert info.model.revision
    assert list(info.cores) == sorted(os.sched_getaffinity(0)) and not info.cores_pinned
    assert info.intra_op_threads == len(os.sched_getaffinity(0))
    assert info.inter_op_threads >= 1
    assert info.seca_prompt_template == SECA_PROMPT_TEMPLATE
    assert (info.limits.max_items_per_call, info.limits.max_choices_per_item, info.limits.max_tokens) == (8, 6, 384)
    assert info.batching.max_batch_size == 32 and info.batching.max_wait.ToMilliseconds() == 5
    assert info.batching.max_queue_size == 1024


async def test_score_choices_matches_the_per_item_reference(stub, reference) -> None:
    model, tokenizer = reference
    question = pb.McqQuestion(
        subject="anatomy",
        question="Which structure collects urine?",
        options=["the kidney", "the bladder", "the ureter", "the urethra"],
    )
    request = pb.ScoreChoicesRequest(
        items=[
            pb.ChoiceItem(raw_prompt="The capital of France is", choices=[" Paris", " Rome", " a long yellow fruit"]),
            pb.ChoiceItem(question=question),
            pb.ChoiceItem(question=question, choices=[" the bladder", "B"]),
        ]
    )
    reply = await stub.ScoreChoices(request, timeout=30)
    assert reply.model.device == "cpu" and len(reply.results) == 3
    seca = build_seca_prompt("anatomy", question.question, list(question.options))
    assert reply.results[0].prompt == "The capital of France is"
    assert reply.results[1].prompt == reply.results[2].prompt == seca
    assert [c.text.strip() for c in reply.results[1].choices] == ["A", "B", "C", "D"]
    for result in reply.results:
        assert result.prompt_token_count == len(tokenizer(result.prompt)["input_ids"])
        for choice in result.choices:
            assert choice.token_count == len(tokenizer(choice.text, add_special_tokens=False)["input_ids"])
            assert_close(choice.logprob, reference_choice_logprob(model, tokenizer, result.prompt, choice.text))
        assert math.isclose(sum(c.probability for c in result.choices), 1.0, rel_tol=1e-9)
        assert result.top_index == max(range(len(result.choices)), key=lambda i: result.choices[i].logprob)


async def test_score_texts_matches_the_per_item_reference(stub, reference) -> None:
    model, tokenizer = reference
    items = [
        pb.TextItem(text="The capital of France is Paris."),
        pb.TextItem(text=" Paris, and the capital of Italy is Rome.", prefix="The capital of France is"),
    ]
    reply = await stub.ScoreTexts(pb.ScoreTextsRequest(items=items), timeout=30)
    for item, score in zip(items, reply.scores, strict=True):
        expected, count = reference_text(model, tokenizer, item.text, item.prefix)
        assert score.token_count == count and not score.truncated
        assert_close(score.log_likelihood, expected)
        assert math.isclose(score.mean_nll, -expected / count, rel_tol=1e-4)
        assert math.isclose(score.perplexity, math.exp(score.mean_nll), rel_tol=1e-9)
    long = await stub.ScoreTexts(pb.ScoreTextsRequest(items=[pb.TextItem(text="The capital " * 300)]), timeout=30)
    assert long.scores[0].truncated and long.scores[0].token_count == 383  # max_tokens less the unscored first token


BAD = [
    (pb.ScoreChoicesRequest(), "items", "NO_ITEMS"),
    (pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt="x", choices=["a"])] * 9), "items", "TOO_MANY_ITEMS"),
    (
        pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt="ok", choices=["a"]), pb.ChoiceItem(raw_prompt="ok")]),
        "items[1].choices",
        "NO_CHOICES",
    ),
    (
        pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt="ok", choices=["a", "b", "a"])]),
        "items[0].choices[2]",
        "DUPLICATE_CHOICE",
    ),
    (pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt=" ", choices=["a"])]), "items[0].raw_prompt", "EMPTY_PROMPT"),
    (pb.ScoreChoicesRequest(items=[pb.ChoiceItem(choices=["a"])]), "items[0].prompt", "PROMPT_UNSET"),
    (
        pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt="The capital " * 300, choices=["a"])]),
        "items[0]",
        "PROMPT_TOO_LONG",
    ),
    (
        pb.ScoreChoicesRequest(items=[pb.ChoiceItem(question=pb.McqQuestion(subject="s", question="q", options=["a", ""]))]),
        "items[0].question.options[1]",
        "EMPTY_OPTION",
    ),
    (pb.ScoreTextsRequest(items=[pb.TextItem(text="fine"), pb.TextItem(text="")]), "items[1].text", "EMPTY_TEXT"),
    (pb.ScoreTextsRequest(items=[pb.TextItem(text="fine", prefix="The capital " * 300)]), "items[0].prefix", "PREFIX_TOO_LONG"),
]


@pytest.mark.parametrize(("request_", "field", "reason"), BAD, ids=[f"{b[2]}-{b[1]}" for b in BAD])
async def test_bad_input_is_invalid_argument_naming_the_field(stub, request_, field, reason) -> None:
    method = stub.ScoreChoices if isinstance(request_, pb.ScoreChoicesRequest) else stub.ScoreTexts
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = parse_status_details(caught.value)
    assert info is not None and info.reason == reason and info.domain == "scorer.crucible"
    assert [f for f, _ in violations] == [field]


async def test_a_bad_call_does_not_disturb_others(stub) -> None:
    good = pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt="The capital of France is", choices=[" Paris"])])
    bad = pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt="ok", choices=["a", "a"])])
    outcomes = await asyncio.gather(
        stub.ScoreChoices(good, timeout=30),
        stub.ScoreChoices(bad, timeout=30),
        stub.ScoreChoices(good, timeout=30),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], grpc.aio.AioRpcError)
    assert outcomes[0].results[0].choices[0].logprob == outcomes[2].results[0].choices[0].logprob


async def test_concurrent_calls_are_batched_and_queue_overflow_is_refused(model_folder: Path) -> None:
    server = await _start(model_folder, max_wait_ms=300.0, max_queue_size=4)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ScorerServiceStub(channel)
            prompts = ["The capital of France is", "A banana is", "Which of the following", "You are the world's best"]
            requests = [
                pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt=p, choices=[" Paris", " a long yellow fruit"])])
                for p in prompts
            ]
            batches_before = server.registry.get_sample_value("crucible_batcher_batch_size_count", {"batcher": "scorer"})
            together = await asyncio.gather(*(stub.ScoreChoices(r, timeout=30) for r in requests))
            batches = server.registry.get_sample_value("crucible_batcher_batch_size_count", {"batcher": "scorer"})
            assert batches - batches_before < len(requests)  # one 300 ms window gathers the concurrent calls
            for request, reply in zip(requests, together, strict=True):
                alone = await stub.ScoreChoices(request, timeout=30)
                for a, b in zip(alone.results[0].choices, reply.results[0].choices, strict=True):
                    assert_close(b.logprob, a.logprob)
            too_many = pb.ScoreChoicesRequest(items=[pb.ChoiceItem(raw_prompt=p, choices=["x"]) for p in [*prompts, "one more"]])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ScoreChoices(too_many, timeout=10)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert parse_status_details(caught.value)[0].reason == "QUEUE_FULL"
    finally:
        await server.stop(0)


async def test_pinned_bfloat16_server_reports_its_placement_and_restores_it(model_folder: Path, reference) -> None:
    inherited = allowed_cores()
    threads_before = torch.get_num_threads()
    server = await _start(model_folder, cores=str(inherited[-1]), dtype="bfloat16")
    try:
        assert os.sched_getaffinity(0) == {inherited[-1]}
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ScorerServiceStub(channel)
            info = await stub.GetInfo(pb.GetInfoRequest(), timeout=5)
            assert list(info.cores) == [inherited[-1]] and info.cores_pinned and info.intra_op_threads == 1
            assert info.model.dtype == "bfloat16"
            reply = await stub.ScoreChoices(
                pb.ScoreChoicesRequest(
                    items=[pb.ChoiceItem(raw_prompt="The capital of France is", choices=[" Paris", " a long yellow fruit"])]
                ),
                timeout=30,
            )
            model, tokenizer = reference
            for choice in reply.results[0].choices:
                expected = reference_choice_logprob(model, tokenizer, "The capital of France is", choice.text)
                assert abs(choice.logprob - expected) <= 0.05 * abs(expected)
    finally:
        await server.stop(0)
    assert allowed_cores() == inherited and torch.get_num_threads() == threads_before


def test_a_cuda_device_is_refused_before_anything_loads() -> None:
    with pytest.raises(ConfigError, match="CPU only"):
        create_server(ScorerConfig(device="cuda", port=0))


async def test_calls_after_stop_are_unavailable(model_folder: Path) -> None:
    server = await _start(model_folder)
    await server.stop(0)
    with pytest.raises(Unavailable):
        server.service.engine.require_ready()
