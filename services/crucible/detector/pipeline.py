"""The detector's request path without gRPC: checks, caches, in-flight de-duplication, dynamic batching, calibration.

The servicer translates protobuf to calls of `DetectionPipeline.detect` and its results back; the CLI can use it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import TypeGuard

from prometheus_client import CollectorRegistry, Counter

from crucible.detector.cache import LruCache, SqliteCache, cache_key
from crucible.detector.calibration import (
    METHOD_LOGISTIC_ENSEMBLE,
    METHOD_NONE,
    METHOD_TWO_GAUSSIAN,
    Calibration,
)
from crucible.detector.core import (
    BY_PRODUCTS,
    CLASSIFIER,
    FAST_DETECTGPT,
    LIKELIHOOD,
    Detector,
    MemberDescription,
    PreparedText,
    RawScores,
)
from crucible.detector.reliability import RELIABLE, Reliability, assess
from crucible.runtime.batching import BatcherMetrics, BatchSettings, DynamicBatcher

log = logging.getLogger(__name__)

# Rows and tokens per row of the probe batch that measures throughput at start (the admission prior): as long as the
# texts a full call scores (max_tokens, up to 512), so the rate holds for them; one row (run twice: an allocating pass,
# then the measured one) was ~8 CPU-seconds of a start on 2 cores, two rows twice that (issue 27).
_PROBE_ROWS = 1
_PROBE_TOKENS = 512


@dataclasses.dataclass(frozen=True)
class MemberResult:
    """One member's score for one text."""

    member: str
    raw_score: float
    probability: float | None
    token_count: int
    truncated: bool


@dataclasses.dataclass(frozen=True)
class DetectionResult:
    """The verdict for one text, ready to translate into a Detection message.

    When `reliability.reliable` is false the probabilities (this one and every member's) are None: withheld, not
    invented; the raw scores stay. `log_likelihood`, `log_rank` and `entropy` are per-scored-token means.
    """

    index: int
    criterion: float
    probability: float | None
    perplexity: float
    token_count: int
    truncated: bool
    members: tuple[MemberResult, ...]
    cached: bool
    reliability: Reliability = RELIABLE
    log_likelihood: float = 0.0
    log_rank: float = 0.0
    entropy: float = 0.0

    @property
    def tokens_scored(self) -> int:
        """Tokens whose log-probability entered the scores (the first token has no context)."""
        return max(0, self.token_count - 1)


@dataclasses.dataclass(frozen=True)
class CallResult:
    """The results of one call with the members computed and the calibration method that applied."""

    detections: list[DetectionResult]
    members: tuple[MemberDescription, ...]
    method: str


