"""The proposer's calls in plain values: the request and result types and every request check (no models, no gRPC).

Each check collects every bad field of a request and raises one INVALID_ARGUMENT naming them all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from crucible.proposer import equivalence, prompts
from crucible.proposer.config import ProposerConfig
from crucible.runtime.errors import InvalidArgument
from crucible.runtime.validation import is_blank

METHOD_COSINE = "embedding_cosine"
METHOD_NLI = "nli_entailment"
METHOD_QUESTION = "question"
METHOD_JUDGE = "llm_judge"
MIN_OPTIONS, MAX_OPTIONS = 2, 26


@dataclasses.dataclass(frozen=True)
class ProposeSpec:
    """A Propose request in plain values. None means unset; `mode` None is UNSPECIFIED; n and max_new_tokens 0 = default."""

    text: str
    mode: str | None
    options: tuple[str, ...] = ()
    correct_option_index: int | None = None
    n: int = 1
    instruction: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int = 0
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class CandidateResult:
    """One kept rewrite: cleaned text, tokens generated (end token included) and finish reason (stop or length)."""

    text: str
    generated_tokens: int
    finish: str


@dataclasses.dataclass(frozen=True)
class ProposeResult:
    """What Propose returns: kept candidates, drop counts, the seed used, the exact prompt and the generator's identity.

    `dropped` counts every dropped candidate by reason (cleaning.DROP_REASONS; only reasons that occurred).
    """

    candidates: list[CandidateResult]
    dropped_empty: int
    dropped_degenerate: int
    seed: int
    prompt: str
    model: Any
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EquivalenceResult:
    """Verdicts of one CheckEquivalence call with the method, threshold and model that produced them.

    `similarity_method` is the method behind the scores (METHOD_QUESTION scores with NLI or cosine).
    """

    verdicts: list[equivalence.PairVerdict]
    method: str
    threshold: float
    model: Any
    similarity_method: str = ""
    content_threshold: float = 0.0


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    """Embeddings of one Embed call, their dimension and the embedding model's identity."""

    embeddings: list[equivalence.EmbeddedText]
    dimension: int
    model: Any


