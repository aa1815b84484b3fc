"""The reward loop: a composite paraphrase reward (detector evasion, meaning kept, fluency, hygiene) over the mesh.

All components of a batch are requested concurrently; TRLReward fits TRL's GRPOTrainer, and clients/crucible/clients/tinker_env.py
implements tinker-cookbook's environment protocol on top of CompositeReward.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from crucible.clients.mesh import Mesh, MeshConfig
from crucible.clients.reward_text import (
    copy_score,
    english_likeness,
    language_score,
    length_score,
    repetition_score,
)

__all__ = [
    "COMPONENTS",
    "CompositeReward",
    "GroupResult",
    "RewardBreakdown",
    "RewardConfig",
    "TRLReward",
    "combine",
    "copy_score",
    "embedding_similarity",
    "english_likeness",
    "evasion_score",
    "fluency_score",
    "group_advantages",
    "group_evasion",
    "language_score",
    "length_score",
    "mean_components",
    "repetition_score",
    "similarity_gate",
]


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
    #: "group": evasion is 1 / (1 + exp(z)), z the detector score's z-score among the rewrites of the same original in
    #: the batch (a GRPO group), its std floored at `group_min_std`; groups of one fall back to the absolute signal.
    #: Measured with SmolLM2's rewrites (examples/grpo/README.md): the absolute signal sits on the flat part of its
    #: logistic and moves ~0.02 inside a group, a tenth of the similarity's spread, so GRPO could not learn from it.
    #: The score is the criterion, or logit(P(machine)) with detector_signal="probability". "none": absolute signal.
    detector_normalization: str = "group"
    group_min_std: float = 0.1
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
    #: Similarity gate on the other terms: detector evasion and fluency are multiplied by
    #: clamp((similarity - low) / (high - low), 0, 1), so a rewrite that lost the meaning earns nothing for looking human
    #: or reading well. (cos + 1) / 2 of the proposer's embeddings: SmolLM2-135M's sampled rewrites of 40-word news and
    #: story openings scored 0.59-0.94 (mean 0.77; the faithful ones >= 0.85, off-topic ones 0.6-0.7); "bike bike bike
    #: bike bike" against a sentence about bike lanes 0.63. low = high = 0 disables the gate.
    similarity_gate_low: float = 0.7
    similarity_gate_high: float = 0.85
    #: Fluency: 1 within [target / plateau, target * plateau], falling linearly in log-perplexity to 0 at the bounds,
    #: 0 outside; then multiplied by (1 - repetition), since a loop has a low, "fluent" perplexity. The defaults fit the
    #: detector's SmolLM2-135M scoring model, which puts fluent English at perplexity ~15-150.
    perplexity_target: float = 40.0
    perplexity_min: float = 8.0
    perplexity_max: float = 250.0
    perplexity_plateau: float = 2.5
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
    #: Copying: the rewrite's word-trigram containment in the original (reward_text.copy_score); the share above
    #: `copy_tolerance`, rescaled to [0, 1], is subtracted with `w_copy`, so near-copies stop paying for their
    #: similarity. A rewrite at or above `near_copy_threshold` is flagged "near_copy" (evade_eval counts them).
    w_copy: float = 1.0
    copy_tolerance: float = 0.5
    near_copy_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.detector_signal not in ("probability", "criterion"):
            raise ValueError("detector_signal must be 'probability' or 'criterion'")
        if self.similarity not in ("embedding", "equivalence"):
            raise ValueError("similarity must be 'embedding' or 'equivalence'")
        if self.fluency_source not in ("detector", "scorer"):
            raise ValueError("fluency_source must be 'detector' or 'scorer'")
        if self.criterion_scale <= 0:
            raise ValueError("criterion_scale must be positive")
        if self.detector_normalization not in ("none", "group"):
            raise ValueError("detector_normalization must be 'none' or 'group'")
        if self.group_min_std <= 0:
            raise ValueError("group_min_std must be positive")
        if not 0 <= self.similarity_gate_low <= self.similarity_gate_high <= 1:
            raise ValueError("need 0 <= similarity_gate_low <= similarity_gate_high <= 1")
        if not (self.w_copy >= 0 and 0 <= self.copy_tolerance < 1 and 0 < self.near_copy_threshold <= 1):
            raise ValueError("need w_copy >= 0, 0 <= copy_tolerance < 1, 0 < near_copy_threshold <= 1")
        if self.perplexity_plateau < 1:
            raise ValueError("perplexity_plateau must be >= 1")
        if not (0.0 <= self.unreliable_short_evasion <= 1.0 and 0.0 <= self.unreliable_invisible_evasion <= 1.0):
            raise ValueError("unreliable_short_evasion and unreliable_invisible_evasion must be within [0, 1]")
        if not 0 < self.perplexity_min < self.perplexity_target < self.perplexity_max:
            raise ValueError("need 0 < perplexity_min < perplexity_target < perplexity_max")
        if not self.perplexity_min < self.perplexity_target / self.perplexity_plateau:
            raise ValueError("the fluency plateau (target / plateau .. target * plateau) must lie inside the bounds")
        if not self.perplexity_target * self.perplexity_plateau < self.perplexity_max:
            raise ValueError("the fluency plateau (target / plateau .. target * plateau) must lie inside the bounds")
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
    copy: float = 0.0  # word-trigram containment of the rewrite in the original, in [0, 1]; 1 = verbatim copy
    gate: float = 1.0  # similarity gate in [0, 1] applied to the detector and fluency terms

    def components(self, config: RewardConfig) -> dict[str, float]:
        """Each component's weighted contribution to `total` (they sum to it), for logs and progress lines."""
        if "empty" in self.flags:
            return dict.fromkeys(COMPONENTS[:-1], 0.0) | {"penalty": self.penalty}
        scale = config.below_threshold_scale if "below_similarity_threshold" in self.flags else 1.0
        return {
            "detector": config.w_detector * self.detector * self.gate,
            "similarity": config.w_similarity * self.similarity * scale,
            "fluency": config.w_fluency * self.fluency * self.gate,
            "repetition": -config.w_repetition * self.repetition,
            "language": -config.w_language * (1.0 - self.language),
            "length": -config.w_length * (1.0 - self.length),
            "copy": -config.w_copy * copy_excess(self.copy, config),
            "penalty": self.penalty,
        }


