"""The reward loop: a composite paraphrase reward (detector evasion, meaning kept, fluency, hygiene) over the mesh.

All components of a batch are requested concurrently; TRLReward fits TRL's GRPOTrainer, and clients/crucible/clients/tinker_env.py
implements tinker-cookbook's environment protocol on top of CompositeReward.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import zlib
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from crucible.clients.mesh import Mesh, MeshConfig


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights, transforms, thresholds and penalties of the composite reward (defaults follow StealthRL's shape)."""

    #: Weight of detector evasion, in [0, 1] per sample: 1 - P(machine), or a transform of the criterion.
    w_detector: float = 1.0
    #: Weight of semantic similarity between original and rewrite, in [0, 1].
    w_similarity: float = 1.0
    #: Weight of fluency (perplexity near a target), in [0, 1].
    w_fluency: float = 0.5
    #: "probability" uses the calibrated P(machine); "criterion" maps the raw criterion through a logistic
    #: 1 / (1 + exp((criterion - center) / scale)) — use it when the detector's model pair is uncalibrated.
    detector_signal: str = "probability"
    criterion_center: float = 0.0
    criterion_scale: float = 1.0
    #: Detector evasion when the detector marks a detection unreliable (its probability withheld), by reason.
    #: Too few tokens scored: 0.5, neutral. Such a score is noise (the criterion's AUROC on texts of under 32 tokens
    #: is near chance), so rewarding 1 - P would teach noise, and a rewrite that is short for its original already
    #: pays `too_short_penalty` and the length term; neutral adds no gradient of its own inside a GRPO group.
    #: Invisible characters: 0.0, as if fully detected. Zero-width and bidi characters change the tokens the
    #: detector sees without changing what a reader sees, a known evasion trick; it must never pay.
    unreliable_short_evasion: float = 0.5
    unreliable_invisible_evasion: float = 0.0
    #: "embedding": (cosine + 1) / 2 of proposer embeddings; "equivalence": the proposer's CheckEquivalence score.
    similarity: str = "embedding"
    #: Below this similarity the meaning is considered lost: the similarity component is multiplied by
    #: `below_threshold_scale` (continuous, so GRPO groups still get a gradient).
    similarity_threshold: float = 0.0
    below_threshold_scale: float = 0.5
    #: Fluency: 1 at `perplexity_target`, falling linearly in log-perplexity to 0 at the bounds, 0 outside.
    perplexity_target: float = 30.0
    perplexity_min: float = 5.0
    perplexity_max: float = 80.0
    #: Where perplexity comes from: "detector" (the scoring model's pass) or "scorer" (the target model).
    fluency_source: str = "detector"
    #: Penalties added to the total.
    empty_penalty: float = -1.0
    min_words: int = 10
    too_short_penalty: float = -0.5
    max_length_ratio: float = 3.0
    too_long_penalty: float = -0.5
    #: Hygiene against reward hacking (each a component in [0, 1], subtracted with its weight; 0 weight disables it).
    #: Repetition: 1 - mean(distinct-2, distinct-3) word n-gram ratio, or the zlib-compression degeneracy when larger
    #: (catches loops inside long "words"); fluent prose scores ~0, "word word word ..." ~0.9.
    w_repetition: float = 1.0
    #: Language: how far the rewrite falls from the original's English-likeness (share of alphabetic word tokens times
    #: the stopword share relative to `language_stopword_share`); not checked when the original itself is not English.
    w_language: float = 0.5
    language_stopword_share: float = 0.15
    #: Length: 0 while words(rewrite) / words(original) is within [length_ratio_min, length_ratio_max], rising linearly in
    #: log-ratio to 1 at half the minimum / twice the maximum (continuous, unlike the flat too_short/too_long penalties).
    w_length: float = 0.5
    length_ratio_min: float = 0.5
    length_ratio_max: float = 2.0

    def __post_init__(self) -> None:
        if self.detector_signal not in ("probability", "criterion"):
            raise ValueError("detector_signal must be 'probability' or 'criterion'")
        if self.similarity not in ("embedding", "equivalence"):
            raise ValueError("similarity must be 'embedding' or 'equivalence'")
        if self.fluency_source not in ("detector", "scorer"):
            raise ValueError("fluency_source must be 'detector' or 'scorer'")
        if self.criterion_scale <= 0:
            raise ValueError("criterion_scale must be positive")
        if not (0.0 <= self.unreliable_short_evasion <= 1.0 and 0.0 <= self.unreliable_invisible_evasion <= 1.0):
            raise ValueError("unreliable_short_evasion and unreliable_invisible_evasion must be within [0, 1]")
        if not 0 < self.perplexity_min < self.perplexity_target < self.perplexity_max:
            raise ValueError("need 0 < perplexity_min < perplexity_target < perplexity_max")
        if min(self.w_repetition, self.w_language, self.w_length) < 0:
            raise ValueError("hygiene weights (w_repetition, w_language, w_length) must be >= 0")
        if not 0 < self.language_stopword_share <= 1:
            raise ValueError("language_stopword_share must be in (0, 1]")
        if not 0 < self.length_ratio_min < 1 < self.length_ratio_max:
            raise ValueError("need 0 < length_ratio_min < 1 < length_ratio_max")


