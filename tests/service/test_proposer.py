"""The proposer server on port 0 with tiny random models: Propose, batching, seeds, errors, equivalence, Embed, limits.

Generator: a tiny random Llama with the real SmolLM2 tokenizer and chat template; embedder: the packaged MiniLM;
NLI: a tiny random BERT classifier with an 'entailment' label. Quality is not tested here (see test_proposer_real.py).
"""

from __future__ import annotations

import asyncio
import math
import shutil

import grpc
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from crucible import models
from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as pb_grpc
from crucible.proposer import cleaning
from crucible.proposer.config import ProposerConfig
from crucible.proposer.equivalence import entailment_probabilities
from crucible.proposer.server import create_server
from crucible.runtime.config import load_config
from crucible.runtime.errors import parse_status_details

SOURCE = "The committee postponed the vote because several members were travelling abroad."
QUESTION = "Which gas do plants absorb from the atmosphere for photosynthesis?"
OPTIONS = ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"]
PARAPHRASE = pb.PROPOSE_MODE_PARAPHRASE
COSINE = pb.EQUIVALENCE_METHOD_EMBEDDING_COSINE
NLI = pb.EQUIVALENCE_METHOD_NLI_ENTAILMENT


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    try:
        prepared = {item.alias: item.path for item in models.prepare_models(log=lambda line: None)}
    except models.ModelPackageMissingError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("proposer-models")
    torch.manual_seed(0)
    llama = root / "tiny-llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            tie_word_embeddings=True,
        )
    ).save_pretrained(llama)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (prepared["smollm2-135m-instruct"] / name).exists():
            shutil.copy(prepared["smollm2-135m-instruct"] / name, llama / name)
    nli = root / "tiny-nli"
    labels = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    BertForSequenceClassification(
        BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
    ).save_pretrained(nli)
    AutoTokenizer.from_pretrained(prepared["minilm-l6-v2"]).save_pretrained(nli)
    return {"llama": str(llama), "nli": str(nli), "minilm": str(prepared["minilm-l6-v2"])}


def _config(folders, **settings) -> ProposerConfig:
    base = {
        "port": 0,
        "metrics_enabled": False,
        "model": folders["llama"],
        "device": "cpu",
        "dtype": "float32",
        "max_wait_ms": 30.0,
        "default_max_new_tokens": 16,
    }
    return load_config(ProposerConfig, "proposer", env={}, **{**base, **settings})


async def _serve(config: ProposerConfig):
    server, _port = create_server(config)
    await server.start()
    await server.wait_ready(120)
    return server


@pytest.fixture(scope="module")
async def server(folders):
    server = await _serve(_config(folders, nli_model=folders["nli"], max_candidates=8))
    yield server
    await server.stop(0)


