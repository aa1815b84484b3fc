"""Benchmark of the attack loop: SECA iterations per second with --parallel 3 vs --parallel 1, over the real mesh.

Same questions, same seeds, a fixed iteration budget; the mesh runs the embedded SmolLM2 (proposer, scorer) and MiniLM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mesh import running_mesh

from crucible.clients.attack import AttackConfig, SecaAttack, Trace, load_mmlu, summarize
from crucible.clients.mesh import Mesh
from crucible.clients.scorer import ChoiceQuery
from crucible.clients.tables import format_table
from crucible.demo import ATTACK_SAMPLES


async def _campaign(base: int, questions, parallel: int, iterations: int) -> tuple[float, int, dict]:
    trace = Trace(Path(tempfile.mkdtemp(prefix="bench-attack-")) / "trace.jsonl")
    async with Mesh.local(base) as mesh:
        attack = SecaAttack(mesh, AttackConfig(iterations=iterations, seed=7), trace)
        start = time.perf_counter()
        outcomes = await attack.campaign(questions, parallel=parallel)
        seconds = time.perf_counter() - start
    done = sum(o.iterations for o in outcomes)
    return seconds, done, summarize(outcomes)


def _rate(value) -> str:
    return "-" if value is None else f"{value:.2f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    data = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mmlu"
    pool = load_mmlu(data, ["high_school_psychology"], limit_per_subject=40) if data.is_dir() else list(ATTACK_SAMPLES)
    rows = []
    async with running_mesh(["proposer", "scorer"]) as base:
        # Only questions the target answers right are attacked (the rest end at iteration 0 and measure nothing).
        async with Mesh.local(base) as mesh:
            scores = await mesh.scorer.score_choices([ChoiceQuery(question=q.with_question(q.question)) for q in pool])
        right = [q for q, sc in zip(pool, scores, strict=True) if sc.top_index == q.answer]
        accuracy = len(right) / len(pool)
        # Questions the target answers right first (the rest end at iteration 0 and measure nothing).
        questions = (right + [q for q in pool if q not in right])[: args.questions]
        results = {}
        drops: dict[int, dict] = {}
        for parallel in (1, 3):
            seconds, done, s = await _campaign(base, questions, parallel, args.iterations)
            results[parallel] = done / seconds if seconds else 0.0
            drops[parallel] = {k[len("dropped_") :]: v for k, v in s.items() if k.startswith("dropped_")}
            rows.append(
                (
                    f"--parallel {parallel}",
                    len(questions),
                    done,
                    f"{seconds:.1f}",
                    f"{results[parallel]:.3f}",
                    _rate(s["target_accuracy"]),
                    f"{s['flipped']}/{s['attacked']}",
                    _rate(s["valid_candidate_rate"]),
                    _rate(s["equivalence_pass_rate"]),
                    s["retries"],
                    s["errors"],
                )
            )
    print(
        f"SECA attack over the mesh: {len(questions)} questions, up to {args.iterations} iterations each "
        f"(3 parents x 3 candidates), SmolLM2 proposer and target; the target answers {accuracy:.0%} of the "
        f"{len(pool)}-question pool right"
    )
    print(
        format_table(
            (
                "run",
                "questions",
                "iterations done",
                "seconds",
                "iterations/s",
                "target accuracy",
                "flipped/attacked",
                "valid candidates",
                "equivalence pass",
                "retries",
                "errors",
            ),
            rows,
        )
    )
    for parallel, counts in drops.items():
        print(f"--parallel {parallel} dropped by reason: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"))
    if results.get(1):
        print(f"parallel 3 vs 1: {results[3] / results[1]:.2f}x iterations/s")


if __name__ == "__main__":
    asyncio.run(main())