#: The names `RewardBreakdown.components` returns, in order.
COMPONENTS = ("detector", "similarity", "fluency", "repetition", "language", "length", "copy", "penalty")


@dataclasses.dataclass(frozen=True)
class GroupResult:
    """Rewards of one GRPO group with group-normalised advantages (r - mean) / (std + 1e-4)."""

    rewards: list[RewardBreakdown]
    advantages: list[float]

    @property
    def totals(self) -> list[float]:
        return [r.total for r in self.rewards]


def fluency_score(perplexity: float, config: RewardConfig) -> float:
    """1 on the plateau around the target perplexity, linear in log-perplexity down to 0 at the min/max bounds."""
    if not math.isfinite(perplexity) or perplexity <= 0:
        return 0.0
    low = config.perplexity_target / config.perplexity_plateau
    high = config.perplexity_target * config.perplexity_plateau
    if perplexity < low:
        edge, bound = low, config.perplexity_min
    elif perplexity > high:
        edge, bound = high, config.perplexity_max
    else:
        return 1.0
    return max(0.0, 1.0 - abs(math.log(perplexity / edge)) / abs(math.log(bound / edge)))


def similarity_gate(similarity: float, config: RewardConfig) -> float:
    """clamp((similarity - gate_low) / (gate_high - gate_low), 0, 1); a step at gate_low when low == high."""
    low, high = config.similarity_gate_low, config.similarity_gate_high
    if high <= low:
        return 1.0 if similarity >= low else 0.0
    return min(1.0, max(0.0, (similarity - low) / (high - low)))


def copy_excess(copy: float, config: RewardConfig) -> float:
    """The copy component in [0, 1]: containment above the tolerance, rescaled so a verbatim copy scores 1."""
    return max(0.0, (copy - config.copy_tolerance) / (1.0 - config.copy_tolerance))


def detector_score(criterion: float | None, probability: float | None, config: RewardConfig) -> float | None:
    """The score group normalisation works on (higher = more machine-like): logit(P) or the criterion."""
    if config.detector_signal == "probability" and probability is not None:
        p = min(1.0 - 1e-6, max(1e-6, probability))
        return math.log(p / (1.0 - p))
    return criterion


