"""`crucible demo` (what `make run` runs): bring the mesh up on the embedded models and show each loop working.

Reward loop on a few texts, a short SECA attack on two questions the target answers right (from a built-in set), a
nanoGPT job on the local provider with its cost estimate, then a summary and a clean stop. Needs no data folder.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from crucible.clients.attack import AttackConfig, IterationReport, SecaAttack, Trace, summarize

# The built-in questions live in the SDK (`crucible attack --builtin` uses them too); re-exported for the demo.
from crucible.clients.builtin_questions import ATTACK_SAMPLES as ATTACK_SAMPLES
from crucible.clients.mesh import Mesh
from crucible.clients.reward import CompositeReward, RewardConfig
from crucible.clients.scorer import ChoiceQuery
from crucible.clients.tables import format_table

#: (original, rewrites) used when no data folder is around: one faithful paraphrase, one drifting, one unrelated, one
#: empty; then a faithful one and a degenerate one. Two or three sentences each, so that the detector judges them (a
#: text under 32 scored tokens gets a neutral detector term, flagged detector_unreliable:too_few_tokens).
REWARD_SAMPLES: list[tuple[str, list[str]]] = [
    (
        "The city council voted on Tuesday to expand the bike lane network across the downtown area next spring. The "
        "plan adds twelve miles of protected lanes, connects the train station to the university, and will be paid for "
        "with a state transportation grant. Local business owners were divided, with some worried about losing parking.",
        [
            "On Tuesday the city council approved a plan to extend downtown bike lanes starting next spring. Twelve miles "
            "of protected lanes will link the train station with the university, funded by a state transportation grant. "
            "Shop owners in the area disagreed, and some fear they will lose parking spaces.",
            "Next spring, cyclists downtown will get more lanes after councillors backed the expansion on Tuesday. "
            "Officials also discussed a new stadium, higher property taxes and a summer festival, which many residents "
            "say the city cannot afford this year.",
            "The weather was pleasant and many people enjoyed a picnic in the park. Children played on the swings while "
            "their parents talked about holidays, and a small band performed old songs near the fountain until sunset.",
            "",
        ],
    ),
    (
        "Regular exercise improves sleep quality, lowers stress and helps people keep a healthy weight. Doctors "
        "recommend about 150 minutes of moderate activity each week, such as brisk walking or cycling, and say that even "
        "short sessions spread across the day bring benefits.",
        [
            "Working out regularly helps you sleep better, reduces stress and makes it easier to stay at a healthy "
            "weight. Physicians advise roughly 150 minutes of moderate exercise a week, like cycling or a brisk walk, and "
            "note that brief sessions spread through the day help too.",
            "Exercise exercise exercise exercise exercise exercise exercise exercise exercise exercise.",
        ],
    ),
]


async def reward_section(mesh: Mesh) -> dict[str, Any]:
    """Score the sample rewrites and print every component per rewrite."""
    # Evasion from the criterion works with any detector model (P(machine) needs a calibration for the model pair);
    # the detector's small scoring model (Gemma-3-270M; SmolLM2-135M) puts fluent English at perplexity ~15-150, so
    # the fluency window is wider than StealthRL's 5-80 (set for larger scoring models).
    config = RewardConfig(detector_signal="criterion", perplexity_target=40.0, perplexity_min=8.0, perplexity_max=250.0)
    reward = CompositeReward(mesh, config)
    rows = []
    totals = []
    started = time.perf_counter()
    for original, rewrites in REWARD_SAMPLES:
        group = await reward.score_group(original, rewrites)
        for text, r, adv in zip(rewrites, group.rewards, group.advantages, strict=True):
            rows.append(
                (
                    f"{r.total:+.3f}",
                    f"{adv:+.2f}",
                    f"{r.detector:.3f}",
                    f"{r.gate:.2f}",
                    f"{r.similarity:.3f}",
                    f"{r.fluency:.3f}",
                    "-" if r.perplexity is None else f"{r.perplexity:.0f}",
                    f"{r.repetition:.2f}",
                    f"{r.language:.2f}",
                    f"{r.length:.2f}",
                    f"{r.copy:.2f}",
                    f"{r.penalty:+.1f}",
                    ",".join(r.flags) or "-",
                    (text or "<empty>")[:44],
                )
            )
            totals.append(r.total)
    # Hygiene: repetition (degeneracy, subtracted), language (English-likeness vs the original) and length (1 within
    # the bounds) are weighted components too, so "Exercise exercise ..." no longer outscores a sensible rewrite.
    print(
        "\n== Reward loop (composite reward per GRPO group: gate x (evasion + fluency) + similarity - repetition "
        "- language - length - copy + penalties; evasion is normalised within the group)"
    )
    print(
        format_table(
            (
                "total",
                "advantage",
                "evasion",
                "gate",
                "similarity",
                "fluency",
                "ppl",
                "repetition",
                "language",
                "length",
                "copy",
                "penalty",
                "flags",
                "rewrite",
            ),
            rows,
        )
    )
    return {"rewrites_scored": len(totals), "reward_seconds": time.perf_counter() - started}


async def attack_section(mesh: Mesh, trace_dir: Path, iterations: int = 3, questions: int = 2) -> dict[str, Any]:
    """A short SECA attack on questions the target answers right, picked by scoring the built-in set first.

    Prints, per iteration, each question's best candidate so far, its objective (log P of the target wrong letter)
    and the meaning check's verdict on it, then the outcomes and the summary (attacked, flipped, valid candidates).
    """
    pool = ATTACK_SAMPLES
    # SECA attacks only questions the target answers right: score the whole set once and keep the first of those.
    scores = await mesh.scorer.score_choices([ChoiceQuery(question=q.with_question(q.question)) for q in pool])
    right = [q for q, s in zip(pool, scores, strict=True) if s.top_index == q.answer]
    print(
        f"\n== Attack loop (SECA search, {iterations} iterations, 3 parents x 3 candidates): the target answers "
        f"{len(right)}/{len(pool)} built-in questions right; attacking {min(questions, len(right))} of them"
    )
    if not right:
        return {"attack_attacked": 0, "attack_note": "the target answers none of the built-in questions right"}

    def show(report: IterationReport) -> None:
        verdict = (
            "original"
            if report.equivalence_score is None
            else (f"{'equivalent' if report.equivalent else 'not equivalent'} ({report.equivalence_score:.2f})")
        )
        print(
            f"  {report.qid} it {report.iteration}: objective {report.best_objective:7.3f}  top "
            f"{'ABCD'[report.top_option] if report.top_option < 4 else report.top_option} (answer "
            f"{'ABCD'[report.answer] if report.answer < 4 else report.answer})  {verdict}  "
            f"valid {report.valid}/{report.candidates}  best: {report.best_question[:70]}"
        )

    attack = SecaAttack(mesh, AttackConfig(iterations=iterations), Trace(trace_dir / "demo-attack.jsonl"), on_iteration=show)
    started = time.perf_counter()
    outcomes = await attack.campaign(right[:questions], parallel=questions)
    print(
        format_table(
            (
                "question",
                "status",
                "iterations",
                "objective before",
                "best objective",
                "equivalence passed/checked",
                "valid candidates",
            ),
            [
                (
                    o.qid,
                    o.status,
                    o.iterations,
                    f"{o.original_objective:.2f}",
                    f"{o.best_objective:.2f}",
                    f"{o.equivalence_passed}/{o.equivalence_checked}",
                    f"{o.candidates_valid}/{o.candidates_generated}",
                )
                for o in outcomes
            ],
        )
    )
    summary = summarize(outcomes)
    keep = ("attacked", "flipped", "attack_success_rate", "valid_candidate_rate", "equivalence_pass_rate", "errors")
    return {k if k.startswith("attack_") else "attack_" + k: summary[k] for k in keep} | {
        "attack_seconds": time.perf_counter() - started
    }


async def nanogpt_section(mesh: Mesh, max_iters: int = 60) -> dict[str, Any]:
    """A small nanoGPT training run on the local provider: the estimate before, progress while, cost after.

    The first attempt stops on purpose after its first checkpoint (--crash-at-iter, a stand-in for a lost machine);
    the scheduler relaunches it in a fresh working folder and it resumes from the checkpoint in the object store."""
    example = Path(__file__).resolve().parents[2] / "examples" / "nanogpt"  # in a source checkout
    if not (example / "train.py").exists():
        print("\n== nanoGPT job: skipped (examples/nanogpt is not in this installation)")
        return {"nanogpt": "skipped (no examples/nanogpt)"}
    spec = {
        "display_name": "demo-nanogpt",
        "command": [
            sys.executable,
            "train.py",
            "--max-iters",
            str(max_iters),
            "--eval-interval",
            "30",
            "--log-interval",
            "10",
            "--checkpoint-interval",
            "30",
            "--n-layer",
            "2",
            "--n-head",
            "2",
            "--n-embd",
            "64",
            "--block-size",
            "64",
            "--batch-size",
            "16",
            "--sample-chars",
            "0",
            "--crash-at-iter",
            str(max_iters * 3 // 4),
        ],
        "code_dir": str(example),
        "restart_policy": {"max_restarts_on_errors": 1},
        "provider_policy": "PROVIDER_POLICY_EXPLICIT",
        "providers": ["local"],
        "expected_duration": "60s",
        "max_duration": "600s",
    }
    started = time.perf_counter()
    job = await mesh.scheduler.create_job(spec)
    print(
        f"\n== nanoGPT job {job.job_id} on {job.provider or 'local'}: offer {job.offer.offer_id if job.offer else '-'}, "
        f"estimated ${job.cost.estimated_usd:.6f} (local: electricity + amortisation rate)"
    )
    if os.environ.get("CRUCIBLE_CONSOLE_URL"):  # set by `crucible demo` when it started the web console
        print(f"  watch it in the web console: {os.environ['CRUCIBLE_CONSOLE_URL']}jobs/{job.job_id}", flush=True)
    last: tuple[int, int | None] | None = None
    last_step = None
    async for snapshot in mesh.scheduler.watch_job(job.job_id, timeout=600):
        job = snapshot
        line = live_line(job)
        step = job.progress.step if job.progress else None
        key = (len(job.attempts), step)
        if line and key != last:
            print(line)
            last, last_step = key, step
    resumed = ""
    async for chunk in mesh.scheduler.logs(job.job_id, timeout=60):
        for line in chunk.text.splitlines():
            if line.startswith(("crashing on purpose", "resumed from step")):
                print(f"  attempt {chunk.attempt}: {line}")
                resumed = resumed or (line.split(":", 1)[0] if line.startswith("resumed") else "")
    artifacts = await mesh.scheduler.list_artifacts(job.job_id)
    print(f"  finished {job.state}; spent ${job.cost.spent_usd:.6f}; artifacts: " + ", ".join(a.path for a in artifacts[:4]))
    runtimes = [
        (a.end_time - a.start_time).total_seconds() for a in job.attempts if a.start_time is not None and a.end_time is not None
    ]
    return {
        "nanogpt_state": job.state,
        "nanogpt_steps": job.progress.total_steps if job.state == "succeeded" and job.progress else last_step,
        "nanogpt_attempts": len(job.attempts),
        "nanogpt_resumed": resumed or "no",
        "nanogpt_estimated_usd": job.cost.estimated_usd,
        "nanogpt_expected_seconds": 60.0,
        "nanogpt_spent_usd": job.cost.spent_usd,
        "nanogpt_runtime_seconds": sum(runtimes),
        "nanogpt_price_usd_per_hour": job.offer.price_usd_per_hour if job.offer else 0.0,
        "nanogpt_seconds": time.perf_counter() - started,
    }


def live_line(job: Any) -> str:
    """'  running    attempt 2 step 40/60 loss 2.1234': the step and loss of the current attempt only. After a relaunch
    the last loss shown by the scheduler is still the previous attempt's until the new one reports; it shows as '-'."""
    progress = job.progress
    if progress is None or progress.step is None:
        return ""
    attempt = job.attempts[-1] if job.attempts else None
    since = (attempt.start_time or attempt.create_time) if attempt is not None else None
    fresh = progress.update_time is not None and (since is None or progress.update_time >= since)
    loss = progress.metrics.get("loss", progress.metrics.get("train_loss")) if fresh else None
    total = f"/{progress.total_steps}" if progress.total_steps else ""
    number = f"attempt {attempt.attempt} " if attempt is not None else ""
    shown = "-" if loss is None else f"{loss:.4f}"
    return f"  {job.state:<10} {number}step {progress.step if fresh else '-'}{total} loss {shown}"


