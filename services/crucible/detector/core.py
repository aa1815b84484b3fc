"""The detector's compute core: `Detector` (models, input checks, tokenisation, batched scoring) and `score_many`,
which the engine's pipeline, the CLI and the benchmarks call directly; no gRPC, no batching, no calibration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

import torch

from crucible.detector.config import LIKELIHOOD_AUTO, DetectorConfig
from crucible.detector.criterion import (
    CausalScorer,
    StatisticsKernel,
    check_same_tokenizer,
    compiler_available,
    model_statistics,
    pad_batch,
)
from crucible.detector.kernel_cache import kernel_cache_dir
from crucible.runtime.errors import InvalidArgument
from crucible.runtime.validation import is_blank

log = logging.getLogger(__name__)

FAST_DETECTGPT = "fast_detectgpt"
BINOCULARS = "binoculars"
CLASSIFIER = "classifier"
#: Mean log-likelihood per scored token under a second causal model (`likelihood_model`), with its own tokenizer.
LIKELIHOOD = "likelihood"
#: By-products of the Fast-DetectGPT forward pass (per-token means) that the logistic ensemble may use as features.
LOG_LIKELIHOOD = "log_likelihood"
LOG_RANK = "log_rank"
ENTROPY = "entropy"
BY_PRODUCTS = (LOG_LIKELIHOOD, LOG_RANK, ENTROPY)
#: Version of the statistics' definitions; part of the cache fingerprint, so results cached under older formulas
#: (version 1: Binoculars cross-perplexity over the scored positions only) are never served.
STATISTICS_VERSION = 2
STATS_KERNELS = ("eager", "compile", "auto")

# Labels that name the machine class in common AI-text classifiers (compared case-insensitively).
_MACHINE_LABELS = ("fake", "machine", "ai", "ai-generated", "ai_generated", "machine-generated", "generated", "chatgpt")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclasses.dataclass(frozen=True)
class PreparedText:
    """One checked, tokenised text ready for a batch: token ids after truncation and which members to run."""

    text: str
    ids: tuple[int, ...]
    truncated: bool
    classifier: bool


@dataclasses.dataclass(frozen=True)
class RawScores:
    """Raw scores of one text (no calibration): the criterion, perplexity, each computed member's score and the
    by-products of the same pass (mean log-likelihood, mean log-rank, mean entropy per scored token)."""

    criterion: float
    perplexity: float
    binoculars: float
    token_count: int
    truncated: bool
    log_likelihood: float
    log_rank: float
    entropy: float
    classifier: float | None = None
    classifier_tokens: int = 0
    classifier_truncated: bool = False
    likelihood: float | None = None
    likelihood_tokens: int = 0
    likelihood_truncated: bool = False

    def member_raw(self) -> dict[str, float]:
        """Raw score per computed member name."""
        out = {FAST_DETECTGPT: self.criterion, BINOCULARS: self.binoculars}
        if self.classifier is not None:
            out[CLASSIFIER] = self.classifier
        if self.likelihood is not None:
            out[LIKELIHOOD] = self.likelihood
        return out

    def features(self) -> dict[str, float]:
        """Every raw score the logistic ensemble can use: the members' and the by-products."""
        return {**self.member_raw(), LOG_LIKELIHOOD: self.log_likelihood, LOG_RANK: self.log_rank, ENTROPY: self.entropy}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> RawScores:
        return cls(**json.loads(raw))


@dataclasses.dataclass(frozen=True)
class MemberDescription:
    """How one enabled member runs (reported in every response and by GetInfo)."""

    member: str
    single_model: bool
    max_tokens: int
    machine_label: str = ""
    notes: tuple[str, ...] = ()


def auto_likelihood_model(settings: DetectorConfig, scoring: Any, sampling: Any | None) -> str:
    """What `likelihood_model = auto` loads for these scoring/sampling models (`calibrated_likelihood_model`: the
    user's calibration file decides when it has entries for them, else the built-in ones); '' for none."""
    from crucible.detector.calibration import calibrated_likelihood_model, calibration_files

    files = calibration_files(settings.calibration_file)
    scoring_id = (scoring.identity.name, scoring.identity.revision)
    sampling_id = (sampling.identity.name, sampling.identity.revision) if sampling is not None else scoring_id
    return calibrated_likelihood_model(files, sampling_id, scoring_id)