@dataclasses.dataclass(frozen=True)
class RewardBreakdown:
    """Every component of one sample's reward, and the weighted total."""

    total: float
    detector: float  # evasion in [0, 1]; higher = looks more human
    similarity: float  # in [0, 1]
    fluency: float  # in [0, 1]
    penalty: float  # sum of penalties (<= 0)
    p_machine: float | None  # calibrated P(machine) when available
    criterion: float | None
    perplexity: float | None
    # e.g. ("empty",), ("too_short",), ("below_similarity_threshold",), ("repetitive",), ("detector_unreliable:too_few_tokens",)
    flags: tuple[str, ...] = ()
    repetition: float = 0.0  # degeneracy in [0, 1]; higher = more repetitive (subtracted with w_repetition)
    language: float = 1.0  # English-likeness relative to the original, in [0, 1] (1 - language, times w_language)
    length: float = 1.0  # 1 within the length-ratio bounds, falling to 0 outside (1 - length, times w_length)

    def components(self, config: RewardConfig) -> dict[str, float]:
        """Each component's weighted contribution to `total` (they sum to it), for logs and progress lines."""
        if "empty" in self.flags:
            return dict.fromkeys(COMPONENTS[:-1], 0.0) | {"penalty": self.penalty}
        scale = config.below_threshold_scale if "below_similarity_threshold" in self.flags else 1.0
        return {
            "detector": config.w_detector * self.detector,
            "similarity": config.w_similarity * self.similarity * scale,
            "fluency": config.w_fluency * self.fluency,
            "repetition": -config.w_repetition * self.repetition,
            "language": -config.w_language * (1.0 - self.language),
            "length": -config.w_length * (1.0 - self.length),
            "penalty": self.penalty,
        }


#: The names `RewardBreakdown.components` returns, in order.
COMPONENTS = ("detector", "similarity", "fluency", "repetition", "language", "length", "penalty")


@dataclasses.dataclass(frozen=True)
class GroupResult:
    """Rewards of one GRPO group with group-normalised advantages (r - mean) / (std + 1e-4)."""

    rewards: list[RewardBreakdown]
    advantages: list[float]

    @property
    def totals(self) -> list[float]:
        return [r.total for r in self.rewards]


def fluency_score(perplexity: float, config: RewardConfig) -> float:
    """1 at the target perplexity, linear in log-perplexity down to 0 at the min/max bounds, 0 outside them."""
    if not math.isfinite(perplexity) or perplexity <= 0:
        return 0.0
    log_p, log_t = math.log(perplexity), math.log(config.perplexity_target)
    bound = math.log(config.perplexity_min) if perplexity < config.perplexity_target else math.log(config.perplexity_max)
    return max(0.0, 1.0 - abs(log_p - log_t) / abs(bound - log_t))


#: Detection.unreliable_reason values the reward knows (the SDK's short names).
UNRELIABLE_TOO_FEW_TOKENS = "too_few_tokens"
UNRELIABLE_INVISIBLE = "invisible_characters"


