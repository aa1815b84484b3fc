"""The proposer server with the real packaged models (SmolLM2-135M-Instruct generator, MiniLM embedder).

A paraphrase of an English sentence must keep most of its content words and pass the equivalence check; an
unrelated sentence must fail it.
"""

from __future__ import annotations

import re

import grpc
import pytest

from crucible import models
from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as pb_grpc
from crucible.proposer.config import ProposerConfig
from crucible.proposer.server import create_server
from crucible.runtime.config import load_config

pytestmark = pytest.mark.slow

SOURCE = "Vaccines train the immune system to recognise a pathogen without causing the disease."
UNRELATED = "The recipe calls for two cups of flour, a pinch of salt and three eggs."
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "to",
        "of",
        "and",
        "or",
        "in",
        "on",
        "at",
        "for",
        "by",
        "with",
        "without",
        "from",
        "is",
        "are",
        "was",
        "were",
        "be",
        "it",
        "its",
        "this",
        "that",
    ]
)


def content_words(text: str) -> set[str]:
    """Lower-cased words that are not stop words, with a crude plural/verb -s stripped."""
    words = {w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS}
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in words}


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


async def test_paraphrase_keeps_content_words_and_passes_equivalence_unrelated_fails(stub):
    response = await stub.Propose(
        pb.ProposeRequest(text=SOURCE, mode=pb.PROPOSE_MODE_PARAPHRASE, n=4, seed=1234, temperature=0.7, max_new_tokens=48),
        timeout=120,
    )
    assert response.candidates, (
        f"no candidate survived (empty {response.dropped_empty}, degenerate {response.dropped_degenerate})"
    )
    assert response.model.name == "smollm2-135m-instruct"
    source_words = content_words(SOURCE)
    pairs = [pb.TextPair(first=SOURCE, second=c.text) for c in response.candidates]
    pairs.append(pb.TextPair(first=SOURCE, second=UNRELATED))
    verdicts = await stub.CheckEquivalence(
        pb.CheckEquivalenceRequest(pairs=pairs, method=pb.EQUIVALENCE_METHOD_EMBEDDING_COSINE), timeout=60
    )
    *candidate_verdicts, unrelated = verdicts.results
    good = [
        (c.text, v.score)
        for c, v in zip(response.candidates, candidate_verdicts, strict=True)
        if v.equivalent
        and len(content_words(c.text) & source_words) >= 0.5 * len(source_words)
        and c.text.strip().lower() != SOURCE.lower()
    ]
    assert good, [(c.text, v.score) for c, v in zip(response.candidates, candidate_verdicts, strict=True)]
    assert not unrelated.equivalent and unrelated.score < 0.3