@pytest.fixture(scope="module")
async def stub(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.ProposerServiceStub(channel)


def _propose(**fields) -> pb.ProposeRequest:
    return pb.ProposeRequest(**{"text": SOURCE, "mode": PARAPHRASE, "n": 2, "seed": 11, "max_new_tokens": 12, **fields})


def _texts(response: pb.ProposeResponse) -> list[str]:
    return [c.text for c in response.candidates]


async def test_get_info_describes_models_defaults_limits_and_batching(stub, folders):
    info = await stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert info.generator_model.name == folders["llama"] and info.generator_model.quantization == "none"
    assert (info.generator_model.dtype, info.generator_model.device) == ("float32", "cpu")
    assert info.chat_template
    assert info.embedding_model.name == "minilm-l6-v2" and info.embedding_dimension == 384
    assert info.nli_model.name == folders["nli"]
    assert [(e.method, e.default_threshold) for e in info.equivalence] == [
        (COSINE, pytest.approx(0.7)),
        (NLI, 0.5),
        (pb.EQUIVALENCE_METHOD_QUESTION, 0.5),
    ]  # QUESTION scores with NLI
    assert (info.defaults.temperature, info.defaults.max_new_tokens) == (1.0, 16)
    assert info.limits.max_candidates == 8 and info.limits.max_new_tokens == 512
    assert info.batching.max_batch_size == 32 and info.batching.max_wait.ToMilliseconds() == 30


async def test_propose_returns_at_most_n_cleaned_candidates_with_accounting(stub, folders):
    response = await stub.Propose(_propose(n=4), timeout=60)
    assert len(response.candidates) + response.dropped_empty + response.dropped_degenerate == 4
    assert response.candidates, "a random model yields junk, but not four empty or degenerate candidates"
    for candidate in response.candidates:
        assert candidate.text == candidate.text.strip() and candidate.text
        assert 1 <= candidate.generated_tokens <= 12
        assert candidate.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
        assert "<|im_end|>" not in candidate.text and "<|im_start|>" not in candidate.text
    assert response.seed == 11 and response.model.name == folders["llama"]
    assert response.prompt.startswith("<|im_start|>system\n") and response.prompt.endswith("<|im_start|>assistant\n")
    assert SOURCE in response.prompt


async def test_same_seed_same_candidates_whatever_else_is_batched(stub):
    alone = await stub.Propose(_propose(n=3, seed=5), timeout=60)
    others = [
        _propose(
            text=f"Another sentence number {i} about something else.",
            seed=100 + i,
            n=2,
            max_new_tokens=4 + i,
            temperature=0.5 + 0.1 * i,
        )
        for i in range(5)
    ]
    together = await asyncio.gather(
        stub.Propose(_propose(n=3, seed=5), timeout=60), *(stub.Propose(r, timeout=60) for r in others)
    )
    assert _texts(together[0]) == _texts(alone)
    assert [c.generated_tokens for c in together[0].candidates] == [c.generated_tokens for c in alone.candidates]
    different = await stub.Propose(_propose(n=3, seed=6), timeout=60)
    assert _texts(different) != _texts(alone)


async def test_drawn_seed_is_reported_and_reproduces(stub):
    request = _propose()
    request.ClearField("seed")
    first = await stub.Propose(request, timeout=60)
    again = await stub.Propose(_propose(seed=first.seed), timeout=60)
    assert _texts(again) == _texts(first)


async def test_greedy_candidates_coincide(stub):
    response = await stub.Propose(_propose(n=3, temperature=0.0), timeout=60)
    texts = _texts(response)
    assert len(set(texts)) <= 1 and len(texts) + response.dropped_empty + response.dropped_degenerate == 3


async def test_concurrent_calls_share_batches(stub, server):
    registry = server.registry
    labels = {"batcher": "proposer_generate"}
    batches_before = registry.get_sample_value("crucible_batcher_batch_size_count", labels) or 0.0
    rows_before = registry.get_sample_value("crucible_batcher_batch_size_sum", labels) or 0.0
    await asyncio.gather(*(stub.Propose(_propose(seed=i, n=1, max_new_tokens=6), timeout=60) for i in range(8)))
    batches = registry.get_sample_value("crucible_batcher_batch_size_count", labels) - batches_before
    rows = registry.get_sample_value("crucible_batcher_batch_size_sum", labels) - rows_before
    assert rows == 8 and batches < 8


async def test_equivalent_question_shows_examples_and_options_and_counts_drops_by_reason(stub):
    response = await stub.Propose(
        pb.ProposeRequest(
            text=QUESTION,
            mode=pb.PROPOSE_MODE_EQUIVALENT_QUESTION,
            options=OPTIONS,
            correct_option_index=1,
            n=4,
            seed=3,
            max_new_tokens=10,
        ),
        timeout=60,
    )
    assert "B. Carbon dioxide" in response.prompt and "D. Helium" in response.prompt
    assert "Which planet lies nearest to the Sun?" in response.prompt  # a worked example as an earlier turn
    assert "Correct answer" not in response.prompt
    dropped = {pb.DropReason.Name(d.reason): d.count for d in response.dropped}
    assert all(count >= 1 for count in dropped.values()) and "DROP_REASON_UNSPECIFIED" not in dropped
    assert len(response.candidates) + sum(dropped.values()) == 4
    assert dropped.get("DROP_REASON_EMPTY", 0) == response.dropped_empty
    assert dropped.get("DROP_REASON_DEGENERATE", 0) == response.dropped_degenerate
    for candidate in response.candidates:  # a tiny random model writes noise: whatever survives passed the checks
        assert cleaning.question_problem(candidate.text, QUESTION, OPTIONS) == ("", "")


@pytest.mark.parametrize(
    "request_fields, field, reason",
    [
        ({"text": ""}, "text", "EMPTY_TEXT"),
        ({"text": "   "}, "text", "EMPTY_TEXT"),
        ({"mode": pb.PROPOSE_MODE_UNSPECIFIED}, "mode", "MODE_UNSPECIFIED"),
        ({"n": 9}, "n", "N_OUT_OF_RANGE"),
        ({"max_new_tokens": 513}, "max_new_tokens", "MAX_NEW_TOKENS_OUT_OF_RANGE"),
        ({"temperature": 3.0}, "temperature", "TEMPERATURE_OUT_OF_RANGE"),
        ({"top_p": 0.0}, "top_p", "TOP_P_OUT_OF_RANGE"),
        ({"mode": pb.PROPOSE_MODE_EQUIVALENT_QUESTION, "correct_option_index": 1}, "options", "MISSING_OPTIONS"),
        ({"mode": pb.PROPOSE_MODE_EQUIVALENT_QUESTION, "options": OPTIONS}, "correct_option_index", "MISSING_CORRECT_OPTION"),
        (
            {"mode": pb.PROPOSE_MODE_EQUIVALENT_QUESTION, "options": ["a", ""], "correct_option_index": 0},
            "options[1]",
            "EMPTY_OPTION",
        ),
        ({"options": OPTIONS}, "options", "UNEXPECTED_OPTIONS"),
        ({"text": "word " * 1590, "max_new_tokens": 512}, "text", "PROMPT_TOO_LONG"),
    ],
)
async def test_bad_propose_input_is_invalid_argument_naming_the_field(stub, request_fields, field, reason):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Propose(_propose(**request_fields), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = parse_status_details(caught.value)
    assert info.reason == reason and info.domain == "proposer.crucible"
    assert field in dict(violations)


async def test_deadline_during_generation_fails_alone(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Propose(_propose(n=4, max_new_tokens=512, seed=1), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = await stub.Propose(_propose(n=1), timeout=60)
    assert len(after.candidates) + after.dropped_empty + after.dropped_degenerate == 1


async def test_cosine_equivalence_with_minilm(stub):
    pairs = [
        pb.TextPair(first=SOURCE, second=SOURCE),
        pb.TextPair(first=SOURCE, second="The vote was delayed since many committee members were abroad."),
        pb.TextPair(first=SOURCE, second="Bananas are rich in potassium and taste sweet when ripe."),
    ]
    response = await stub.CheckEquivalence(pb.CheckEquivalenceRequest(pairs=pairs, method=COSINE), timeout=30)
    scores = [r.score for r in response.results]
    assert scores[0] == pytest.approx(1.0, abs=1e-4) and scores[1] > 0.7 > scores[2]
    assert [r.equivalent for r in response.results] == [True, True, False]
    assert not response.results[0].HasField("entailment_forward")
    assert response.method == COSINE and response.threshold == pytest.approx(0.7)
    assert response.model.name == "minilm-l6-v2"
    strict = await stub.CheckEquivalence(pb.CheckEquivalenceRequest(pairs=pairs, method=COSINE, threshold=0.999), timeout=30)
    assert [r.equivalent for r in strict.results] == [True, False, False] and strict.threshold == 0.999


async def test_nli_equivalence_is_bidirectional_entailment(stub, folders):
    pairs = [("A man is playing a guitar.", "Someone plays an instrument."), ("It is raining.", "The sky is clear.")]
    response = await stub.CheckEquivalence(
        pb.CheckEquivalenceRequest(pairs=[pb.TextPair(first=a, second=b) for a, b in pairs], method=NLI, threshold=0.3),
        timeout=30,
    )
    classifier = models.load_sequence_classifier(folders["nli"], device="cpu", dtype="float32")
    forward = entailment_probabilities(classifier, [a for a, _ in pairs], [b for _, b in pairs])
    backward = entailment_probabilities(classifier, [b for _, b in pairs], [a for a, _ in pairs])
    for result, f, b in zip(response.results, forward.tolist(), backward.tolist(), strict=True):
        assert result.entailment_forward == pytest.approx(f, abs=1e-5)
        assert result.entailment_backward == pytest.approx(b, abs=1e-5)
        assert result.score == pytest.approx(min(f, b), abs=1e-5)
        assert result.equivalent == (result.score >= 0.3)
    assert response.method == NLI and response.model.name == folders["nli"]


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"pairs": []}, "pairs"),
        ({"pairs": [pb.TextPair(first="a", second="")]}, "pairs[0].second"),
        ({"method": pb.EQUIVALENCE_METHOD_UNSPECIFIED}, "method"),
        ({"threshold": 1.5}, "threshold"),
    ],
)
async def test_bad_equivalence_input(stub, request_fields, field):
    request = pb.CheckEquivalenceRequest(**{"pairs": [pb.TextPair(first="a", second="b")], "method": COSINE, **request_fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckEquivalence(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in dict(parse_status_details(caught.value)[1])


async def test_embed_returns_unit_vectors_matching_the_model(stub, folders):
    long_text = "word " * 400
    texts = ["The quick brown fox.", "A completely different sentence about tax law.", long_text]
    response = await stub.Embed(pb.EmbedRequest(texts=texts), timeout=30)
    assert response.dimension == 384 and len(response.embeddings) == 3
    for embedding in response.embeddings:
        assert len(embedding.values) == 384
        assert math.sqrt(sum(v * v for v in embedding.values)) == pytest.approx(1.0, abs=1e-4)
    assert [e.truncated for e in response.embeddings] == [False, False, True]
    assert response.embeddings[2].token_count == 256 and 3 < response.embeddings[0].token_count < 20
    direct = models.embed(models.load_embedding_model(folders["minilm"], device="cpu", dtype="float32"), texts)
    assert torch.allclose(torch.tensor([list(e.values) for e in response.embeddings]), direct, atol=1e-5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(pb.EmbedRequest(texts=["ok", " "]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts[1]" in dict(parse_status_details(caught.value)[1])


async def test_small_queue_rejects_at_once_and_nli_needs_a_model_and_nf4_serves(folders):
    server = await _serve(_config(folders, quantize="nf4", max_queue_size=4, max_candidates=4))
    engine = server.service.engine
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ProposerServiceStub(channel)
            info = await stub.GetInfo(pb.GetInfoRequest(), timeout=10)
            assert info.generator_model.quantization == "nf4" and not info.HasField("nli_model")
            assert [e.method for e in info.equivalence] == [COSINE, pb.EQUIVALENCE_METHOD_QUESTION]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CheckEquivalence(
                    pb.CheckEquivalenceRequest(pairs=[pb.TextPair(first="a", second="b")], method=NLI), timeout=30
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert parse_status_details(caught.value)[0].reason == "NLI_NOT_CONFIGURED"

            busy = asyncio.ensure_future(stub.Propose(_propose(n=1, max_new_tokens=150), timeout=120))
            await asyncio.sleep(0.2)
            while engine.generation_queue_depth:  # wait until the long call is computing, not queued
                await asyncio.sleep(0.01)
            queued = asyncio.ensure_future(stub.Propose(_propose(n=4, max_new_tokens=2), timeout=120))
            while engine.generation_queue_depth < 4:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Propose(_propose(n=1, max_new_tokens=2), timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert parse_status_details(caught.value)[0].reason == "QUEUE_FULL"
            assert not busy.done(), "the long call must still hold the worker for this test to mean anything"
            done = await asyncio.gather(busy, queued)
            assert len(done[1].candidates) + done[1].dropped_empty + done[1].dropped_degenerate == 4
    finally:
        await server.stop(0)


async def test_placement_check_refuses_models_beyond_declared_memory(folders):
    server, _port = create_server(_config(folders, memory_limit_gb=0.05))
    await server.start()
    try:
        with pytest.raises(RuntimeError, match=r"memory_limit_gb declares 0.05 GB"):
            await server.wait_ready(60)
        assert server.service.engine.generator is None  # refused before loading anything
    finally:
        await server.stop(0)