def evasion_score(
    criterion: float | None, probability: float | None, config: RewardConfig, *, unreliable_reason: str = ""
) -> float:
    """Detector evasion in [0, 1] from P(machine) or from the criterion's logistic transform.

    An unreliable detection (`unreliable_reason` set) gets the configured evasion for its reason instead, whichever
    signal is used: its probability is withheld, and its criterion is as unreliable. An unknown reason is neutral.
    """
    if unreliable_reason:
        if unreliable_reason == UNRELIABLE_INVISIBLE:
            return config.unreliable_invisible_evasion
        return config.unreliable_short_evasion
    if config.detector_signal == "probability":
        if probability is None:
            raise ValueError(
                "the detector returned no calibrated probability for this model pair; use detector_signal='criterion' "
                "(with criterion_center/scale fitted to your data) or calibrate the detector"
            )
        return 1.0 - probability
    if criterion is None:
        raise ValueError("detector returned no criterion")
    z = (criterion - config.criterion_center) / config.criterion_scale
    return 1.0 / (1.0 + math.exp(min(60.0, z)))


def group_advantages(totals: Sequence[float]) -> list[float]:
    """GRPO advantages: (r - group mean) / (group std + 1e-4), population std as TRL computes it."""
    if not totals:
        return []
    mean = sum(totals) / len(totals)
    std = math.sqrt(sum((t - mean) ** 2 for t in totals) / len(totals))
    return [(t - mean) / (std + 1e-4) for t in totals]


_CONTROL = dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n\r")


def clean_text(text: str) -> str:
    """Drop C0 control characters (other than tab/newline) that generations sometimes contain and services reject."""
    return text.translate(_CONTROL)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


_WORD = re.compile(r"\w+(?:['’]\w+)*")
_ASCII_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*|[0-9][0-9.,:%-]*")
#: Common English function words (articles, pronouns, auxiliaries, prepositions, conjunctions): 30-50 % of the words of
#: ordinary English prose, near 0 % of other languages' prose and of keyword soup.
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "also",
        "may",
        "might",
        "must",
        "shall",
        "upon",
        "onto",
    ]
)


