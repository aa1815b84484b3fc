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

from _mesh import running_mesh  # noqa: E402

from crucible.clients.attack import AttackConfig, SecaAttack, Trace, load_mmlu  # noqa: E402
from crucible.clients.mesh import Mesh  # noqa: E402
from crucible.demo import ATTACK_SAMPLES  # noqa: E402
from crucible.mesh import format_table  # noqa: E402


async def _campaign(base: int, questions, parallel: int, iterations: int) -> tuple[float, int, int]:
    trace = Trace(Path(tempfile.mkdtemp(prefix="bench-attack-")) / "trace.jsonl")
    async with Mesh.local(base) as mesh:
        attack = SecaAttack(mesh, AttackConfig(iterations=iterations, seed=7), trace)
        start = time.perf_counter()
        outcomes = await attack.campaign(questions, parallel=parallel)
        seconds = time.perf_counter() - start
    done = sum(o.iterations for o in outcomes)
    errors = sum(o.status == "error" for o in outcomes)
    return seconds, done, errors


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    data = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mmlu"
    if data.is_dir():
        questions = load_mmlu(data, ["high_school_psychology"], limit_per_subject=args.questions)
    else:
        questions = (ATTACK_SAMPLES * args.questions)[: args.questions]
    rows = []
    async with running_mesh(["proposer", "scorer"]) as base:
        results = {}
        for parallel in (1, 3):
            seconds, done, errors = await _campaign(base, questions, parallel, args.iterations)
            results[parallel] = done / seconds if seconds else 0.0
            rows.append((f"--parallel {parallel}", len(questions), done, f"{seconds:.1f}", f"{results[parallel]:.3f}", errors))
    print(f"SECA attack over the mesh: {len(questions)} questions, up to {args.iterations} iterations each "
          f"(3 parents x 3 candidates), SmolLM2 proposer and target")
    print(format_table(("run", "questions", "iterations done", "seconds", "iterations/s", "errors"), rows))
    if results.get(1):
        print(f"parallel 3 vs 1: {results[3] / results[1]:.2f}x iterations/s")


if __name__ == "__main__":
    asyncio.run(main())