def machine_label_index(id2label: dict[Any, str], wanted: str = "") -> tuple[int, str]:
    """The class index whose probability is P(machine), read from config id2label; never a hard-coded index.

    `wanted` names the label (case-insensitive); empty means the one label among common machine-class names
    (Fake, Machine, AI, ...). Raises ValueError listing the labels when there is no single answer.
    """
    labels = {int(k): str(v) for k, v in (id2label or {}).items()}
    if not labels:
        raise ValueError("the classifier's config.json has no id2label; cannot tell which class means machine-written")
    if wanted:
        hits = [i for i, name in labels.items() if name.lower() == wanted.lower()]
        if not hits:
            raise ValueError(f"machine label {wanted!r} is not among the classifier's labels {sorted(labels.values())}")
    else:
        hits = [i for i, name in labels.items() if name.lower() in _MACHINE_LABELS]
        if len(hits) != 1:
            raise ValueError(
                f"cannot tell which of the classifier's labels {sorted(labels.values())} means machine-written; "
                "set classifier_machine_label"
            )
    return hits[0], labels[hits[0]]


class Detector:
    """Loaded models and the batched scoring of texts: Fast-DetectGPT, Binoculars (same pass), the classifier and the
    likelihood member (a second causal model)."""

    def __init__(
        self,
        settings: DetectorConfig,
        scoring: Any,
        sampling: Any | None = None,
        classifier: Any | None = None,
        likelihood: Any | None = None,
    ) -> None:
        """Wrap already loaded models (crucible.models.LoadedModel); `sampling=None` means the scoring model.

        Of `settings` the core reads the model, scoring and limit fields (not the server's or the batcher's)."""
        if settings.max_tokens < 2:
            raise ValueError("max_tokens must be at least 2 (the first token is never scored)")
        if settings.padding_side not in ("left", "right"):
            raise ValueError("padding_side must be left or right")
        if settings.stats_kernel not in STATS_KERNELS:
            raise ValueError(f"stats_kernel must be one of {', '.join(STATS_KERNELS)}")
        self.settings = settings
        self.scoring = scoring
        self.sampling = sampling if sampling is not None else scoring
        self.single_model = sampling is None or sampling is scoring
        if not self.single_model:
            check_same_tokenizer(scoring.tokenizer, self.sampling.tokenizer, scoring.identity.name, self.sampling.identity.name)
        self.tokenizer = scoring.tokenizer
        self._scoring = CausalScorer(scoring.model)
        self._sampling = self._scoring if self.single_model else CausalScorer(self.sampling.model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.classifier = classifier
        self.machine_index = -1
        self.machine_label = ""
        self.classifier_max_tokens = 0
        if classifier is not None:
            self.machine_index, self.machine_label = machine_label_index(
                getattr(classifier.model.config, "id2label", {}), settings.classifier_machine_label
            )
            self.classifier_max_tokens = int(classifier.max_length or 512)
        self.likelihood = likelihood
        self._likelihood = CausalScorer(likelihood.model) if likelihood is not None else None
        self._likelihood_kernel = StatisticsKernel()  # eager: a second vocabulary, scored once per text
        if likelihood is not None:
            lpad = likelihood.tokenizer.pad_token_id
            self.likelihood_pad_id = int(lpad) if lpad is not None else 0
        self.members = self._describe()
        self.fingerprint = self._fingerprint()
        self.kernel = StatisticsKernel()
        self._compile_thread: threading.Thread | None = None

    @classmethod
    def load(cls, settings: DetectorConfig) -> Detector:
        """Load the configured models (offline) and build the detector."""
        from crucible.models import load_causal_lm, load_sequence_classifier

        kw: dict[str, Any] = {"device": settings.device, "dtype": settings.dtype, "cache_dir": settings.model_cache_path()}
        scoring = load_causal_lm(settings.model, **kw)
        sampling = None
        if settings.sampling_model and settings.sampling_model != settings.model:
            sampling = load_causal_lm(settings.sampling_model, **kw)
        classifier = load_sequence_classifier(settings.classifier_model, **kw) if settings.classifier_model else None
        if settings.likelihood_model == LIKELIHOOD_AUTO:
            settings = dataclasses.replace(settings, likelihood_model=auto_likelihood_model(settings, scoring, sampling))
        likelihood = load_causal_lm(settings.likelihood_model, **kw) if settings.likelihood_model else None
        return cls(settings, scoring, sampling, classifier, likelihood)

    # ---- description ------------------------------------------------------------------------------------------------

    def _describe(self) -> tuple[MemberDescription, ...]:
        s = self.settings
        fast_notes = ("one model samples and scores: one forward pass",) if self.single_model else ()
        out = [MemberDescription(FAST_DETECTGPT, self.single_model, s.max_tokens, notes=fast_notes)]
        if s.binoculars:
            notes = [
                "observer = the Fast-DetectGPT sampling model, performer = the scoring model; "
                "scores come from the same forward pass"
            ]
            if self.single_model:
                notes.insert(0, "binoculars used one model for observer and performer")
            out.append(MemberDescription(BINOCULARS, self.single_model, s.max_tokens, notes=tuple(notes)))
        if self.classifier is not None:
            out.append(MemberDescription(CLASSIFIER, False, self.classifier_max_tokens, self.machine_label))
        if self.likelihood is not None:
            note = f"mean log-likelihood per scored token under {self.likelihood.identity.name}, its own tokenizer"
            out.append(MemberDescription(LIKELIHOOD, False, s.max_tokens, notes=(note,)))
        return tuple(out)

    @property
    def enabled_members(self) -> tuple[str, ...]:
        """Names of the enabled members, in response order."""
        return tuple(m.member for m in self.members)

    @property
    def identities(self) -> dict[str, Any]:
        """ModelIdentity of each role; Binoculars roles are the Fast-DetectGPT pair's when enabled."""
        out: dict[str, Any] = {"sampling": self.sampling.identity, "scoring": self.scoring.identity}
        if self.settings.binoculars:
            out["observer"] = self.sampling.identity
            out["performer"] = self.scoring.identity
        if self.classifier is not None:
            out["classifier"] = self.classifier.identity
        if self.likelihood is not None:
            out["likelihood"] = self.likelihood.identity
        return out

    def _fingerprint(self) -> str:
        """Cache namespace: every model identity and setting that changes a result (not the text)."""
        parts = {role: dataclasses.asdict(identity) for role, identity in self.identities.items()}
        parts.pop("device", None)
        for identity in parts.values():
            identity.pop("device", None)  # same weights and dtype give the same scores on another device
        parts["settings"] = {
            "max_tokens": self.settings.max_tokens,
            "machine_label": self.machine_label,
            "classifier_max_tokens": self.classifier_max_tokens,
            "statistics_version": STATISTICS_VERSION,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    # ---- input ------------------------------------------------------------------------------------------------------

    def check_members(self, members: Sequence[str], field: str = "members") -> bool:
        """Validate requested member names; returns whether the classifier must run. Empty = every enabled member."""
        enabled = self.enabled_members
        for i, name in enumerate(members):
            if name not in enabled:
                raise InvalidArgument.field(
                    f"{field}[{i}]",
                    f"member {name!r} is not enabled (enabled: {', '.join(enabled)})",
                    reason="MEMBER_NOT_ENABLED",
                )
        return self.classifier is not None and (not members or CLASSIFIER in members)

    def prepare(
        self, texts: Sequence[str], *, classifier: bool, field: str = "texts", first_index: int = 0
    ) -> list[PreparedText]:
        """Check and tokenise the texts of one call; errors name `field[first_index + i]`."""
        s = self.settings
        if not texts:
            raise InvalidArgument.field(field, "must contain at least one text", reason="NO_TEXTS")
        if len(texts) > s.max_texts_per_call:
            raise InvalidArgument.field(
                field,
                f"{len(texts)} texts exceed the limit of {s.max_texts_per_call} per call; split the call (or use DetectStream)",
                reason="TOO_MANY_TEXTS",
            )
        for i, text in enumerate(texts):
            where = f"{field}[{first_index + i}]"
            if not isinstance(text, str):
                raise InvalidArgument.field(where, "must be a string", reason="NOT_A_STRING")
            if s.max_text_bytes and len(text) * 4 > s.max_text_bytes and len(text.encode("utf-8")) > s.max_text_bytes:
                raise InvalidArgument.field(
                    where,
                    f"text of {len(text.encode('utf-8'))} UTF-8 bytes exceeds the limit of {s.max_text_bytes}",
                    reason="TEXT_TOO_LARGE",
                )
            if is_blank(text):
                raise InvalidArgument.field(
                    where,
                    "must contain a visible character (not only whitespace, zero-width, bidi or other invisible characters)",
                    reason="EMPTY_TEXT",
                )
            bad = _CONTROL.search(text)
            if bad is not None:
                raise InvalidArgument.field(
                    where,
                    f"contains control character U+{ord(bad.group()):04X} at offset {bad.start()} "
                    "(only tab, newline and carriage return are allowed)",
                    reason="CONTROL_CHARACTER",
                )
        encoded = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        out = []
        for i, (text, ids) in enumerate(zip(texts, encoded, strict=True)):
            if len(ids) < 2:
                raise InvalidArgument.field(
                    f"{field}[{first_index + i}]",
                    f"has {len(ids)} token(s); the criterion needs at least 2 (the first token is never scored)",
                    reason="TOO_FEW_TOKENS",
                )
            truncated = len(ids) > s.max_tokens
            out.append(PreparedText(text, tuple(ids[: s.max_tokens]), truncated, classifier))
        return out

    # ---- compute ----------------------------------------------------------------------------------------------------

    def score(self, items: Sequence[PreparedText]) -> list[RawScores]:
        """Score one batch (any mix of lengths) with every member the items ask for; results in input order."""
        if not items:
            return []
        ids, mask = pad_batch([list(p.ids) for p in items], self.pad_id, side=self.settings.padding_side)
        stats = model_statistics(
            self._scoring,
            ids,
            mask,
            None if self.single_model else self._sampling,
            chunk_elements=self.settings.stats_chunk_elements,
            kernel=self.kernel,
        )
        col = stats.columns()
        likelihood = self.likelihoods([p.text for p in items]) if self.likelihood is not None else None
        classifier: dict[int, tuple[float, int, bool]] = {}
        wanted = [i for i, p in enumerate(items) if p.classifier]
        if wanted and self.classifier is not None:
            for i, result in zip(wanted, self.classify([items[i].text for i in wanted]), strict=True):
                classifier[i] = result
        out = []
        for i, p in enumerate(items):
            c = classifier.get(i)
            out.append(
                RawScores(
                    col["criterion"][i],
                    col["perplexity"][i],
                    col["binoculars"][i],
                    len(p.ids),
                    p.truncated,
                    col["log_likelihood"][i],
                    col["log_rank"][i],
                    col["entropy"][i],
                    c[0] if c else None,
                    c[1] if c else 0,
                    c[2] if c else False,
                    *(likelihood[i] if likelihood else (None, 0, False)),
                )
            )
        return out

    def likelihoods(self, texts: Sequence[str]) -> list[tuple[float, int, bool]]:
        """Likelihood member: mean log-likelihood per scored token under the second model, its token count and
        truncation flag per text (its own tokenizer, truncated to max_tokens), in the scoring pass's definition."""
        if self.likelihood is None or self._likelihood is None:
            raise RuntimeError("no likelihood model is loaded")
        limit = self.settings.max_tokens
        encoded = self.likelihood.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        # a text of under 2 tokens has nothing to score: a neutral, finite value (such a detection is unreliable)
        results: list[tuple[float, int, bool]] = [(0.0, len(ids), False) for ids in encoded]
        rows = [i for i, ids in enumerate(encoded) if len(ids) >= 2]
        if rows:
            batch, mask = pad_batch([list(encoded[i][:limit]) for i in rows], self.likelihood_pad_id, side="right")
            stats = model_statistics(
                self._likelihood,
                batch,
                mask,
                None,
                chunk_elements=self.settings.stats_chunk_elements,
                kernel=self._likelihood_kernel,
            )
            for i, value in zip(rows, stats.columns()["log_likelihood"], strict=True):
                results[i] = (float(value), min(len(encoded[i]), limit), len(encoded[i]) > limit)
        return results

    def classify(self, texts: Sequence[str]) -> list[tuple[float, int, bool]]:
        """Classifier P(machine label), token count and truncation flag per text, in sub-batches sorted by length."""
        if self.classifier is None:
            raise RuntimeError("no classifier is loaded")
        tokenizer, model = self.classifier.tokenizer, self.classifier.model
        limit = self.classifier_max_tokens
        full = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(full[i]))
        results: list[tuple[float, int, bool]] = [(0.0, 0, False)] * len(texts)
        device = next(model.parameters()).device
        step = max(1, self.settings.classifier_batch_size)
        with torch.inference_mode():
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                enc = tokenizer(
                    [texts[i] for i in chunk], truncation=True, max_length=limit, padding=True, return_tensors="pt"
                ).to(device)
                probs = torch.softmax(model(**enc).logits.float(), dim=-1)[:, self.machine_index].tolist()
                counts = enc["attention_mask"].sum(dim=1).tolist()
                for i, p, n in zip(chunk, probs, counts, strict=True):
                    results[i] = (float(p), int(n), len(full[i]) > limit)
        return results

    def warm_up(self) -> None:
        """One tiny batch through every model, so the first call does not pay for lazy initialisation.

        The statistics kernel is compiled here, before the service reports SERVING, so the first call runs at warm
        speed (compiled code is cached on disk: a few seconds after the first start): always with stats_kernel
        "compile", with "auto" when a compiler is found (else eager mode).
        """
        items = self.prepare(["Warm-up text for the detector."], classifier=self.classifier is not None)
        self.score(items)
        kernel = self.settings.stats_kernel
        if kernel == "compile" or (kernel == "auto" and compiler_available(self._scoring.device)):
            self.compile_kernel()

    def compile_kernel(self) -> bool:
        """Compile the statistics kernel for the loaded models' vocabulary and dtype (eager mode stays on failure)."""
        dtype = next(self.scoring.model.parameters()).dtype
        two = not self.single_model
        return self.kernel.compile(
            self._scoring.vocab_size,
            dtype,
            self._scoring.device,
            two_models=two,
            ref_vocab=self._sampling.vocab_size if two else None,
            cache_dir=kernel_cache_dir(self.settings.model_cache_path()),
        )

    def wait_for_kernel(self, timeout: float | None = None) -> str:
        """Wait for a background compilation (stats_kernel auto) to finish; returns the kernel mode in use."""
        if self._compile_thread is not None:
            self._compile_thread.join(timeout)
        return self.kernel.mode


def score_many(
    detector: Detector, texts: Sequence[str], *, batch_size: int = 32, classifier: bool | None = None, progress: Any = None
) -> list[RawScores]:
    """Score any number of texts in-process: duplicates once, batches of similar length, results in input order.

    Input errors name `texts[i]` with i the position in `texts`. `progress(done, total)` is called after each batch.
    """
    with_classifier = detector.classifier is not None if classifier is None else classifier
    unique: dict[str, int] = {}
    for text in texts:
        unique.setdefault(text, len(unique))
    distinct = list(unique)
    prepared: list[PreparedText] = []
    step = detector.settings.max_texts_per_call
    first_of = {text: i for i, text in reversed(list(enumerate(texts)))}
    for start in range(0, len(distinct), step):
        chunk = distinct[start : start + step]
        try:
            prepared += detector.prepare(chunk, classifier=with_classifier)
        except InvalidArgument as err:  # re-point the error at the caller's index
            field = err.field_violations[0][0] if err.field_violations else ""
            if "[" in field:
                local = int(field[field.index("[") + 1 : -1])
                where = f"texts[{first_of[chunk[local]]}]"
                raise InvalidArgument.field(where, err.field_violations[0][1], reason=err.reason) from None
            raise
    order = sorted(range(len(prepared)), key=lambda i: len(prepared[i].ids))
    results: dict[int, RawScores] = {}  # by index into `prepared`; every index is scored once
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        for i, scores in zip(chosen, detector.score([prepared[i] for i in chosen]), strict=True):
            results[i] = scores
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return [results[unique[text]] for text in texts]