def _distinct(words: Sequence[str], n: int) -> float | None:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_score(text: str) -> float:
    """Degeneracy in [0, 1]: 1 - mean distinct-2/3 word n-gram ratio, or zlib's verdict on long texts when larger.

    Ordinary prose has almost no repeated bigrams (score ~0); "word word word ..." scores ~0.9. Compression
    (compressed/raw bytes under ~0.4) catches loops the word split misses, e.g. one long repeated token.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    ratios = [r for r in (_distinct(words, 2), _distinct(words, 3)) if r is not None]
    by_words = 1.0 - sum(ratios) / len(ratios) if ratios else 0.0
    raw = text.encode("utf-8")
    by_zlib = 0.0
    if len(raw) >= 64:  # shorter texts do not compress (header overhead), so the ratio says nothing
        ratio = len(zlib.compress(raw, 9)) / len(raw)
        by_zlib = min(1.0, max(0.0, (0.4 - ratio) / 0.3))
    return max(by_words, by_zlib)


def english_likeness(text: str, config: RewardConfig) -> float:
    """In [0, 1]: share of word tokens that are ASCII words or numbers, times min(1, stopword share / target).

    The stopword share is smoothed towards 1/4 by 4 pseudo-words, so a terse but English sentence is not judged on
    a handful of words alone.
    """
    tokens = text.split()
    if not tokens:
        return 0.0
    ascii_share = sum(1 for t in tokens if _ASCII_WORD.fullmatch(t.strip(".,;:!?\"'()[]{}“”‘’«»…-—–"))) / len(tokens)
    words = [w.lower() for w in _WORD.findall(text)]
    stop_share = (sum(1 for w in words if w in _STOPWORDS) + 1) / (len(words) + 4)
    return ascii_share * min(1.0, stop_share / config.language_stopword_share)


def language_score(original: str, completion: str, config: RewardConfig) -> float:
    """The rewrite's English-likeness relative to the original's, in [0, 1]; 1 (unchecked) for a non-English original."""
    reference = english_likeness(original, config)
    if reference < 0.5:
        return 1.0
    return min(1.0, english_likeness(completion, config) / reference)


def length_score(original: str, completion: str, config: RewardConfig) -> float:
    """1 while the word-count ratio is within the bounds; linear in log-ratio down to 0 at half the min / twice the max."""
    ratio = max(1, len(completion.split())) / max(1, len(original.split()))
    if ratio < config.length_ratio_min:
        return max(0.0, 1.0 - math.log(config.length_ratio_min / ratio) / math.log(2.0))
    if ratio > config.length_ratio_max:
        return max(0.0, 1.0 - math.log(ratio / config.length_ratio_max) / math.log(2.0))
    return 1.0


def combine(
    original: str,
    completion: str,
    criterion: float | None,
    probability: float | None,
    perplexity: float | None,
    similarity: float,
    config: RewardConfig,
    *,
    unreliable_reason: str = "",
) -> RewardBreakdown:
    """One sample's reward from its raw signals (the single definition both the mesh path and baselines use).

    `unreliable_reason` is the detector's reason for withholding the probability ("" = reliable); see
    RewardConfig.unreliable_short_evasion / unreliable_invisible_evasion.
    """
    cfg = config
    if not completion.strip():
        return RewardBreakdown(
            cfg.empty_penalty,
            0.0,
            0.0,
            0.0,
            cfg.empty_penalty,
            None,
            None,
            None,
            ("empty",),
            repetition=0.0,
            language=0.0,
            length=0.0,
        )
    evasion = evasion_score(criterion, probability, cfg, unreliable_reason=unreliable_reason)
    fluency = fluency_score(perplexity, cfg) if perplexity is not None else 0.0
    flags: list[str] = [f"detector_unreliable:{unreliable_reason}"] if unreliable_reason else []
    sim_component = similarity
    if similarity < cfg.similarity_threshold:
        sim_component *= cfg.below_threshold_scale
        flags.append("below_similarity_threshold")
    penalty = 0.0
    words = len(completion.split())
    if words < cfg.min_words:
        penalty += cfg.too_short_penalty
        flags.append("too_short")
    if words > cfg.max_length_ratio * max(1, len(original.split())):
        penalty += cfg.too_long_penalty
        flags.append("too_long")
    repetition = repetition_score(completion)
    language = language_score(original, completion, cfg)
    length = length_score(original, completion, cfg)
    if repetition >= 0.5:
        flags.append("repetitive")
    if language < 0.5:
        flags.append("not_english")
    if length < 1.0:
        flags.append("length_out_of_bounds")
    total = (
        cfg.w_detector * evasion
        + cfg.w_similarity * sim_component
        + cfg.w_fluency * fluency
        + penalty
        - cfg.w_repetition * repetition
        - cfg.w_language * (1.0 - language)
        - cfg.w_length * (1.0 - length)
    )
    return RewardBreakdown(
        total,
        evasion,
        similarity,
        fluency,
        penalty,
        probability,
        criterion,
        perplexity,
        tuple(flags),
        repetition=repetition,
        language=language,
        length=length,
    )


def embedding_similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """(cosine + 1) / 2, the similarity component for embeddings."""
    return (_cosine(a, b) + 1.0) / 2.0


class CompositeReward:
    """reward = w_det * evasion + w_sim * similarity + w_flu * fluency + penalties, computed over the mesh."""

    def __init__(self, mesh: Mesh | None = None, config: RewardConfig | None = None) -> None:
        self.mesh = mesh or Mesh()
        self.config = config or RewardConfig()

    async def score(self, originals: Sequence[str], completions: Sequence[str]) -> list[RewardBreakdown]:
        """One breakdown per (original, completion) pair; every service call for the batch is issued concurrently."""
        if len(originals) != len(completions):
            raise ValueError(f"{len(originals)} originals for {len(completions)} completions")
        cfg = self.config
        completions = [clean_text(c) for c in completions]
        live = [i for i, c in enumerate(completions) if c.strip()]
        texts = [completions[i] for i in live]
        detect_task: Awaitable[Any] = self.mesh.detector.detect(texts) if texts else _none()
        sim_task: Awaitable[Any]
        if cfg.similarity == "embedding":
            unique_originals = list(dict.fromkeys(originals[i] for i in live))
            sim_task = self.mesh.proposer.embed(unique_originals + texts) if texts else _none()
        else:
            sim_task = self.mesh.proposer.check_equivalence([(originals[i], completions[i]) for i in live]) if texts else _none()
        ppl_task: Awaitable[Any] = self.mesh.scorer.score_texts(texts) if texts and cfg.fluency_source == "scorer" else _none()
        results: list[Any] = list(await asyncio.gather(detect_task, sim_task, ppl_task))
        detected, similar, scored = results  # each None when there was nothing to ask

        similarity: dict[int, float] = {}
        if texts and cfg.similarity == "embedding":
            vectors = similar
            index = {o: k for k, o in enumerate(unique_originals)}
            offset = len(unique_originals)
            for j, i in enumerate(live):
                similarity[i] = embedding_similarity(vectors[index[originals[i]]], vectors[offset + j])
        elif texts:
            for j, i in enumerate(live):
                similarity[i] = similar[j].score

        out: list[RewardBreakdown] = []
        position = {i: j for j, i in enumerate(live)}
        for i, (original, completion) in enumerate(zip(originals, completions, strict=True)):
            if i not in position:
                out.append(combine(original, completion, None, None, None, 0.0, cfg))
                continue
            j = position[i]
            det = detected.detections[j]
            perplexity = scored[j].perplexity if cfg.fluency_source == "scorer" else det.perplexity
            reason = "" if det.reliable else (det.unreliable_reason or UNRELIABLE_TOO_FEW_TOKENS)
            out.append(
                combine(
                    original, completion, det.criterion, det.probability, perplexity, similarity[i], cfg, unreliable_reason=reason
                )
            )
        return out

    async def score_group(self, original: str, completions: Sequence[str]) -> GroupResult:
        """A GRPO group: one original, its sampled rewrites; rewards plus group-normalised advantages."""
        rewards = await self.score([original] * len(completions), completions)
        return GroupResult(rewards, group_advantages([r.total for r in rewards]))


async def _none() -> None:
    return None


def _completion_text(completion: Any) -> str:
    """TRL passes strings (standard format) or message lists (conversational format)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


