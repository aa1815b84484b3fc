"""The scorer service with the real packaged SmolLM2-135M-Instruct (slow): sensible answers, SECA letters, perplexity.

Uses ../shared/data/mmlu when present for a real SECA question; the other checks need no data.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import grpc
import pytest

from crucible import models
from crucible.api.scorer.v1 import scorer_service_pb2 as pb
from crucible.api.scorer.v1 import scorer_service_pb2_grpc as pb_grpc
from crucible.runtime.config import load_config
from crucible.scorer.config import ScorerConfig
from crucible.scorer.seca import build_seca_prompt, read_mmlu_csv
from crucible.scorer.server import create_server

pytestmark = pytest.mark.slow

ENGLISH = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch of his old wooden house."


@pytest.fixture(scope="module")
async def stub():
    try:
        models.prepare_models(log=lambda line: None)
    except models.ModelPackageMissingError as exc:
        pytest.skip(str(exc))
    config = load_config(ScorerConfig, "scorer", env={}, port=0, metrics_port=0, dtype="float32")
    server, _ = create_server(config)
    await server.start()
    await server.wait_ready(120)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield pb_grpc.ScorerServiceStub(channel)
    finally:
        await server.stop(0)


async def test_capital_of_france_prefers_paris(stub) -> None:
    reply = await stub.ScoreChoices(
        pb.ScoreChoicesRequest(
            items=[
                pb.ChoiceItem(raw_prompt="The capital of France is", choices=[" banana", " Paris", " a small purple elephant"]),
            ]
        ),
        timeout=60,
    )
    result = reply.results[0]
    assert reply.model.name == "smollm2-135m-instruct" and reply.model.device == "cpu"
    assert result.top_index == 1 and result.choices[1].probability > 0.9
    assert result.choices[2].token_count > 1


async def test_seca_question_scores_the_spaced_letters(stub, shared_data: Path | None) -> None:
    if shared_data is not None and (shared_data / "mmlu" / "anatomy_test.csv").is_file():
        q = read_mmlu_csv(shared_data / "mmlu" / "anatomy_test.csv")[2]
        subject, question, options = q.subject, q.question, list(q.options)
    else:
        subject, question = "anatomy", "Which of the following best describes the structure that collects urine in the body?"
        options = ["Bladder", "Kidney", "Ureter", "Urethra"]
    item = pb.McqQuestion(subject=subject, question=question, options=options)
    reply = await stub.ScoreChoices(
        pb.ScoreChoicesRequest(
            items=[
                pb.ChoiceItem(question=item),
                pb.ChoiceItem(question=item, choices=["A", "B", "C", "D"]),
            ]
        ),
        timeout=60,
    )
    spaced, bare = reply.results
    assert spaced.prompt == build_seca_prompt(subject, question, options)
    assert [c.text for c in spaced.choices] == [" A", " B", " C", " D"]  # one byte-level BPE token each, as in the paper
    assert all(c.token_count == 1 for c in spaced.choices)
    # after the prompt's trailing space the model puts far more mass on " A" than on "A" (why the default is spaced)
    assert sum(math.exp(c.logprob) for c in spaced.choices) > 100 * sum(math.exp(c.logprob) for c in bare.choices)


async def test_english_is_more_likely_than_shuffled_words(stub) -> None:
    words = ENGLISH.split()
    random.Random(0).shuffle(words)
    reply = await stub.ScoreTexts(
        pb.ScoreTextsRequest(items=[pb.TextItem(text=ENGLISH), pb.TextItem(text=" ".join(words))]), timeout=60
    )
    english, shuffled = reply.scores
    assert english.perplexity * 10 < shuffled.perplexity
    assert english.token_count > 15 and english.log_likelihood < 0
