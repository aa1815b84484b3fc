"""Benchmark of GRPO training (examples/grpo): seconds per step with the mesh reward vs the same reward in-process,
in one run, and a 30-step CPU reward curve (PNG + table) that shows whether the reward rises.

Both reward paths use the same models (SmolLM2 detector in float32, MiniLM) and the same `combine` definition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "grpo"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(EXAMPLE))

import train as grpo  # noqa: E402  (examples/grpo/train.py)
from _mesh import running_mesh  # noqa: E402

from crucible.clients.mesh import Mesh  # noqa: E402
from crucible.clients.reward import (  # noqa: E402
    COMPONENTS,
    RewardBreakdown,
    TRLReward,
    clean_text,
    combine,
    detector_score,
    embedding_similarity,
    group_evasion,
    mean_components,
)
from crucible.clients.tables import format_table  # noqa: E402
from crucible.detector.criterion import reference_criterion  # noqa: E402
from crucible.detector.reliability import (  # noqa: E402
    DEFAULT_MAX_INVISIBLE_FRACTION,
    DEFAULT_MIN_RELIABLE_TOKENS,
    assess,
)
from crucible.models import embed, load_causal_lm, load_embedding_model  # noqa: E402


class InProcessReward:
    """The composite reward computed in this process (no services): detector pass, embeddings, `combine`.

    A text the detector service would withhold (fewer scored tokens than its `min_reliable_tokens`, or too many
    invisible characters: `crucible.detector.reliability.assess`, the service's own rule) gets the same treatment as
    in `CompositeReward.score`: the configured neutral evasion, and no place in its group's normalisation. The
    defaults are the service's defaults; pass the detector's settings when it runs with others.
    """

    __name__ = "in_process_composite_reward"

    def __init__(
        self,
        config: Any,
        *,
        lm: Any = None,
        emb: Any = None,
        min_reliable_tokens: int = DEFAULT_MIN_RELIABLE_TOKENS,
        max_invisible_fraction: float = DEFAULT_MAX_INVISIBLE_FRACTION,
        max_tokens: int = 512,
    ) -> None:
        self.config = config
        self.lm = lm if lm is not None else load_causal_lm("smollm2-135m-instruct", device="cpu", dtype="float32", prepare=True)
        self.emb = emb if emb is not None else load_embedding_model("minilm-l6-v2", device="cpu")
        self.min_reliable_tokens = min_reliable_tokens
        self.max_invisible_fraction = max_invisible_fraction
        self.max_tokens = max_tokens

    def signal(self, original: str, text: str) -> tuple[float | None, float | None, float, str]:
        """(criterion, perplexity, similarity, unreliable reason) of one rewrite, as the detector and proposer give them."""
        # Like the detector service: add_special_tokens (the tokenizer's default), cut at max_tokens, score n - 1 tokens.
        ids = self.lm.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.max_tokens)["input_ids"]
        reason = assess(
            text,
            max(0, ids.shape[1] - 1),
            min_tokens=self.min_reliable_tokens,
            max_invisible_fraction=self.max_invisible_fraction,
        ).reason
        crit: float | None = None
        ppl: float | None = None
        if ids.shape[1] >= 2:
            logits = self.lm.model(ids).logits[0, :-1]
            labels = ids[0, 1:]
            crit = reference_criterion(logits, logits, labels)
            ppl = math.exp(torch.nn.functional.cross_entropy(logits.float(), labels).item())
        vecs = embed(self.emb, [original, text])
        return crit, ppl, embedding_similarity(vecs[0].tolist(), vecs[1].tolist()), reason

    def breakdowns(self, originals: list[str], completions: list[Any]) -> list[RewardBreakdown]:
        """One breakdown per (original, completion), by CompositeReward.score's rules with in-process signals."""
        texts = [clean_text(c[-1]["content"] if isinstance(c, list) else c) for c in completions]
        signals: dict[int, tuple[float | None, float | None, float, str]] = {}
        with torch.inference_mode():
            for i, (o, text) in enumerate(zip(originals, texts, strict=True)):
                if text.strip():
                    signals[i] = self.signal(o, text)
        # The same group normalisation as CompositeReward.score: rewrites of one original compete among themselves;
        # a withheld detection is None there (it keeps its configured evasion) and does not move the others'.
        evasion: dict[int, float | None] = {}
        if self.config.detector_normalization == "group":
            groups: dict[str, list[int]] = {}
            for i in signals:
                groups.setdefault(originals[i], []).append(i)
            for members in groups.values():
                scores = [None if signals[i][3] else detector_score(signals[i][0], None, self.config) for i in members]
                evasion.update(zip(members, group_evasion(scores, self.config), strict=True))
        out = []
        for i, (o, text) in enumerate(zip(originals, texts, strict=True)):
            if i not in signals:
                out.append(combine(o, text, None, None, None, 0.0, self.config))
                continue
            crit, ppl, sim, reason = signals[i]
            out.append(combine(o, text, crit, None, ppl, sim, self.config, unreliable_reason=reason, evasion=evasion.get(i)))
        return out

    def __call__(self, prompts: list[Any], completions: list[Any], original: list[str], **kwargs: Any) -> list[float]:
        rewards = self.breakdowns(original, completions)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for name, value in mean_components(rewards, self.config).items():
                log_metric(f"reward_{name}", value)
        return [r.total for r in rewards]


class Timed:
    """Wraps a reward function (sync or async) and adds up the seconds spent in it."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.__name__ = func.__name__
        self.seconds = 0.0
        if asyncio.iscoroutinefunction(func.__call__):  # the instance's __call__ (a TRLReward is async-callable)

            async def call(*a: Any, **k: Any) -> list[float]:
                t = time.perf_counter()
                try:
                    return await self.func(*a, **k)
                finally:
                    self.seconds += time.perf_counter() - t
        else:

            def call(*a: Any, **k: Any) -> list[float]:  # type: ignore[misc]
                t = time.perf_counter()
                try:
                    return self.func(*a, **k)
                finally:
                    self.seconds += time.perf_counter() - t

        self.call = call


def step_times(reward_func: Any, args: argparse.Namespace, out: Path) -> tuple[list[float], float]:
    """Train `args.steps` GRPO steps with `reward_func`; per-step wall seconds and total seconds inside the reward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from crucible.models import resolve_model

    torch.manual_seed(0)
    path = resolve_model("smollm2-135m-instruct", prepare=True).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    dataset = grpo.build_dataset(grpo.BUILTIN_TEXTS, tokenizer, 256)
    timed = Timed(reward_func)
    call = timed.call
    call.__name__ = reward_func.__name__
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t)

    config = GRPOConfig(
        output_dir=str(out),
        max_steps=args.steps,
        per_device_train_batch_size=args.group,
        num_generations=args.group,
        max_completion_length=args.completion_tokens,
        learning_rate=1e-5,
        beta=0.04,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[cast(Any, call)],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    return times, timed.seconds


async def evaluate(model_dir: str, mesh_cfg: Any, cfg: Any, samples: int, tokens: int) -> tuple[float, float]:
    """Mean (and std over texts) composite reward of `model_dir`'s rewrites of every built-in text, `samples` each, seed 0.

    The per-step curve mixes prompts (one per step); this scores base and trained policy on the same prompts.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crucible.clients.reward import CompositeReward

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    originals: list[str] = []
    texts: list[str] = []
    for text in grpo.BUILTIN_TEXTS:
        prompt = [{"role": "user", "content": grpo.PROMPT_TEMPLATE.format(text=text)}]
        ids: Any = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = await asyncio.to_thread(
                model.generate,
                **ids,
                do_sample=True,
                max_new_tokens=tokens,
                num_return_sequences=samples,
                pad_token_id=tokenizer.eos_token_id,
            )
        texts += tokenizer.batch_decode(out[:, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        originals += [text] * samples
    async with Mesh(mesh_cfg) as mesh:
        rewards = await CompositeReward(mesh, cfg).score(originals, texts)
    per_text = [sum(r.total for r in rewards[i : i + samples]) / samples for i in range(0, len(rewards), samples)]
    mean = sum(per_text) / len(per_text)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in per_text) / len(per_text))


def read_curve(log: Path) -> list[dict[str, float]]:
    rows = []
    for line in log.read_text().splitlines():
        if line.startswith('{"crucible_progress"'):
            rows.append(json.loads(line)["crucible_progress"])
    return rows


def write_curve(rows: list[dict[str, float]], png: Path) -> str:
    """The plot (reward mean ± std, a 5-step moving average, and each component) and a markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    mean = [r["reward_mean"] for r in rows]
    std = [r.get("reward_std", 0.0) for r in rows]
    smooth = [sum(mean[max(0, i - 4) : i + 1]) / len(mean[max(0, i - 4) : i + 1]) for i in range(len(mean))]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    a.plot(steps, mean, "o-", label="reward mean (group of completions)")
    a.fill_between(
        steps,
        [m - s for m, s in zip(mean, std, strict=True)],
        [m + s for m, s in zip(mean, std, strict=True)],
        alpha=0.2,
        label="± std",
    )
    a.plot(steps, smooth, "k--", label="5-step moving average")
    a.set_xlabel("step")
    a.set_ylabel("composite reward")
    a.legend()
    a.set_title("GRPO on CPU: SmolLM2-135M paraphraser, mesh reward")
    for name in COMPONENTS:
        key = f"reward_{name}"
        if any(key in r for r in rows):
            b.plot(steps, [r.get(key, float("nan")) for r in rows], label=name)
    b.set_xlabel("step")
    b.set_ylabel("weighted contribution")
    b.legend(fontsize=8)
    b.set_title("reward components")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    header = "| step | reward mean | std | " + " | ".join(COMPONENTS) + " | kl |"
    lines = [header, "|" + "---|" * (len(COMPONENTS) + 4)]
    for r in rows:
        cells = [f"{int(r['step'])}", f"{r['reward_mean']:+.3f}", f"{r.get('reward_std', float('nan')):.3f}"]
        cells += [f"{r.get(f'reward_{n}', float('nan')):+.3f}" for n in COMPONENTS]
        cells.append(f"{r.get('kl', float('nan')):.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _trend(rows: list[dict[str, float]]) -> str:
    n = len(rows)
    k = max(1, n // 3)
    first = sum(r["reward_mean"] for r in rows[:k]) / k
    last = sum(r["reward_mean"] for r in rows[-k:]) / k
    xs = [r["step"] for r in rows]
    ys = [r["reward_mean"] for r in rows]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / max(1e-12, sum((x - mx) ** 2 for x in xs))
    return (
        f"first {k} steps mean {first:+.3f}, last {k} steps mean {last:+.3f}; least-squares slope "
        f"{slope:+.4f} per step over {n} steps"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--steps", type=int, default=3, help="GRPO steps per reward path (the first is a warm-up; 0: skip the comparison)"
    )
    parser.add_argument("--group", type=int, default=4, help="completions per step (one prompt, one group)")
    parser.add_argument("--completion-tokens", type=int, default=16)
    parser.add_argument("--curve-steps", type=int, default=30, help="steps of the reward-curve run (0: skip)")
    parser.add_argument("--curve-log", default="", help="plot this train.py log instead of running the curve")
    parser.add_argument(
        "--eval-model",
        default="",
        help="a trained model folder (train.py's final/): score it and the base model on every built-in "
        "text, --eval-samples rewrites each, same seed",
    )
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--out-dir", default=str(EXAMPLE), help="where reward_curve.png/.md/.log go")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out_dir)
    cfg = grpo.reward_config(grpo.parse_args([]))
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"crucible-bench-grpo-{os.getpid()}"

    log = Path(args.curve_log) if args.curve_log else out / "reward_curve.log"
    mesh_times: list[float] = []
    evals: list[tuple[str, str, str]] = []
    async with running_mesh(["detector", "proposer"], extra_args={"detector": ["--dtype", "float32"]}) as base:
        if args.steps > 0:
            mesh_cfg = Mesh.local(base).config
            mesh_times, mesh_reward_s = await asyncio.to_thread(step_times, TRLReward(cfg, mesh_cfg), args, work / "mesh")
            local_times, local_reward_s = await asyncio.to_thread(step_times, InProcessReward(cfg), args, work / "local")
        if args.eval_model:
            from crucible.models import resolve_model

            mesh_cfg = Mesh.local(base).config
            base_model = str(resolve_model("smollm2-135m-instruct", prepare=True).path)
            for name, path in (("base SmolLM2-135M-Instruct", base_model), ("after GRPO", args.eval_model)):
                m, sd = await evaluate(path, mesh_cfg, cfg, args.eval_samples, args.completion_tokens)
                evals.append((name, f"{m:+.3f}", f"{sd:.3f}"))
        if not args.curve_log and args.curve_steps > 0:
            env = {
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1",
                "GRPO_MESH": f"detector=127.0.0.1:{base},proposer=127.0.0.1:{base + 1}",
            }
            cmd = [
                sys.executable,
                str(EXAMPLE / "train.py"),
                "--max-steps",
                str(args.curve_steps),
                "--num-generations",
                "4",
                "--prompts-per-step",
                "1",
                "--max-completion-length",
                str(args.completion_tokens),
                "--lr",
                "2e-5",
                "--save-steps",
                "10",
                "--output-dir",
                str(work / "curve"),
                "--threads",
                "1",
                "--seed",
                "0",
            ]
            with log.open("w") as f:
                subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=True)

    def per_step(times: list[float]) -> float:
        measured = times[1:] or times  # the first step pays for lazy set-up (channels, kernels)
        return sum(measured) / len(measured)

    steps = len(mesh_times)
    if steps:
        print(
            f"GRPO step, SmolLM2-135M policy on CPU, 1 prompt x {args.group} completions x "
            f"{args.completion_tokens} tokens, {steps} steps per path (first excluded from s/step)"
        )
        print(
            format_table(
                ("reward path", "s/step", "reward s (all steps)", "reward share"),
                [
                    (
                        "mesh (TRLReward over gRPC, services batch)",
                        f"{per_step(mesh_times):.2f}",
                        f"{mesh_reward_s:.2f}",
                        f"{mesh_reward_s / sum(mesh_times):.0%}",
                    ),
                    (
                        "in-process (same models, same combine)",
                        f"{per_step(local_times):.2f}",
                        f"{local_reward_s:.2f}",
                        f"{local_reward_s / sum(local_times):.0%}",
                    ),
                ],
            )
        )
    if evals:
        print(
            f"\nheld-in evaluation: mean composite reward over the {len(grpo.BUILTIN_TEXTS)} built-in texts, "
            f"{args.eval_samples} sampled rewrites each (std across texts)"
        )
        print(format_table(("policy", "mean reward", "std"), evals))
    if log.is_file():
        rows = read_curve(log)
        if rows:
            table = write_curve(rows, out / "reward_curve.png")
            (out / "reward_curve.md").write_text(table + "\n\n" + _trend(rows) + "\n")
            print(f"\nreward curve ({log}): {_trend(rows)}\n{table}\nplot: {out / 'reward_curve.png'}")


if __name__ == "__main__":
    asyncio.run(main())