class DetectionPipeline:
    """Concurrent calls in, batched model work in one thread, calibrated results out."""

    def __init__(
        self,
        detector: Detector,
        calibration: Calibration,
        batch: BatchSettings,
        *,
        cache_size: int = 0,
        cache_path: str = "",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.detector = detector
        self.calibration = calibration
        self.memory = LruCache(cache_size)
        self.disk = SqliteCache(cache_path) if cache_path else None
        self.batcher_metrics = BatcherMetrics(registry)
        self.cache_lookups = Counter(
            "crucible_detector_cache_lookups_total",
            "Detector cache lookups by tier (memory, sqlite) and outcome (hit, miss).",
            ["tier", "outcome"],
            registry=registry,
        )
        self.batcher: DynamicBatcher[PreparedText, RawScores] = DynamicBatcher(
            "detector",
            detector.score,
            batch,
            cost=lambda item: len(item.ids),
            group=lambda item: item.classifier,
            dedup_key=lambda item: (item.text, item.classifier),
            metrics=self.batcher_metrics,
        )

    def start(self) -> None:
        """Start the batching loop (call from the serving event loop)."""
        self.batcher.start()

    async def measure_throughput(self) -> float | None:
        """Run one probe batch of long texts through the batcher, so admission by expected wait has a measured rate
        before the first real batch (the service awaits it before reporting SERVING); returns tokens per second."""
        tokens = min(_PROBE_TOKENS, self.detector.settings.max_tokens)
        texts = [" ".join(f"probe{row} word{i}" for i in range(tokens)) for row in range(_PROBE_ROWS)]
        try:
            prepared = await asyncio.to_thread(self.detector.prepare, texts, classifier=self.detector.classifier is not None)
            await self.batcher.submit_many(prepared)  # the first pass at this length allocates; it is not the rate
            self.batcher.throughput.forget()
            await self.batcher.submit_many(prepared)
        except Exception:
            log.warning(
                "detector throughput probe failed; admission by expected wait starts after the first batch", exc_info=True
            )
            return None
        log.info(
            "detector throughput %.0f tokens/s (probe of %d x %d tokens)",
            self.batcher.throughput.rate or 0.0,
            _PROBE_ROWS,
            tokens,
        )
        return self.batcher.throughput.rate

    async def stop(self) -> None:
        """Stop batching (waiting items fail UNAVAILABLE) and close the disk cache."""
        await self.batcher.stop()
        if self.disk is not None:
            self.disk.close()

    def members_for(self, requested: Sequence[str]) -> tuple[MemberDescription, ...]:
        """The members a call computes: the requested ones (all enabled when empty) plus Fast-DetectGPT, in order."""
        wanted = set(requested) | {FAST_DETECTGPT} if requested else None
        return tuple(m for m in self.detector.members if wanted is None or m.member in wanted)

    async def detect(
        self,
        texts: Sequence[str],
        *,
        members: Sequence[str] = (),
        skip_cache: bool = False,
        timeout: float | None = None,
        field: str = "texts",
        first_index: int = 0,
        members_field: str = "members",
    ) -> CallResult:
        """Check, look up, batch and calibrate one call's texts; errors name `field[first_index + i]`."""
        with_classifier = self.detector.check_members(members, members_field)
        # Refuse before tokenising when even the shortest texts could not be scored in time (2 tokens is the least a
        # text may have); under a burst, the tokeniser work of calls that are refused anyway would slow the model.
        self.batcher.check_wait(2 * len(texts), timeout, items=len(texts))
        # Checks (byte limits first) and tokenising run in a thread: the event loop keeps serving health and other calls.
        prepared = await asyncio.to_thread(
            self.detector.prepare, texts, classifier=with_classifier, field=field, first_index=first_index
        )
        computed = self.members_for(members)
        results: list[RawScores | None] = [None] * len(prepared)
        cached = [False] * len(prepared)
        keys = [cache_key(self.detector.fingerprint, p.text) for p in prepared]
        if not skip_cache:
            self._lookup(prepared, keys, results, cached)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fresh = await self.batcher.submit_many([prepared[i] for i in missing], timeout=timeout)
            for i, scores in zip(missing, fresh, strict=True):
                results[i] = scores
            if not skip_cache:
                await self._store([(keys[i], scores) for i, scores in zip(missing, fresh, strict=True)])
        names = [m.member for m in computed]
        detections = [
            self._result(first_index + i, r, names, c, p.text)
            for i, (r, c, p) in enumerate(zip(results, cached, prepared, strict=True))
        ]
        return CallResult(detections, computed, self.method_for(names))

    def method_for(self, members: Sequence[str]) -> str:
        """The calibration method that applies when these members were computed."""
        cal = self.calibration
        if not cal.calibrated:
            return METHOD_NONE
        if cal.ensemble is not None and set(cal.ensemble.members) <= set(members) | set(BY_PRODUCTS):
            return METHOD_LOGISTIC_ENSEMBLE
        return METHOD_TWO_GAUSSIAN if FAST_DETECTGPT in cal.members else METHOD_NONE

    def _lookup(self, prepared: list[PreparedText], keys: list[str], results: list[RawScores | None], cached: list[bool]) -> None:
        def usable(scores: RawScores | None, item: PreparedText) -> TypeGuard[RawScores]:
            return scores is not None and (not item.classifier or scores.classifier is not None)

        for i, (item, key) in enumerate(zip(prepared, keys, strict=True)):
            hit = self.memory.get(key)
            if usable(hit, item):
                results[i], cached[i] = hit, True
        self.cache_lookups.labels("memory", "hit").inc(sum(cached))
        self.cache_lookups.labels("memory", "miss").inc(len(cached) - sum(cached))
        if self.disk is None:
            return
        missing = [i for i, c in enumerate(cached) if not c]
        if not missing:
            return
        found = self.disk.get_many([keys[i] for i in missing])
        hits = 0
        for i in missing:
            hit = found.get(keys[i])
            if usable(hit, prepared[i]):
                results[i], cached[i] = hit, True
                self.memory.put(keys[i], hit)
                hits += 1
        self.cache_lookups.labels("sqlite", "hit").inc(hits)
        self.cache_lookups.labels("sqlite", "miss").inc(len(missing) - hits)

    async def _store(self, items: list[tuple[str, RawScores]]) -> None:
        for key, scores in items:
            old = self.memory.get(key)
            if old is not None and old.classifier is not None and scores.classifier is None:
                scores = dataclasses.replace(
                    scores,
                    classifier=old.classifier,
                    classifier_tokens=old.classifier_tokens,
                    classifier_truncated=old.classifier_truncated,
                )
            self.memory.put(key, scores)
        if self.disk is not None:
            await asyncio.to_thread(self.disk.put_many, [(k, self.memory.get(k) or s) for k, s in items])

    def reliability(self, text: str, token_count: int) -> Reliability:
        """Whether a text scored with `token_count` tokens gets its probabilities (the service's thresholds)."""
        s = self.detector.settings
        return assess(
            text, max(0, token_count - 1), min_tokens=s.min_reliable_tokens, max_invisible_fraction=s.max_invisible_fraction
        )

    def _result(self, index: int, scores: RawScores | None, members: list[str], cached: bool, text: str) -> DetectionResult:
        assert scores is not None  # every slot is filled by a cache hit or a computation above
        reliability = self.reliability(text, scores.token_count)
        raw = scores.member_raw()
        raw = {m: raw[m] for m in members if m in raw}
        out = []
        for m in members:
            if m == CLASSIFIER:
                tokens, truncated = scores.classifier_tokens, scores.classifier_truncated
            elif m == LIKELIHOOD:
                tokens, truncated = scores.likelihood_tokens, scores.likelihood_truncated
            else:
                tokens, truncated = scores.token_count, scores.truncated
            member_probability = self.calibration.member_probability(m, raw[m]) if reliability.reliable else None
            out.append(MemberResult(m, raw[m], member_probability, tokens, truncated))
        method = self.method_for(members)
        ensemble = self.calibration.ensemble
        probability: float | None
        if method == METHOD_LOGISTIC_ENSEMBLE:
            assert ensemble is not None  # method_for picks the ensemble only when the calibration has one
            probability = ensemble.probability({**scores.features(), **raw})
        elif method == METHOD_TWO_GAUSSIAN:
            probability = self.calibration.member_probability(FAST_DETECTGPT, scores.criterion)
        else:
            probability = None
        return DetectionResult(
            index,
            scores.criterion,
            probability if reliability.reliable else None,
            scores.perplexity,
            scores.token_count,
            scores.truncated,
            tuple(out),
            cached,
            reliability,
            scores.log_likelihood,
            scores.log_rank,
            scores.entropy,
        )


def load_calibration(detector: Detector, calibration_file: str = "") -> Calibration:
    """The calibration for the detector's models: the file's entries first (when given), then the built-in ones."""
    from crucible.detector.calibration import calibration_files, select_calibration

    ids = detector.identities
    return select_calibration(
        calibration_files(calibration_file),
        (ids["sampling"].name, ids["sampling"].revision),
        (ids["scoring"].name, ids["scoring"].revision),
        detector.enabled_members,
        ids["classifier"].name if "classifier" in ids else "",
        likelihood=(ids["likelihood"].name, ids["likelihood"].revision) if "likelihood" in ids else None,
    )