class Violations:
    """Collects every bad field of one request, then raises one INVALID_ARGUMENT naming them all."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []

    def add(self, field: str, description: str, reason: str) -> None:
        self.items.append((field, description, reason))

    def raise_if_any(self) -> None:
        if self.items:
            message = "; ".join(f"{field}: {description}" for field, description, _ in self.items)
            raise InvalidArgument(message, field_violations=[(f, d) for f, d, _ in self.items], reason=self.items[0][2])


def validate_propose(spec: ProposeSpec, config: ProposerConfig) -> None:
    """Raise one INVALID_ARGUMENT naming every bad field of `spec` (fields as in ProposeRequest)."""
    bad = Violations()
    if is_blank(spec.text):
        bad.add("text", "must contain a non-whitespace character", "EMPTY_TEXT")
    elif len(spec.text) > config.max_text_chars:
        bad.add("text", f"has {len(spec.text)} characters, more than the limit of {config.max_text_chars}", "TEXT_TOO_LONG")
    if spec.mode is None:
        bad.add("mode", "is required: PROPOSE_MODE_PARAPHRASE or PROPOSE_MODE_EQUIVALENT_QUESTION", "MODE_UNSPECIFIED")
    elif spec.mode == prompts.MODE_EQUIVALENT_QUESTION:
        if not spec.options:
            bad.add("options", "EQUIVALENT_QUESTION needs the answer options", "MISSING_OPTIONS")
        elif not MIN_OPTIONS <= len(spec.options) <= MAX_OPTIONS:
            bad.add(
                "options", f"has {len(spec.options)} options; {MIN_OPTIONS} to {MAX_OPTIONS} are allowed", "OPTIONS_OUT_OF_RANGE"
            )
        for i, option in enumerate(spec.options):
            if is_blank(option):
                bad.add(f"options[{i}]", "must contain a non-whitespace character", "EMPTY_OPTION")
        if spec.correct_option_index is None:
            bad.add("correct_option_index", "EQUIVALENT_QUESTION needs the index of the correct answer", "MISSING_CORRECT_OPTION")
        elif spec.options and spec.correct_option_index >= len(spec.options):
            bad.add(
                "correct_option_index",
                f"{spec.correct_option_index} is not an index into {len(spec.options)} options",
                "CORRECT_OPTION_OUT_OF_RANGE",
            )
    elif spec.mode == prompts.MODE_PARAPHRASE:
        if spec.options:
            bad.add("options", "must be empty in PARAPHRASE mode", "UNEXPECTED_OPTIONS")
        if spec.correct_option_index is not None:
            bad.add("correct_option_index", "must be unset in PARAPHRASE mode", "UNEXPECTED_OPTIONS")
    if not 0 <= spec.n <= config.max_candidates:
        bad.add("n", f"must be within 1..{config.max_candidates} (0 means 1), got {spec.n}", "N_OUT_OF_RANGE")
    if not 0 <= spec.max_new_tokens <= config.max_new_tokens_limit:
        bad.add(
            "max_new_tokens",
            f"must be within 1..{config.max_new_tokens_limit} (0 means the default "
            f"{config.default_max_new_tokens}), got {spec.max_new_tokens}",
            "MAX_NEW_TOKENS_OUT_OF_RANGE",
        )
    if len(spec.instruction) > config.max_instruction_chars:
        bad.add(
            "instruction",
            f"has {len(spec.instruction)} characters, more than the limit of {config.max_instruction_chars}",
            "INSTRUCTION_TOO_LONG",
        )
    if spec.temperature is not None and not (math.isfinite(spec.temperature) and 0.0 <= spec.temperature <= 2.0):
        bad.add("temperature", f"must be within [0, 2], got {spec.temperature}", "TEMPERATURE_OUT_OF_RANGE")
    if spec.top_p is not None and not (math.isfinite(spec.top_p) and 0.0 < spec.top_p <= 1.0):
        bad.add("top_p", f"must be within (0, 1], got {spec.top_p}", "TOP_P_OUT_OF_RANGE")
    bad.raise_if_any()


def validate_pairs(
    pairs: Sequence[tuple[str, str]],
    method: str | None,
    threshold: float | None,
    pair_options: Sequence[Sequence[str]] | None,
    config: ProposerConfig,
    *,
    nli_loaded: bool,
    content_threshold: float | None = None,
) -> None:
    """Raise one INVALID_ARGUMENT naming every bad field of a CheckEquivalence call (`nli_loaded`: which model
    METHOD_QUESTION scores with, so which threshold range applies)."""
    bad = Violations()
    if not pairs:
        bad.add("pairs", "must hold at least one pair", "EMPTY_PAIRS")
    elif len(pairs) > config.max_pairs_per_call:
        bad.add("pairs", f"has {len(pairs)} pairs, more than the limit of {config.max_pairs_per_call}", "TOO_MANY_PAIRS")
    for i, (first, second) in enumerate(pairs):
        if is_blank(first):
            bad.add(f"pairs[{i}].first", "must contain a non-whitespace character", "EMPTY_TEXT")
        if is_blank(second):
            bad.add(f"pairs[{i}].second", "must contain a non-whitespace character", "EMPTY_TEXT")
    for i, options in enumerate(pair_options or ()):
        if len(options) > MAX_OPTIONS:
            bad.add(f"pairs[{i}].options", f"has {len(options)} options, more than {MAX_OPTIONS}", "OPTIONS_OUT_OF_RANGE")
        elif sum(map(len, options)) > config.max_text_chars:
            bad.add(f"pairs[{i}].options", f"hold more than {config.max_text_chars} characters", "TEXT_TOO_LONG")
    if pair_options is not None and len(pair_options) != len(pairs):
        raise ValueError(f"{len(pair_options)} option lists for {len(pairs)} pairs")
    if method is None:
        bad.add(
            "method",
            "is required: EQUIVALENCE_METHOD_EMBEDDING_COSINE, EQUIVALENCE_METHOD_NLI_ENTAILMENT, "
            "EQUIVALENCE_METHOD_QUESTION or EQUIVALENCE_METHOD_LLM_JUDGE",
            "METHOD_UNSPECIFIED",
        )
    elif threshold is not None:
        scoring = (METHOD_NLI if nli_loaded else METHOD_COSINE) if method == METHOD_QUESTION else method
        low = -1.0 if scoring == METHOD_COSINE else 0.0
        if not (math.isfinite(threshold) and low <= threshold <= 1.0):
            bad.add("threshold", f"must be within [{low:g}, 1] for this method, got {threshold}", "THRESHOLD_OUT_OF_RANGE")
    if content_threshold is not None and not (math.isfinite(content_threshold) and 0.0 <= content_threshold <= 1.0):
        bad.add("content_threshold", f"must be within [0, 1], got {content_threshold}", "THRESHOLD_OUT_OF_RANGE")
    bad.raise_if_any()


def validate_texts(texts: Sequence[str], config: ProposerConfig) -> None:
    """Raise one INVALID_ARGUMENT naming every bad field of an Embed call."""
    bad = Violations()
    if not texts:
        bad.add("texts", "must hold at least one text", "EMPTY_TEXTS")
    elif len(texts) > config.max_texts_per_call:
        bad.add("texts", f"has {len(texts)} texts, more than the limit of {config.max_texts_per_call}", "TOO_MANY_TEXTS")
    for i, text in enumerate(texts):
        if is_blank(text):
            bad.add(f"texts[{i}]", "must contain a non-whitespace character", "EMPTY_TEXT")
    bad.raise_if_any()