class TRLReward:
    """A TRL GRPOTrainer reward function: `reward_funcs=[TRLReward(...)]`; TRL awaits async reward functions.

    The original text is the dataset column named `original_column` when present, else the prompt itself. When TRL
    passes its `log_metric` hook, the batch mean of each weighted component is logged as `reward_<component>`.
    """

    def __init__(
        self, config: RewardConfig | None = None, mesh_config: MeshConfig | None = None, original_column: str = "original"
    ) -> None:
        self.config = config or RewardConfig()
        self.mesh_config = mesh_config
        self.original_column = original_column
        self.__name__ = "crucible_composite_reward"  # TRL logs reward functions by __name__
        self._reward: CompositeReward | None = None

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if self._reward is None:
            self._reward = CompositeReward(Mesh(self.mesh_config), self.config)
        originals = kwargs.get(self.original_column) or [_completion_text(p) for p in prompts]
        texts = [_completion_text(c) for c in completions]
        rewards = await self._reward.score(list(originals), texts)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and rewards:
            for name, value in mean_components(rewards, self.config).items():
                log_metric(f"reward_{name}", value)
        return [r.total for r in rewards]

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "mesh_config": self.mesh_config, "original_column": self.original_column}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]


def mean_components(rewards: Sequence[RewardBreakdown], config: RewardConfig) -> dict[str, float]:
    """Batch mean of each weighted component (`RewardBreakdown.components`), keyed by component name."""
    sums = dict.fromkeys(COMPONENTS, 0.0)
    for r in rewards:
        for name, value in r.components(config).items():
            sums[name] += value
    return {name: value / max(1, len(rewards)) for name, value in sums.items()}
