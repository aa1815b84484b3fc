"""Meaning checks: embeddings with token counts, cosine scores, and bidirectional NLI entailment probabilities.

Pure torch over loaded models (no grpc); the engine runs these inside its batcher's worker thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from crucible.models import IncompatibleModelError, LoadedModel, embed
from crucible.proposer.alignment import Alignment


@dataclasses.dataclass(frozen=True)
class EmbeddedText:
    """One text's unit-norm embedding (float32 list), its token count after truncation and whether it was cut."""

    vector: tuple[float, ...]
    token_count: int
    truncated: bool


def token_counts(tokenizer: Any, texts: Sequence[str], limit: int | None) -> list[tuple[int, bool]]:
    """(tokens the model sees, truncated?) per text, special tokens included, for a model limit of `limit` tokens."""
    counts = []
    for ids in tokenizer(list(texts), truncation=False)["input_ids"]:
        full = len(ids)
        counts.append((min(full, limit), full > limit) if limit else (full, False))
    return counts


def embed_texts(loaded: LoadedModel, texts: Sequence[str], *, batch_size: int = 32) -> list[EmbeddedText]:
    """L2-normalised mean-pooled embeddings of `texts` with their token counts, in input order."""
    if not texts:
        return []
    vectors = embed(loaded, list(texts), batch_size=batch_size)
    counts = token_counts(loaded.tokenizer, texts, loaded.max_length)
    return [EmbeddedText(tuple(vector.tolist()), count, cut) for vector, (count, cut) in zip(vectors, counts, strict=True)]


def cosine_scores(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per row of two [N, D] matrices (rows normalised here, so any vectors work) -> [N]."""
    a = torch.nn.functional.normalize(first.to(torch.float32), p=2, dim=-1)
    b = torch.nn.functional.normalize(second.to(torch.float32), p=2, dim=-1)
    return (a * b).sum(dim=-1).clamp(-1.0, 1.0)


def entailment_label_index(id2label: Mapping[Any, str]) -> int:
    """Index of the 'entailment' class in a classifier's id2label (case-insensitive; 'entail...' also matches).

    A classifier without such a label is not an NLI model; it is refused rather than guessed at.
    """
    matches = [int(i) for i, label in id2label.items() if str(label).strip().lower().startswith("entail")]
    if len(matches) != 1:
        labels = ", ".join(f"{i}: {label}" for i, label in sorted(id2label.items(), key=lambda kv: int(kv[0])))
        raise IncompatibleModelError(
            f"the NLI model must have exactly one 'entailment' label in config.id2label; it has {{{labels}}}"
        )
    return matches[0]


@torch.inference_mode()
def entailment_probabilities(
    loaded: LoadedModel, premises: Sequence[str], hypotheses: Sequence[str], *, batch_size: int = 32
) -> torch.Tensor:
    """P(premise entails hypothesis) per pair [N] from an NLI sequence classifier (softmax over its labels)."""
    if len(premises) != len(hypotheses):
        raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
    if not premises:
        return torch.empty(0)
    label = entailment_label_index(loaded.model.config.id2label)
    device = next(loaded.model.parameters()).device
    out = torch.empty(len(premises), dtype=torch.float32)
    order = sorted(range(len(premises)), key=lambda i: len(premises[i]) + len(hypotheses[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        encoded = loaded.tokenizer(
            [premises[i] for i in chunk],
            [hypotheses[i] for i in chunk],
            padding=True,
            truncation=loaded.max_length is not None,
            max_length=loaded.max_length,
            return_tensors="pt",
        ).to(device)
        probs = loaded.model(**encoded).logits.float().softmax(dim=-1)[:, label]
        out[torch.tensor(chunk)] = probs.cpu()
    return out


@dataclasses.dataclass(frozen=True)
class PairVerdict:
    """The verdict for one pair: score, equivalent (score >= threshold) and, for NLI, both directions.

    `form_violation` (a cleaning reason) and `form_detail` say why a question pair failed the form checks or the
    content alignment; `content` is that alignment (QUESTION pairs that passed the form checks).
    """

    score: float
    equivalent: bool
    entailment_forward: float | None = None
    entailment_backward: float | None = None
    form_violation: str = ""
    form_detail: str = ""
    content: Alignment | None = None


def cosine_verdicts(scores: Sequence[float], threshold: float) -> list[PairVerdict]:
    """Verdicts from cosine scores at `threshold`."""
    return [PairVerdict(float(s), float(s) >= threshold) for s in scores]


def nli_verdicts(forward: Sequence[float], backward: Sequence[float], threshold: float) -> list[PairVerdict]:
    """Bidirectional-entailment verdicts: the score is min(forward, backward), equivalent when >= `threshold`."""
    return [
        PairVerdict(min(f, b), min(f, b) >= threshold, float(f), float(b))
        for f, b in zip(map(float, forward), map(float, backward), strict=True)
    ]