def explain(results: dict[str, Any]) -> list[str]:
    """What the summary's numbers mean: why the job ran twice, and why its spend is not its estimate."""
    lines: list[str] = []
    if results.get("nanogpt_attempts", 0) > 1:
        lines.append(
            f"The nanoGPT job ran {results['nanogpt_attempts']} attempts: the first stopped on purpose after its first "
            "checkpoint (a stand-in for a lost machine), and the scheduler relaunched it; the second attempt "
            f"{'resumed from the checkpoint' if results.get('nanogpt_resumed', 'no') != 'no' else 'started over'} and "
            f"finished {results.get('nanogpt_state', '?')}."
        )
    estimated, spent = results.get("nanogpt_estimated_usd"), results.get("nanogpt_spent_usd")
    if isinstance(estimated, float) and isinstance(spent, float) and estimated > 0:
        runtime = results.get("nanogpt_runtime_seconds", 0.0)
        price = results.get("nanogpt_price_usd_per_hour", 0.0)
        lines.append(
            f"Estimate vs spend: the estimate (${estimated:.6f}) prices the {results.get('nanogpt_expected_seconds', 0):.0f} s "
            f"the job said it would take (expected_duration) at ${price:.4f}/h; the spend (${spent:.6f}, "
            f"{spent / estimated:.1f}x) prices what really ran: {runtime:.0f} s over {results.get('nanogpt_attempts', 1)} "
            "attempt(s), including each attempt's start-up and the steps redone after the crash."
        )
    return lines


async def run_demo(mesh: Mesh, work_dir: Path) -> dict[str, Any]:
    """Every section in turn; a section that fails is reported and the others still run."""
    results: dict[str, Any] = {}
    for name, section in (
        ("reward", reward_section(mesh)),
        ("attack", attack_section(mesh, work_dir)),
        ("nanogpt", nanogpt_section(mesh)),
    ):
        try:
            results.update(await section)
        except Exception as err:  # shown to the user; the demo's exit code reflects it
            results[f"{name}_error"] = f"{type(err).__name__}: {err}"
            print(f"\n== {name}: FAILED: {err}")
    return results


def print_summary(results: dict[str, Any]) -> None:
    print("\n== Summary")
    print(format_table(("item", "value"), [(k, f"{v:.6g}" if isinstance(v, float) else v) for k, v in results.items()]))
    for line in explain(results):
        print(line)


def demo_ok(results: dict[str, Any]) -> bool:
    return not any(k.endswith("_error") for k in results) and results.get("nanogpt_state", "succeeded") == "succeeded"
