"""The attack loop: SECA-style search for meaning-preserving rephrasings of MMLU questions that flip a target's answer.

Keeps questions the target answers right, aims at the second most likely (wrong) option, iterates proposer rewrites
from the best feasible parents, and writes every candidate to a JSONL trace that lets a campaign resume.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from crucible.clients import mcq_data
from crucible.clients.mesh import Mesh
from crucible.clients.retry import AttackCallError, Retrier, RetryPolicy
from crucible.clients.scorer import ChoiceQuery, Question

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MCQ:
    """One multiple-choice question with a stable id (subject + row) for traces and resumption."""

    qid: str
    subject: str
    question: str
    options: tuple[str, ...]
    answer: int

    def with_question(self, text: str) -> Question:
        return Question(self.subject, text, self.options)


def load_mmlu(
    data_dir: Path, subjects: Sequence[str] = (), *, seca_subset: bool = False, limit_per_subject: int | None = None
) -> list[MCQ]:
    """Questions from a question file or a folder of them (mcq_data: the original headerless MMLU CSVs with an answer
    letter, headered `question,choice0..3,answer` CSVs, JSONL with question/choices/answer); optionally only the
    rows of the folder's SECA index. Raises mcq_data.DataError naming the file, row and column of a bad row."""
    available = mcq_data.question_files(data_dir)
    wanted = list(subjects) or sorted(available)
    missing = [s for s in wanted if s not in available]
    if missing:
        raise mcq_data.DataError(f"subject(s) {missing} not in {data_dir} (have: {', '.join(sorted(available))})")
    subset = mcq_data.load_seca_index(data_dir if data_dir.is_dir() else data_dir.parent) if seca_subset else {}
    out: list[MCQ] = []
    for subject in wanted:
        rows = mcq_data.read_questions(available[subject])
        indexes = subset.get(subject, []) if seca_subset else range(len(rows))
        picked = [i for i in indexes if 0 <= i < len(rows)][: limit_per_subject or None]
        out.extend(MCQ(f"{subject}/{i}", subject, *rows[i]) for i in picked)
    return out


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """SECA search settings (defaults: the paper's 3 parents x 3 candidates, 30 iterations).

    `equivalence_method` "question" (default) is the proposer's stricter check for question rewordings: form checks
    (a statement or an answer never passes), then NLI entailment when the proposer has an NLI model, else cosine.
    `temperature` is 0.7 rather than the paper's 1.0: a 135M rewriter at 1.0 drifts off the question in most samples.
    """

    iterations: int = 30
    parents: int = 3
    candidates_per_parent: int = 3
    temperature: float = 0.7
    #: Each parent's Propose call samples candidates_per_parent x oversample rewrites (they share one prefill); the
    #: proposer drops those that fail its question checks and content alignment, and the first candidates_per_parent
    #: survivors are scored. More of the scored candidates then keep the question (proposer README, "More valid ...").
    oversample: int = 1
    equivalence_method: str = "question"  # or "embedding" / "nli" (no form checks)
    equivalence_threshold: float | None = None  # None = the proposer's default
    seed: int = 0
    max_new_tokens: int = 0  # 0 = proposer default (for questions: sized to the question)
    #: Checks every flip's final question must also pass to count as a success: "strictest" = the QUESTION check plus
    #: the LLM judge when the proposer has one (GetInfo); or a comma-separated list of methods; "" = none.
    verify: str = "strictest"
    #: The content-alignment bar of the QUESTION check when it verifies a flip (the search keeps the proposer's, 0.5).
    #: The search selects the candidates that flip, and so the ones the check wrongly passed: on the labelled
    #: benchmark's search-selected batch the 0.5 bar passed 27 faithful of 34, this one 22 of 23 (proposer README).
    verify_content_threshold: float | None = 0.7
    retry: RetryPolicy = dataclasses.field(default_factory=lambda: RetryPolicy())

    def __post_init__(self) -> None:
        bar = self.verify_content_threshold
        if bar is not None and not (math.isfinite(bar) and 0.0 <= bar <= 1.0):
            raise ValueError(f"verify_content_threshold must be within [0, 1], got {bar}")


