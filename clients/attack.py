"""The attack loop: SECA-style search for meaning-preserving rephrasings of MMLU questions that flip a target's answer.

Keeps questions the target answers right, aims at the second most likely (wrong) option, iterates proposer rewrites
from the best feasible parents, and writes every candidate to a JSONL trace that lets a campaign resume.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from crucible.clients.mesh import Mesh
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


def load_mmlu(data_dir: Path, subjects: Sequence[str] = (), *, seca_subset: bool = False,
              limit_per_subject: int | None = None) -> list[MCQ]:
    """Questions from `<subject>_test.csv` files (header question,choice0..3,answer); optionally the SECA index subset."""
    files = sorted(data_dir.glob("*_test.csv"))
    available = {f.name[: -len("_test.csv")]: f for f in files}
    if not available:
        raise FileNotFoundError(f"no <subject>_test.csv files in {data_dir}")
    wanted = list(subjects) or sorted(available)
    missing = [s for s in wanted if s not in available]
    if missing:
        raise FileNotFoundError(f"subject(s) {missing} not in {data_dir} (have: {', '.join(sorted(available))})")
    subset: dict[str, list[int]] = {}
    if seca_subset:
        index_file = data_dir / "seca_filtered_index.json"
        if not index_file.exists():
            raise FileNotFoundError(f"--seca-subset needs {index_file}")
        subset = json.loads(index_file.read_text())
    out: list[MCQ] = []
    for subject in wanted:
        with available[subject].open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        indexes = subset.get(subject, []) if seca_subset else range(len(rows))
        picked = [i for i in indexes if 0 <= i < len(rows)][: limit_per_subject or None]
        for i in picked:
            row = rows[i]
            options = tuple(row[f"choice{k}"] for k in range(4))
            out.append(MCQ(f"{subject}/{i}", subject, row["question"], options, int(row["answer"])))
    return out


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """SECA search settings (defaults: the paper's 3 parents x 3 candidates, 30 iterations, temperature 1.0)."""

    iterations: int = 30
    parents: int = 3
    candidates_per_parent: int = 3
    temperature: float = 1.0
    equivalence_method: str = "embedding"  # "nli" when the proposer has an NLI model
    equivalence_threshold: float | None = None  # None = the proposer's default
    seed: int = 0
    max_new_tokens: int = 0  # 0 = proposer default


@dataclasses.dataclass
class AttackOutcome:
    """How one question's attack ended."""

    qid: str
    status: str  # "flipped" | "not_flipped" | "skipped_wrong" (target already wrong) | "error"
    iterations: int
    original_top: int
    target_option: int
    best_question: str
    best_objective: float
    original_objective: float
    equivalence_checked: int
    equivalence_passed: int
    error: str = ""


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


class SecaAttack:
    """Runs the search for one question at a time; `campaign` runs many concurrently with resumption."""

    def __init__(self, mesh: Mesh, config: AttackConfig | None = None, trace: Trace | None = None) -> None:
        self.mesh = mesh
        self.config = config or AttackConfig()
        self.trace = trace

    async def _emit(self, event: dict[str, Any]) -> None:
        if self.trace is not None:
            await self.trace.write({"ts": time.time(), **event})

    async def _score(self, q: MCQ, texts: Sequence[str]) -> list[Any]:
        # No explicit choices: the scorer scores the answer letters as the target model writes them after
        # "option: " (" A".." D" for most tokenizers), as the paper does.
        return await self.mesh.scorer.score_choices([ChoiceQuery(question=q.with_question(t)) for t in texts])

    async def attack(self, q: MCQ) -> AttackOutcome:
        """Attack one question; returns its outcome (also written to the trace)."""
        cfg = self.config
        (original,) = await self._score(q, [q.question])
        ranking = original.ranking
        await self._emit({"event": "original", "qid": q.qid, "probabilities": original.probabilities,
                          "top": original.top_index, "answer": q.answer})
        if original.top_index != q.answer:
            outcome = AttackOutcome(q.qid, "skipped_wrong", 0, original.top_index, -1, q.question, 0.0, 0.0, 0, 0)
            await self._emit({"event": "done", **dataclasses.asdict(outcome)})
            return outcome
        target = ranking[1]
        objective0 = original.logprobs[target]
        parents: list[tuple[float, str]] = [(objective0, q.question)]
        best = parents[0]
        checked = passed = 0
        status = "not_flipped"
        iteration = 0
        for iteration in range(1, cfg.iterations + 1):
            proposals = await asyncio.gather(*(
                self.mesh.proposer.propose(
                    text, mode="equivalent_question", options=q.options, correct_option_index=q.answer,
                    n=cfg.candidates_per_parent, temperature=cfg.temperature, seed=_seed(cfg.seed, q.qid, iteration, k),
                    max_new_tokens=cfg.max_new_tokens,
                )
                for k, (_, text) in enumerate(parents)
            ))
            candidates = list(dict.fromkeys(c for p in proposals for c in p.candidates if c.strip() and c != q.question))
            if not candidates:
                await self._emit({"event": "iteration", "qid": q.qid, "iteration": iteration, "candidates": 0})
                continue
            scores = await self._score(q, candidates)
            improving = [(s.logprobs[target], c, s) for c, s in zip(candidates, scores, strict=True) if s.logprobs[target] > best[0]]
            verdicts = []
            if improving:
                verdicts = await self.mesh.proposer.check_equivalence(
                    [(q.question, c) for _, c, _ in improving], method=cfg.equivalence_method,
                    threshold=cfg.equivalence_threshold,
                )
                checked += len(verdicts)
                passed += sum(v.equivalent for v in verdicts)
            verdict_of = {c: v for (_, c, _), v in zip(improving, verdicts, strict=True)}
            for c, s in zip(candidates, scores, strict=True):
                v = verdict_of.get(c)
                await self._emit({
                    "event": "candidate", "qid": q.qid, "iteration": iteration, "candidate": c,
                    "objective": s.logprobs[target], "top": s.top_index, "probabilities": s.probabilities,
                    "equivalence_score": v.score if v else None, "equivalent": v.equivalent if v else None,
                })
            feasible = [(obj, c, s) for obj, c, s in improving if verdict_of[c].equivalent]
            if feasible:
                pool = sorted([*parents, *((obj, c) for obj, c, _ in feasible)], key=lambda t: -t[0])
                parents = list(dict.fromkeys(pool))[: cfg.parents]
                best = parents[0]
                if any(s.top_index != q.answer for _, _, s in feasible):
                    flipped = max((t for t in feasible if t[2].top_index != q.answer), key=lambda t: t[0])
                    best = (flipped[0], flipped[1])
                    status = "flipped"
                    break
        outcome = AttackOutcome(q.qid, status, iteration, original.top_index, target, best[1], best[0], objective0,
                                checked, passed)
        await self._emit({"event": "done", **dataclasses.asdict(outcome)})
        return outcome

    async def campaign(self, questions: Iterable[MCQ], *, parallel: int = 3,
                       progress: Callable[[AttackOutcome], None] | None = None) -> list[AttackOutcome]:
        """Attack every question not already finished in the trace, `parallel` at a time; returns all outcomes."""
        finished = self.trace.finished() if self.trace else {}
        outcomes = [AttackOutcome(**{k: v for k, v in e.items() if k in AttackOutcome.__dataclass_fields__})
                    for qid, e in finished.items()]
        todo = [q for q in questions if q.qid not in finished]
        limit = asyncio.Semaphore(max(1, parallel))

        async def one(q: MCQ) -> AttackOutcome:
            async with limit:
                try:
                    result = await self.attack(q)
                except Exception as err:  # one question's failure (e.g. a service error) does not end the campaign
                    log.warning("attack on %s failed: %s", q.qid, err)
                    result = AttackOutcome(q.qid, "error", 0, -1, -1, q.question, 0.0, 0.0, 0, 0, error=str(err))
                if progress is not None:
                    progress(result)
                return result

        outcomes.extend(await asyncio.gather(*(one(q) for q in todo)))
        return outcomes


def summarize(outcomes: Sequence[AttackOutcome]) -> dict[str, Any]:
    """Questions attacked (target right at first), attack success rate, mean iterations to flip, equivalence stats."""
    attacked = [o for o in outcomes if o.status in ("flipped", "not_flipped")]
    flipped = [o for o in attacked if o.status == "flipped"]
    checked = sum(o.equivalence_checked for o in attacked)
    passed = sum(o.equivalence_passed for o in attacked)
    return {
        "questions": len(outcomes),
        "skipped_target_wrong": sum(o.status == "skipped_wrong" for o in outcomes),
        "errors": sum(o.status == "error" for o in outcomes),
        "attacked": len(attacked),
        "flipped": len(flipped),
        "attack_success_rate": len(flipped) / len(attacked) if attacked else 0.0,
        "mean_iterations_to_flip": sum(o.iterations for o in flipped) / len(flipped) if flipped else None,
        "equivalence_checked": checked,
        "equivalence_pass_rate": passed / checked if checked else None,
    }
