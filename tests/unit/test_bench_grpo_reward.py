"""bench/grpo.py's in-process reward gives what the mesh's CompositeReward gives for the same signals (issue 24).

A rewrite under the detector's minimum reliable length is withheld there (neutral evasion, out of its group's
normalisation); the in-process path must treat it the same way, or the two paths of the benchmark reward differently.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from crucible.clients.reward import CompositeReward, RewardConfig, embedding_similarity
from crucible.detector.criterion import reference_criterion

BENCH = Path(__file__).resolve().parents[2] / "bench" / "grpo.py"
VOCAB = 97
MIN_TOKENS = 32  # the detector service's default min_reliable_tokens

ORIGINAL = (
    "The city council voted on Tuesday to expand the bike lane network across the downtown area next spring after "
    "residents asked for safer routes to schools, shops and the train station in a survey last year"
)
WORDS = ORIGINAL.split()
# Rewrites that keep most words (so the similarity gate is open and evasion counts): three long, one short.
LONG_A = " ".join([*WORDS, "and", "the", "mayor", "agreed"])
LONG_B = " ".join(["on", "Tuesday", *WORDS[:-2], "this", "year", "too"])
LONG_C = " ".join([*WORDS[::-1], "indeed"])
SHORT = " ".join(WORDS[:20])


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("grpo_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _ids(text: str) -> list[int]:
    """One token a word after a BOS token (like a tokenizer with add_special_tokens)."""
    return [1] + [2 + zlib.crc32(w.encode()) % (VOCAB - 2) for w in text.split()]


class FakeTokenizer:
    def __call__(self, text: str, return_tensors: str, truncation: bool, max_length: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([_ids(text)[:max_length]])}


class FakeModel:
    """Deterministic logits from each token (a bigram table)."""

    def __init__(self) -> None:
        self.table = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0))

    def __call__(self, ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[ids])


def _vector(text: str) -> list[float]:
    out = [0.0] * 32
    for w in text.lower().split():
        out[zlib.crc32(w.encode()) % 32] += 1.0
    return out


def fake_embed(_model: object, texts: list[str]) -> torch.Tensor:
    return torch.tensor([_vector(t) for t in texts])


class FakeDetector:
    """Scores like the service: criterion and perplexity over n - 1 tokens; reliable from MIN_TOKENS scored tokens."""

    def __init__(self, model: FakeModel) -> None:
        self.model = model

    async def detect(self, texts: list[str]) -> SimpleNamespace:
        detections = []
        for text in texts:
            ids = torch.tensor([_ids(text)])
            logits, labels = self.model(ids).logits[0, :-1], ids[0, 1:]
            reliable = ids.shape[1] - 1 >= MIN_TOKENS
            detections.append(
                SimpleNamespace(
                    criterion=reference_criterion(logits, logits, labels),
                    probability=None,
                    perplexity=math.exp(torch.nn.functional.cross_entropy(logits, labels).item()),
                    reliable=reliable,
                    unreliable_reason="" if reliable else "too_few_tokens",
                )
            )
        return SimpleNamespace(detections=detections)


class FakeProposer:
    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [_vector(t) for t in texts]


CONFIG = RewardConfig(detector_signal="criterion")
COMPLETIONS = [LONG_A, SHORT, LONG_B, LONG_C]


async def test_in_process_reward_withholds_short_texts_like_the_mesh(bench, monkeypatch):
    monkeypatch.setattr(bench, "embed", fake_embed)
    model = FakeModel()
    assert len(_ids(SHORT)) - 1 < MIN_TOKENS <= min(len(_ids(t)) - 1 for t in (LONG_A, LONG_B, LONG_C))
    assert all(embedding_similarity(_vector(ORIGINAL), _vector(t)) > CONFIG.similarity_gate_high for t in COMPLETIONS)
    mesh = SimpleNamespace(detector=FakeDetector(model), proposer=FakeProposer())
    expected = await CompositeReward(mesh, CONFIG).score([ORIGINAL] * 4, COMPLETIONS)  # type: ignore[arg-type]

    local = bench.InProcessReward(CONFIG, lm=SimpleNamespace(tokenizer=FakeTokenizer(), model=model), emb=object())
    got = local.breakdowns([ORIGINAL] * 4, COMPLETIONS)
    assert got[1].flags == expected[1].flags and "detector_unreliable:too_few_tokens" in got[1].flags
    assert got[1].detector == pytest.approx(CONFIG.unreliable_short_evasion)
    for g, e in zip(got, expected, strict=True):
        assert g.components(CONFIG) == pytest.approx(e.components(CONFIG), abs=1e-9)
        assert g.total == pytest.approx(e.total, abs=1e-9)
    # TRL's entry point returns the same totals, from chat-format completions too.
    chat = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    assert local(["p"] * 4, chat, [ORIGINAL] * 4) == pytest.approx([e.total for e in expected], abs=1e-9)

    # The fixture is one where it matters: scoring the short text as reliable (the old in-process path) changes
    # both its reward and, through the group's normalisation, its neighbours'.
    everything_reliable = bench.InProcessReward(
        CONFIG, lm=SimpleNamespace(tokenizer=FakeTokenizer(), model=model), emb=object(), min_reliable_tokens=0
    )
    old = everything_reliable.breakdowns([ORIGINAL] * 4, COMPLETIONS)
    assert old[1].total != pytest.approx(expected[1].total, abs=1e-3)
    assert old[0].total != pytest.approx(expected[0].total, abs=1e-3)