@dataclasses.dataclass
class AttackOutcome:
    """How one question's attack ended, with what the proposer and the meaning check did along the way.

    `candidates_generated` counts every candidate the proposer sampled, `candidates_valid` those its cleaning kept
    (questions that neither answer, list nor name options, nor change length or form), `dropped` the rest by reason.
    `final_score`/`final_equivalent` are the meaning check's verdict on `best_question` (None when it is the original).
    """

    qid: str
    #: "flipped" (verified) | "flipped_unverified" (answer flipped, final question failed a verification check) |
    #: "not_flipped" | "skipped_wrong" (target already wrong) | "error"
    status: str
    iterations: int
    original_top: int
    target_option: int
    best_question: str
    best_objective: float
    original_objective: float
    equivalence_checked: int
    equivalence_passed: int
    error: str = ""
    candidates_generated: int = 0
    candidates_valid: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    retries: int = 0
    final_score: float | None = None
    final_equivalent: bool | None = None
    #: The search's check on the final question: method and its scores (content alignment included for "question").
    final_check: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Flips only: method -> {equivalent, score, ...} of every verification check run on the final question; a flip
    #: that fails one is "flipped_unverified" (reported apart, not a success).
    verification: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class IterationReport:
    """What one iteration of one question ended with (for live display): the best candidate so far and its verdict."""

    qid: str
    iteration: int
    best_question: str
    best_objective: float
    top_option: int
    answer: int
    equivalence_score: float | None
    equivalent: bool | None
    candidates: int
    valid: int


