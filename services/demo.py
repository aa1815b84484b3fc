"""`crucible demo` (what `make run` runs): bring the mesh up on the embedded models and show each loop working.

Reward loop on a few texts, a short SECA attack on two questions, a nanoGPT job on the local provider with its cost
estimate, then a summary and a clean stop. Uses ../shared/data when present, else the small samples written here.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from crucible.clients.attack import MCQ, AttackConfig, SecaAttack, Trace, load_mmlu, summarize
from crucible.clients.mesh import Mesh
from crucible.clients.reward import CompositeReward, RewardConfig
from crucible.clients.scorer import ChoiceQuery
from crucible.mesh import format_table

#: (original, rewrites) used when no data folder is around: one faithful paraphrase, one drifting, one degenerate.
REWARD_SAMPLES: list[tuple[str, list[str]]] = [
    (
        "The city council voted on Tuesday to expand the bike lane network across the downtown area next spring.",
        [
            "On Tuesday the city council approved a plan to extend downtown bike lanes starting next spring.",
            "Next spring, cyclists downtown will get more lanes after councillors backed the expansion on Tuesday.",
            "The weather was pleasant and many people enjoyed a picnic in the park.",
            "",
        ],
    ),
    (
        "Regular exercise improves sleep quality, lowers stress and helps people keep a healthy weight.",
        [
            "Working out regularly helps you sleep better, reduces stress and makes it easier to stay at a healthy weight.",
            "Exercise exercise exercise exercise exercise exercise exercise exercise exercise exercise.",
        ],
    ),
]

#: Two MMLU-format questions (answers are indexes into the options) for machines without ../shared/data.
ATTACK_SAMPLES = [
    MCQ("builtin/0", "high_school_geography", "What is the capital city of France?",
        ("Berlin", "Madrid", "Paris", "Rome"), 2),
    MCQ("builtin/1", "elementary_mathematics", "What is the result of 7 multiplied by 8?",
        ("54", "56", "58", "64"), 1),
]


def _shared_data() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    candidate = here.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


async def reward_section(mesh: Mesh) -> dict[str, Any]:
    """Score the sample rewrites and print every component per rewrite."""
    # SmolLM2 is uncalibrated (no P(machine)), so evasion comes from the criterion; a 135M model puts fluent English
    # at perplexity ~20-150, so the fluency window is wider than StealthRL's 5-80 (set for larger scoring models).
    config = RewardConfig(detector_signal="criterion", perplexity_target=40.0, perplexity_min=8.0, perplexity_max=250.0)
    reward = CompositeReward(mesh, config)
    rows = []
    totals = []
    started = time.perf_counter()
    for original, rewrites in REWARD_SAMPLES:
        group = await reward.score_group(original, rewrites)
        for text, r, adv in zip(rewrites, group.rewards, group.advantages, strict=True):
            rows.append((f"{r.total:+.3f}", f"{adv:+.2f}", f"{r.detector:.3f}", f"{r.similarity:.3f}", f"{r.fluency:.3f}",
                         "-" if r.perplexity is None else f"{r.perplexity:.0f}", f"{r.penalty:+.1f}",
                         ",".join(r.flags) or "-", (text or "<empty>")[:44]))
            totals.append(r.total)
    print("\n== Reward loop (composite reward per GRPO group: detector evasion + similarity + fluency + penalties)")
    print(format_table(("total", "advantage", "evasion", "similarity", "fluency", "ppl", "penalty", "flags", "rewrite"),
                       rows))
    return {"rewrites_scored": len(totals), "reward_seconds": time.perf_counter() - started}


async def attack_section(mesh: Mesh, trace_dir: Path, iterations: int = 3) -> dict[str, Any]:
    """A short SECA attack on two questions; prints each outcome and the campaign summary."""
    data = _shared_data()
    pool = ATTACK_SAMPLES
    if data is not None and (data / "mmlu").is_dir():
        pool = load_mmlu(data / "mmlu", ["high_school_psychology"], limit_per_subject=12)
    # SECA attacks only questions the target answers right: pick the first two of those (one scoring call).
    scores = await mesh.scorer.score_choices([ChoiceQuery(question=q.with_question(q.question)) for q in pool])
    questions = [q for q, s in zip(pool, scores, strict=True) if s.top_index == q.answer][:2] or pool[:2]
    attack = SecaAttack(mesh, AttackConfig(iterations=iterations), Trace(trace_dir / "demo-attack.jsonl"))
    started = time.perf_counter()
    outcomes = await attack.campaign(questions, parallel=2)
    print(f"\n== Attack loop (SECA search, {iterations} iterations, 3 parents x 3 candidates)")
    print(format_table(
        ("question", "status", "iterations", "objective before", "best objective", "equivalence passed/checked"),
        [(o.qid, o.status, o.iterations, f"{o.original_objective:.2f}", f"{o.best_objective:.2f}",
          f"{o.equivalence_passed}/{o.equivalence_checked}") for o in outcomes],
    ))
    summary = summarize(outcomes)
    return {"attack_" + k: v for k, v in summary.items() if k in ("attacked", "flipped", "attack_success_rate")} | {
        "attack_seconds": time.perf_counter() - started}


async def nanogpt_section(mesh: Mesh, max_iters: int = 60) -> dict[str, Any]:
    """A small nanoGPT training run on the local provider: the estimate before, progress while, cost after."""
    example = Path(__file__).resolve().parent.parent / "examples" / "nanogpt"
    if not (example / "train.py").exists():
        print("\n== nanoGPT job: skipped (examples/nanogpt is not in this installation)")
        return {"nanogpt": "skipped (no examples/nanogpt)"}
    spec = {
        "display_name": "demo-nanogpt",
        "command": [sys.executable, "train.py", "--max-iters", str(max_iters), "--eval-interval", "30",
                    "--log-interval", "10", "--checkpoint-interval", "30", "--n-layer", "2", "--n-head", "2",
                    "--n-embd", "64", "--block-size", "64", "--batch-size", "16", "--sample-chars", "0"],
        "code_dir": str(example),
        "provider_policy": "PROVIDER_POLICY_EXPLICIT",
        "providers": ["local"],
        "expected_duration": "60s",
        "max_duration": "600s",
    }
    started = time.perf_counter()
    job = await mesh.scheduler.create_job(spec)
    print(f"\n== nanoGPT job {job.job_id} on {job.provider or 'local'}: offer {job.offer.offer_id if job.offer else '-'}, "
          f"estimated ${job.cost.estimated_usd:.6f} (local: electricity + amortisation rate)")
    if os.environ.get("CRUCIBLE_CONSOLE_URL"):  # set by `crucible demo` when it started the web console
        print(f"  watch it in the web console: {os.environ['CRUCIBLE_CONSOLE_URL']}jobs/{job.job_id}", flush=True)
    last_step = None
    async for snapshot in mesh.scheduler.watch_job(job.job_id, timeout=600):
        job = snapshot
        step = job.progress.step if job.progress else None
        if step is not None and step != last_step:
            loss = job.progress.metrics.get("loss") or job.progress.metrics.get("train_loss")
            print(f"  {job.state:<10} step {step}/{job.progress.total_steps} loss "
                  + ("-" if loss is None else f"{loss:.4f}"))
            last_step = step
    artifacts = await mesh.scheduler.list_artifacts(job.job_id)
    print(f"  finished {job.state}; spent ${job.cost.spent_usd:.6f}; artifacts: "
          + ", ".join(a.path for a in artifacts[:4]))
    return {"nanogpt_state": job.state, "nanogpt_steps": last_step, "nanogpt_estimated_usd": job.cost.estimated_usd,
            "nanogpt_spent_usd": job.cost.spent_usd, "nanogpt_seconds": time.perf_counter() - started}


async def run_demo(mesh: Mesh, work_dir: Path) -> dict[str, Any]:
    """Every section in turn; a section that fails is reported and the others still run."""
    results: dict[str, Any] = {}
    for name, section in (("reward", reward_section(mesh)), ("attack", attack_section(mesh, work_dir)),
                          ("nanogpt", nanogpt_section(mesh))):
        try:
            results.update(await section)
        except Exception as err:  # shown to the user; the demo's exit code reflects it
            results[f"{name}_error"] = f"{type(err).__name__}: {err}"
            print(f"\n== {name}: FAILED: {err}")
    return results


def print_summary(results: dict[str, Any]) -> None:
    print("\n== Summary")
    print(format_table(("item", "value"), [(k, f"{v:.6g}" if isinstance(v, float) else v) for k, v in results.items()]))


def demo_ok(results: dict[str, Any]) -> bool:
    return not any(k.endswith("_error") for k in results) and results.get("nanogpt_state", "succeeded") == "succeeded"