def group_evasion(scores: Sequence[float | None], config: RewardConfig) -> list[float | None]:
    """Evasion within one group: 1 / (1 + exp(z)), z = (s - mean) / max(std, group_min_std) over the non-None scores.

    None stays None (an unreliable detection keeps its configured value); a group with fewer than two scores gives
    None for all, so the caller falls back to the absolute signal.
    """
    known = [s for s in scores if s is not None]
    if len(known) < 2:
        return [None] * len(scores)
    mean = sum(known) / len(known)
    std = max(config.group_min_std, math.sqrt(sum((s - mean) ** 2 for s in known) / len(known)))
    return [None if s is None else 1.0 / (1.0 + math.exp(max(-60.0, min(60.0, (s - mean) / std)))) for s in scores]


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
    evasion: float | None = None,
) -> RewardBreakdown:
    """One sample's reward from its raw signals (the single definition both the mesh path and baselines use).

    `unreliable_reason` is the detector's reason for withholding the probability ("" = reliable); see
    RewardConfig.unreliable_short_evasion / unreliable_invisible_evasion. `evasion`, when given, replaces the
    absolute evasion of a reliable detection (group_evasion's value: CompositeReward.score passes it).
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
    if evasion is None or unreliable_reason:
        evasion = evasion_score(criterion, probability, cfg, unreliable_reason=unreliable_reason)
    repetition = repetition_score(completion)
    fluency = (fluency_score(perplexity, cfg) if perplexity is not None else 0.0) * (1.0 - repetition)
    gate = similarity_gate(similarity, cfg)
    copy = copy_score(original, completion)
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
    language = language_score(original, completion, cfg)
    length = length_score(original, completion, cfg)
    if repetition >= 0.5:
        flags.append("repetitive")
    if language < 0.5:
        flags.append("not_english")
    if length < 1.0:
        flags.append("length_out_of_bounds")
    if gate < 1.0:
        flags.append("similarity_gated")
    if copy >= cfg.near_copy_threshold:
        flags.append("near_copy")
    total = (
        (cfg.w_detector * evasion + cfg.w_fluency * fluency) * gate
        + cfg.w_similarity * sim_component
        + penalty
        - cfg.w_repetition * repetition
        - cfg.w_language * (1.0 - language)
        - cfg.w_length * (1.0 - length)
        - cfg.w_copy * copy_excess(copy, cfg)
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
        copy=copy,
        gate=gate,
    )


def embedding_similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """(cosine + 1) / 2, the similarity component for embeddings."""
    return (_cosine(a, b) + 1.0) / 2.0


class CompositeReward:
    """reward = gate * (w_det * evasion + w_flu * fluency) + w_sim * similarity - hygiene + penalties, over the mesh."""

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

        position = {i: j for j, i in enumerate(live)}
        reasons = {
            i: "" if d.reliable else (d.unreliable_reason or UNRELIABLE_TOO_FEW_TOKENS)
            for i, d in ((i, detected.detections[position[i]]) for i in live)
        }
        evasions: dict[int, float | None] = {}
        if cfg.detector_normalization == "group":
            groups: dict[str, list[int]] = {}
            for i in live:
                groups.setdefault(originals[i], []).append(i)
            for members in groups.values():
                scores = [
                    None
                    if reasons[i]
                    else detector_score(
                        detected.detections[position[i]].criterion, detected.detections[position[i]].probability, cfg
                    )
                    for i in members
                ]
                evasions.update(zip(members, group_evasion(scores, cfg), strict=True))
        out: list[RewardBreakdown] = []
        for i, (original, completion) in enumerate(zip(originals, completions, strict=True)):
            if i not in position:
                out.append(combine(original, completion, None, None, None, 0.0, cfg))
                continue
            j = position[i]
            det = detected.detections[j]
            perplexity = scored[j].perplexity if cfg.fluency_source == "scorer" else det.perplexity
            out.append(
                combine(
                    original,
                    completion,
                    det.criterion,
                    det.probability,
                    perplexity,
                    similarity[i],
                    cfg,
                    unreliable_reason=reasons[i],
                    evasion=evasions.get(i),
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