class Trace:
    """Append-only JSONL trace; one line per event, flushed as written; knows which questions are finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = asyncio.Lock()

    def finished(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return done
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption; the question is redone
                if event.get("event") == "done":
                    done[event["qid"]] = event
        return done

    async def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False) + "\n"
        async with self._lock:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)


def _seed(base: int, qid: str, iteration: int, parent: int) -> int:
    digest = hashlib.sha256(f"{base}:{qid}:{iteration}:{parent}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


async def _get_info(client: Any, deadline: float) -> Any:
    """GetInfo of one service client under `deadline` (the retrier's per-attempt deadline)."""
    return await client.info(timeout=deadline)


class SecaAttack:
    """Runs the search for one question at a time; `campaign` runs many concurrently with resumption.

    Every service call goes through a Retrier: busy answers (DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNAVAILABLE) are
    retried with jittered backoff and a deadline sized to the work, so a loaded mesh slows a campaign down but does
    not fail its questions. `on_iteration` (optional) receives an IterationReport after every iteration.
    """

    #: First-attempt deadlines (seconds) per call kind; later ones follow the slowest call seen (RetryPolicy).
    DEADLINE_FLOORS: ClassVar[dict[str, float]] = {"propose": 180.0, "score": 90.0, "equivalence": 90.0, "info": 30.0}

    def __init__(
        self,
        mesh: Mesh,
        config: AttackConfig | None = None,
        trace: Trace | None = None,
        on_iteration: Callable[[IterationReport], None] | None = None,
    ) -> None:
        self.mesh = mesh
        self.config = config or AttackConfig()
        self.trace = trace
        self.on_iteration = on_iteration
        self.retrier = Retrier(self.config.retry, self.DEADLINE_FLOORS, seed=self.config.seed)
        self._verify: list[str] | None = None

    async def _emit(self, event: dict[str, Any]) -> None:
        if self.trace is not None:
            await self.trace.write({"ts": time.time(), **event})

    async def _call(self, kind: str, what: str, fn: Callable[[float], Any], stats: dict[str, int]) -> Any:
        result, retries = await self.retrier.call(kind, what, fn)
        stats["retries"] += retries
        return result

    async def _score(self, q: MCQ, texts: Sequence[str], stats: dict[str, int]) -> list[Any]:
        # No explicit choices: the scorer scores the answer letters as the target model writes them after
        # "option: " (" A".." D" for most tokenizers), as the paper does.
        queries = [ChoiceQuery(question=q.with_question(t)) for t in texts]
        scores: list[Any] = await self._call(
            "score", f"{q.qid}: ScoreChoices", lambda deadline: self.mesh.scorer.score_choices(queries, timeout=deadline), stats
        )
        return scores

    async def _propose(self, q: MCQ, text: str, seed: int, stats: dict[str, int]) -> Any:
        cfg = self.config
        return await self._call(
            "propose",
            f"{q.qid}: Propose",
            lambda deadline: self.mesh.proposer.propose(
                text,
                mode="equivalent_question",
                options=q.options,
                correct_option_index=q.answer,
                n=cfg.candidates_per_parent * max(1, cfg.oversample),
                temperature=cfg.temperature,
                seed=seed,
                max_new_tokens=cfg.max_new_tokens,
                timeout=deadline,
            ),
            stats,
        )

    async def _check(
        self,
        q: MCQ,
        candidates: Sequence[str],
        stats: dict[str, int],
        method: str | None = None,
        content_threshold: float | None = None,
    ) -> list[Any]:
        cfg = self.config
        verdicts: list[Any] = await self._call(
            "equivalence",
            f"{q.qid}: CheckEquivalence",
            lambda deadline: self.mesh.proposer.check_equivalence(
                [(q.question, c) for c in candidates],
                method=method or cfg.equivalence_method,
                threshold=None if method else cfg.equivalence_threshold,
                options=q.options,
                content_threshold=content_threshold,
                timeout=deadline,
            ),
            stats,
        )
        return verdicts

    async def verification_methods(self) -> list[str]:
        """The checks a flip must also pass (AttackConfig.verify): for "strictest", the QUESTION check and, when the
        proposer's GetInfo lists it, the LLM judge. Asked once per attack object."""
        if self._verify is not None:
            return self._verify
        wanted = self.config.verify.strip()
        if wanted != "strictest":
            self._verify = [m.strip() for m in wanted.split(",") if m.strip()]
            return self._verify
        methods = ["question"]
        try:
            info = await self._call("info", "proposer GetInfo", functools.partial(_get_info, self.mesh.proposer), {"retries": 0})
            listed = {getattr(e, "method", None) for e in getattr(info, "equivalence", ())}
            from crucible.clients.proposer import METHODS

            if METHODS["judge"] in listed:
                methods.append("judge")
        except AttackCallError as err:
            log.warning("proposer GetInfo failed (%s); flips are verified with the QUESTION check only", err)
        self._verify = methods
        return methods

    async def _verify_flip(self, q: MCQ, text: str, stats: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Every verification check's verdict on a flipped question (method -> its scores)."""
        results: dict[str, dict[str, Any]] = {}
        for method in await self.verification_methods():
            bar = self.config.verify_content_threshold if method == "question" else None
            (verdict,) = await self._check(q, [text], stats, method=method, content_threshold=bar)
            results[method] = _verdict_record(verdict)
            if bar is not None:
                results[method]["content_threshold"] = bar
        return results

    async def attack(self, q: MCQ) -> AttackOutcome:
        """Attack one question; returns its outcome (also written to the trace)."""
        cfg = self.config
        stats = {"retries": 0}
        (original,) = await self._score(q, [q.question], stats)
        ranking = original.ranking
        await self._emit(
            {
                "event": "original",
                "qid": q.qid,
                "probabilities": original.probabilities,
                "top": original.top_index,
                "answer": q.answer,
            }
        )
        if original.top_index != q.answer:
            outcome = AttackOutcome(
                q.qid, "skipped_wrong", 0, original.top_index, -1, q.question, 0.0, 0.0, 0, 0, retries=stats["retries"]
            )
            await self._emit({"event": "done", **dataclasses.asdict(outcome)})
            return outcome
        target = ranking[1]
        objective0 = original.logprobs[target]
        parents: list[tuple[float, str]] = [(objective0, q.question)]
        best = parents[0]
        best_verdict: Any = None
        verdict_by_text: dict[str, Any] = {}
        checked = passed = generated = valid = 0
        dropped: dict[str, int] = {}
        status = "not_flipped"
        iteration = 0
        for iteration in range(1, cfg.iterations + 1):
            proposals = await asyncio.gather(
                *(self._propose(q, text, _seed(cfg.seed, q.qid, iteration, k), stats) for k, (_, text) in enumerate(parents))
            )
            for p in proposals:
                generated += len(p.candidates) + sum(p.dropped.values())
                valid += len(p.candidates)
                for reason, count in p.dropped.items():
                    dropped[reason] = dropped.get(reason, 0) + count
            candidates = list(
                dict.fromkeys(
                    c
                    for p in proposals
                    for c in [c for c in p.candidates if c.strip() and c != q.question][: cfg.candidates_per_parent]
                )
            )
            top_now = None
            if candidates:
                scores = await self._score(q, candidates, stats)
                improving = [
                    (s.logprobs[target], c, s) for c, s in zip(candidates, scores, strict=True) if s.logprobs[target] > best[0]
                ]
                verdicts = await self._check(q, [c for _, c, _ in improving], stats) if improving else []
                checked += len(verdicts)
                passed += sum(v.equivalent for v in verdicts)
                verdict_of = {c: v for (_, c, _), v in zip(improving, verdicts, strict=True)}
                verdict_by_text.update(verdict_of)
                for c, s in zip(candidates, scores, strict=True):
                    v = verdict_of.get(c)
                    await self._emit(
                        {
                            "event": "candidate",
                            "qid": q.qid,
                            "iteration": iteration,
                            "candidate": c,
                            "objective": s.logprobs[target],
                            "top": s.top_index,
                            "probabilities": s.probabilities,
                            "equivalence_score": v.score if v else None,
                            "equivalent": v.equivalent if v else None,
                            "form_violation": v.form_violation if v else None,
                            "check": _verdict_record(v) if v else None,
                        }
                    )
                feasible = [(obj, c, s) for obj, c, s in improving if verdict_of[c].equivalent]
                if feasible:
                    pool = sorted([*parents, *((obj, c) for obj, c, _ in feasible)], key=lambda t: -t[0])
                    parents = list(dict.fromkeys(pool))[: cfg.parents]
                    best = parents[0]
                    top_now = next((s.top_index for obj, c, s in feasible if c == best[1]), None)
                    flips = [t for t in feasible if t[2].top_index != q.answer]
                    if flips:
                        flipped = max(flips, key=lambda t: t[0])
                        best = (flipped[0], flipped[1])
                        top_now = flipped[2].top_index
                        status = "flipped"
            best_verdict = verdict_by_text.get(best[1])
            await self._emit(
                {
                    "event": "iteration",
                    "qid": q.qid,
                    "iteration": iteration,
                    "candidates": generated,
                    "valid": valid,
                    "best": best[1],
                    "best_objective": best[0],
                    "equivalence_score": best_verdict.score if best_verdict else None,
                }
            )
            if self.on_iteration is not None:
                self.on_iteration(
                    IterationReport(
                        q.qid,
                        iteration,
                        best[1],
                        best[0],
                        q.answer if top_now is None else top_now,
                        q.answer,
                        best_verdict.score if best_verdict else None,
                        best_verdict.equivalent if best_verdict else None,
                        generated,
                        valid,
                    )
                )
            if status == "flipped":
                break
        verification: dict[str, dict[str, Any]] = {}
        if status == "flipped":
            verification = await self._verify_flip(q, best[1], stats)
            if not all(v["equivalent"] for v in verification.values()):
                status = "flipped_unverified"
            await self._emit({"event": "verification", "qid": q.qid, "question": best[1], "checks": verification})
        outcome = AttackOutcome(
            q.qid,
            status,
            iteration,
            original.top_index,
            target,
            best[1],
            best[0],
            objective0,
            checked,
            passed,
            candidates_generated=generated,
            candidates_valid=valid,
            dropped=dropped,
            retries=stats["retries"],
            final_score=best_verdict.score if best_verdict else None,
            final_equivalent=best_verdict.equivalent if best_verdict else None,
            final_check=_verdict_record(best_verdict) if best_verdict else {},
            verification=verification,
        )
        await self._emit({"event": "done", **dataclasses.asdict(outcome)})
        return outcome

    async def admitted_parallel(self, parallel: int) -> int:
        """`parallel` lowered so that one iteration of every concurrent question fits in one batch of each service.

        An iteration sends parents x candidates rows to the proposer and as many items to the scorer at once; more
        concurrent questions than max_batch_size / rows would only queue behind each other (and, on a busy machine,
        be refused). The services' GetInfo batching settings give max_batch_size; a service that does not answer
        GetInfo leaves `parallel` as it is.
        """
        scored = max(1, self.config.parents * self.config.candidates_per_parent)
        limit = max(1, parallel)
        stats = {"retries": 0}
        for name, client, per_question in (
            ("proposer", self.mesh.proposer, scored * max(1, self.config.oversample)),
            ("scorer", self.mesh.scorer, scored),
        ):
            try:
                info = await self._call("info", f"{name} GetInfo", functools.partial(_get_info, client), stats)
            except AttackCallError as err:
                log.warning("%s GetInfo failed (%s); --parallel %s is not checked against its batching", name, err, parallel)
                continue
            size = info.batching.max_batch_size
            if size:
                fits = max(1, size // per_question)
                if fits < limit:
                    log.info(
                        "parallel lowered from %s to %s: the %s batches %s rows and an iteration sends %s per question",
                        limit,
                        fits,
                        name,
                        size,
                        per_question,
                    )
                    limit = fits
        return limit

    async def campaign(
        self, questions: Iterable[MCQ], *, parallel: int = 3, progress: Callable[[AttackOutcome], None] | None = None
    ) -> list[AttackOutcome]:
        """Attack every question not already finished in the trace (errored ones are redone), at most `parallel` at
        a time and never more than the services batch together (admitted_parallel); returns all outcomes."""
        finished = self.trace.finished() if self.trace else {}
        outcomes = [_outcome_from_event(e) for e in finished.values()]
        todo = [q for q in questions if q.qid not in finished]
        limit = asyncio.Semaphore(await self.admitted_parallel(parallel) if todo else 1)

        async def one(q: MCQ) -> AttackOutcome:
            async with limit:
                try:
                    result = await self.attack(q)
                except Exception as err:  # one question's failure (after retries) does not end the campaign
                    log.warning("attack on %s failed: %s", q.qid, err)
                    result = AttackOutcome(
                        q.qid, "error", 0, -1, -1, q.question, 0.0, 0.0, 0, 0, error=f"{type(err).__name__}: {err}"
                    )
                    await self._emit({"event": "error", "qid": q.qid, "error": result.error})
                if progress is not None:
                    progress(result)
                return result

        outcomes.extend(await asyncio.gather(*(one(q) for q in todo)))
        return outcomes


def _verdict_record(verdict: Any) -> dict[str, Any]:
    """A verdict (crucible.clients.proposer.Equivalence) as the trace and summary keep it: the method, the verdict,
    its score and whatever else the method reported (form violation, content alignment, both judge orders)."""
    record: dict[str, Any] = {
        "method": getattr(verdict, "method", ""),
        "equivalent": bool(verdict.equivalent),
        "score": float(verdict.score),
    }
    for name in (
        "similarity_method",
        "form_violation",
        "form_detail",
        "content_score",
        "content_recall",
        "content_precision",
        "entailment_forward",
        "entailment_backward",
    ):
        value = getattr(verdict, name, None)
        if value not in (None, ""):
            record[name] = value
    for name in ("dropped_words", "added_words"):
        if getattr(verdict, name, ()):
            record[name] = list(getattr(verdict, name))
    return record


def _outcome_from_event(event: dict[str, Any]) -> AttackOutcome:
    return AttackOutcome(**{k: v for k, v in event.items() if k in AttackOutcome.__dataclass_fields__})


def summarize(outcomes: Sequence[AttackOutcome]) -> dict[str, Any]:
    """What a campaign did: target accuracy on the questions, attacks and flips, candidate validity with the drop
    counts by reason, the meaning check's pass rate, retries and errors. A flip counts as a success only when its
    final question passed every verification check (`verified_by`); the others are `flipped_unverified`."""
    attacked = [o for o in outcomes if o.status in ("flipped", "flipped_unverified", "not_flipped")]
    flipped = [o for o in attacked if o.status == "flipped"]
    unverified = [o for o in attacked if o.status == "flipped_unverified"]
    methods = sorted({m for o in flipped + unverified for m in o.verification})
    answered = [o for o in outcomes if o.status != "error"]
    checked = sum(o.equivalence_checked for o in attacked)
    passed = sum(o.equivalence_passed for o in attacked)
    generated = sum(o.candidates_generated for o in attacked)
    valid = sum(o.candidates_valid for o in attacked)
    dropped: dict[str, int] = {}
    for o in attacked:
        for reason, count in o.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
    summary = {
        "questions": len(outcomes),
        "target_accuracy": len(attacked) / len(answered) if answered else None,
        "skipped_target_wrong": sum(o.status == "skipped_wrong" for o in outcomes),
        "errors": sum(o.status == "error" for o in outcomes),
        "attacked": len(attacked),
        "flipped": len(flipped),
        "flipped_unverified": len(unverified),
        "verified_by": ",".join(methods),
        "attack_success_rate": len(flipped) / len(attacked) if attacked else 0.0,
        "mean_iterations_to_flip": sum(o.iterations for o in flipped) / len(flipped) if flipped else None,
        "candidates_generated": generated,
        "valid_candidate_rate": valid / generated if generated else None,
        "equivalence_checked": checked,
        "equivalence_pass_rate": passed / checked if checked else None,
        "flipped_final_equivalent": sum(bool(o.final_equivalent) for o in flipped),
        "retries": sum(o.retries for o in outcomes),
    }
    summary.update({f"dropped_{reason}": count for reason, count in sorted(dropped.items())})
    return summary
