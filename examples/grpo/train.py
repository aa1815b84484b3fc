"""GRPO paraphraser: TRL's GRPOTrainer trains a small causal LM to rewrite texts, rewarded by the mesh's CompositeReward.

Runs on CPU for a few steps or on GPUs (bf16, TF32, DDP via `accelerate launch`/`torchrun`); prints Crucible progress
lines, checkpoints every N steps and resumes from the last complete checkpoint. See README.md here.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

# One prompt and one text cut for training and for the evaluation of what was trained.
from crucible.clients.evade_eval import PROMPT_TEMPLATE, leading_sentences

logger = logging.getLogger("grpo")

#: Built-in texts to paraphrase when no --data is given (short, so a CPU step stays short).
BUILTIN_TEXTS = [
    "The city council voted on Tuesday to expand the bike lane network across the downtown area next spring.",
    "Regular exercise improves sleep quality, lowers stress and helps people keep a healthy weight.",
    "The museum will stay open late on Fridays so that visitors who work during the day can see the new exhibition.",
    "Heavy rain flooded several roads overnight, and the police asked drivers to avoid the river valley.",
    "The company said its profits rose sharply last year because demand for its cloud services kept growing.",
    "Scientists found that the bees in the study visited fewer flowers when the air was polluted.",
    "The library is lending laptops to students who do not have a computer at home.",
    "After months of delays, the new bridge finally opened to traffic on Monday morning.",
    "Local farmers expect a smaller harvest this year because the summer was unusually dry.",
    "The school added a second language class after many parents asked for more choice.",
    "Doctors recommend drinking water regularly during hot weather, even when you do not feel thirsty.",
    "The team won the final after scoring twice in the last ten minutes of the match.",
    "Train tickets will cost a little more from January, the rail operator announced on Wednesday.",
    "A small bakery in the old town has become famous for its bread made with local flour.",
    "The park will plant two hundred new trees to replace the ones lost in last winter's storms.",
    "Researchers say that reading to young children every day helps them learn new words faster.",
]
#: Bounds on inputs, checked before any tokenisation or model work.
MAX_TEXT_CHARS = 4000
MAX_TEXTS = 100_000
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _tristate(value: str) -> str:
    value = value.lower()
    if value not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError("use auto, on or off")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="policy model: a crucible packaged alias (crucible.models), a local HF folder or a cached hub id",
    )
    p.add_argument(
        "--data",
        default="",
        help=".txt (one text a line), .jsonl ({'original'|'text': ...}) or a detect "
        "JSON ({'sampled': [...]}); several files comma-separated; empty: the built-in texts",
    )
    p.add_argument(
        "--detect-half",
        choices=("all", "first", "second"),
        default="all",
        help="detect JSON: use the first or second half of its texts by pair index (train on one, evaluate on the other)",
    )
    p.add_argument(
        "--max-original-words",
        type=int,
        default=40,
        help="detect JSON texts: keep the leading whole sentences up to this many words",
    )
    p.add_argument(
        "--output-dir",
        default=os.environ.get("CRUCIBLE_CHECKPOINT_DIR", "checkpoints"),
        help="checkpoints (checkpoint-N folders); the scheduler sets CRUCIBLE_CHECKPOINT_DIR",
    )
    p.add_argument("--max-steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--num-generations", type=int, default=4, help="GRPO group size (completions per prompt)")
    p.add_argument("--prompts-per-step", type=int, default=2, help="prompts per device per step")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (AdamW)")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient against the reference model (0: no reference)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the group")
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=256,
        help="refuse prompts longer than this (after the chat template) instead of cutting them",
    )
    p.add_argument("--max-completion-length", type=int, default=64, help="tokens per completion")
    p.add_argument("--save-steps", type=int, default=10, help="checkpoint every N steps")
    p.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept")
    p.add_argument(
        "--resume",
        default="auto",
        help="auto: from the last complete checkpoint in --output-dir when there is one; never; or a folder",
    )
    p.add_argument("--bf16", type=_tristate, default="auto", help="bf16 autocast (auto: on CUDA GPUs that support it)")
    p.add_argument("--tf32", type=_tristate, default="auto", help="TF32 matmuls (auto: on CUDA capability >= 8.0)")
    p.add_argument("--gradient-checkpointing", type=_tristate, default="auto", help="auto: on CUDA, off on CPU")
    p.add_argument(
        "--compile",
        type=_tristate,
        default="auto",
        help="torch.compile the policy (auto: off; generation's changing shapes recompile on short runs)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=1, help="progress line every N steps")
    p.add_argument(
        "--mesh",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT",
        help="address of a mesh service (detector, proposer, scorer; repeatable); default: $GRPO_MESH "
        "(comma-separated, for scheduler jobs, whose CRUCIBLE_* env names are reserved), then "
        "CRUCIBLE_<SERVICE>_ADDRESS, then the `crucible up` ports",
    )
    p.add_argument(
        "--detector-signal",
        choices=("probability", "criterion"),
        default="criterion",
        help="evasion from calibrated P(machine) or the raw criterion (SmolLM2 pair is uncalibrated)",
    )
    p.add_argument(
        "--perplexity-window",
        default="8,40,250",
        help="fluency: min,target,max perplexity (a 135M scorer puts fluent English at ~20-150)",
    )
    p.add_argument(
        "--detector-normalization",
        choices=("group", "none"),
        default="group",
        help="group: evasion from the detector score's z-score inside each GRPO group; none: the absolute signal",
    )
    p.add_argument(
        "--similarity-gate",
        default="0.7,0.85",
        help="low,high: detector and fluency terms scale from 0 at similarity low to full at high (0,0: no gate)",
    )
    p.add_argument(
        "--lora",
        action="store_true",
        help="train LoRA adapters (peft) instead of the full weights; saves the adapter (adapter_config.json)",
    )
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (scale = alpha / r)")
    p.add_argument(
        "--lora-targets",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        help="comma-separated module names that get adapters",
    )
    p.add_argument(
        "--report-to",
        choices=("tensorboard", "wandb", "none"),
        default="tensorboard",
        help="training curves: TensorBoard event files under OUTPUT_DIR/runs (default), Weights & Biases "
        "(needs `pip install wandb` and a login), or none",
    )
    p.add_argument(
        "--reward-weights",
        default="",
        help="component weights, e.g. 'detector=1,similarity=1,fluency=0.5,repetition=1,language=0.5,length=0.5'",
    )
    args = p.parse_args(argv)
    for name in (
        "max_steps",
        "num_generations",
        "prompts_per_step",
        "grad_accum",
        "max_completion_length",
        "max_prompt_tokens",
        "save_steps",
        "save_total_limit",
        "log_every",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_generations < 2:
        p.error("--num-generations must be >= 2 (a group of one has no advantage)")
    if args.lora_r < 1 or args.lora_alpha < 1:
        p.error("--lora-r and --lora-alpha must be >= 1")
    if args.beta < 0 or args.lr <= 0 or args.temperature <= 0:
        p.error("--beta must be >= 0, --lr and --temperature > 0")
    return args


# ----------------------------------------------------------------------------------------------- data


def load_texts(path: str, max_original_words: int, detect_half: str = "all") -> list[str]:
    """Texts to paraphrase; every input is bounded (file size, count, characters) before any model work."""
    if not path:
        return list(BUILTIN_TEXTS)
    if "," in path:
        texts = [t for part in path.split(",") if part.strip() for t in load_texts(part.strip(), max_original_words, detect_half)]
        if len(texts) > MAX_TEXTS:
            raise SystemExit(f"--data: {len(texts)} texts, at most {MAX_TEXTS}")
        return texts
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--data {path}: no such file")
    if file.stat().st_size > 512 * 1024 * 1024:
        raise SystemExit(f"--data {path}: over 512 MiB")
    raw = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        body = json.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("sampled"), list):
            raise SystemExit(f"--data {path}: expected a JSON object with a 'sampled' list")
        sampled = list(body["sampled"])
        half = len(sampled) // 2
        sampled = sampled[:half] if detect_half == "first" else sampled[half:] if detect_half == "second" else sampled
        texts = [leading_sentences(str(t), max_original_words) for t in sampled]
    elif file.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                text = row.get("original", row.get("text")) if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise SystemExit(f"--data {path}:{n}: needs an 'original' or 'text' string")
                texts.append(text)
    else:
        texts = [line for line in raw.splitlines() if line.strip()]
    texts = [" ".join(t.split()) for t in texts if t.strip()]
    if not texts:
        raise SystemExit(f"--data {path}: no texts")
    if len(texts) > MAX_TEXTS:
        raise SystemExit(f"--data {path}: {len(texts)} texts, at most {MAX_TEXTS}")
    long = [i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS]
    if long:
        raise SystemExit(f"--data {path}: {len(long)} texts over {MAX_TEXT_CHARS} characters (first: #{long[0]})")
    return texts


def build_dataset(texts: list[str], tokenizer: Any, max_prompt_tokens: int) -> Any:
    """Conversational prompts plus the 'original' column TRLReward reads; over-long prompts are refused, not cut."""
    from datasets import Dataset

    rows = []
    for i, text in enumerate(texts):
        prompt = [{"role": "user", "content": PROMPT_TEMPLATE.format(text=text)}]
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        n = len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        if n > max_prompt_tokens:
            raise SystemExit(f"text #{i} makes a {n}-token prompt, over --max-prompt-tokens {max_prompt_tokens}")
        rows.append({"prompt": prompt, "original": text})
    return Dataset.from_list(rows)


# ----------------------------------------------------------------------------------------------- device


def device_settings(args: argparse.Namespace) -> dict[str, bool]:
    """Resolve auto/on/off per device; GPU-only settings are refused (not ignored) without a suitable GPU."""
    import torch

    cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if cuda else (0, 0)
    bf16_ok = cuda and torch.cuda.is_bf16_supported()

    def pick(value: str, auto: bool, possible: bool, what: str) -> bool:
        if value == "on" and not possible:
            raise SystemExit(f"{what} needs a CUDA GPU that supports it")
        return auto if value == "auto" else value == "on"

    return {
        "bf16": pick(args.bf16, bf16_ok, bf16_ok or not cuda, "--bf16 on"),  # CPU autocast bf16 is allowed when asked
        "tf32": pick(args.tf32, capability >= (8, 0), capability >= (8, 0), "--tf32 on"),
        "gradient_checkpointing": pick(args.gradient_checkpointing, cuda, True, ""),
        "compile": pick(args.compile, False, True, ""),
        "cuda": cuda,
    }


# ----------------------------------------------------------------------------------------------- checkpoints


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The highest checkpoint-N whose trainer_state.json (written last by the Trainer) parses and says step N."""
    if not output_dir.is_dir():
        return None
    found = []
    for child in output_dir.iterdir():
        m = CHECKPOINT_RE.match(child.name)
        if m and child.is_dir():
            found.append((int(m[1]), child))
    for step, folder in sorted(found, reverse=True):
        try:
            state = json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            logger.warning("skipping incomplete checkpoint %s", folder)
            continue
        weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
        if state.get("global_step") == step and weights:
            return folder
        logger.warning("skipping incomplete checkpoint %s", folder)
    return None


def resume_point(args: argparse.Namespace) -> Path | None:
    if args.resume == "never":
        return None
    if args.resume != "auto":
        folder = Path(args.resume)
        if not (folder / "trainer_state.json").is_file():
            raise SystemExit(f"--resume {args.resume}: not a checkpoint folder (no trainer_state.json)")
        return folder
    return last_complete_checkpoint(Path(args.output_dir))


# ----------------------------------------------------------------------------------------------- progress


def progress_line(step: int, total: int, **metrics: float) -> str:
    """Crucible's JSON progress line (services/crucible/scheduler/domain/progress.py parses it into Job.progress)."""
    body: dict[str, float | int] = {"step": int(step), "total_steps": int(total)}
    body.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)})
    return json.dumps({"crucible_progress": body}, separators=(",", ":"))


#: TRL log key -> progress metric name (reward components come as reward_<name> from TRLReward's log_metric).
_LOG_KEYS = {
    "loss": "loss",
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "kl": "kl",
    "completions/mean_length": "completion_length",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
}


def make_progress_callback() -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Prints one progress line per logging step, on the main process only."""

        def __init__(self) -> None:
            self._last: tuple[float, int] | None = None  # (time, step) of the previous line; set at train begin

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._last = (time.monotonic(), state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs or "reward" not in logs:
                return
            metrics = {name: logs[key] for key, name in _LOG_KEYS.items() if key in logs}
            metrics.update({k: v for k, v in logs.items() if k.startswith("reward_") and k != "reward_std"})
            now = time.monotonic()
            if self._last is not None and state.global_step > self._last[1]:
                metrics["seconds_per_step"] = (now - self._last[0]) / (state.global_step - self._last[1])
            self._last = (now, state.global_step)
            print(progress_line(state.global_step, state.max_steps, **metrics), flush=True)
            print(
                f"step {state.global_step}/{state.max_steps}: loss {metrics.get('loss', float('nan')):.4f}, "
                f"reward {metrics.get('reward_mean', float('nan')):+.3f} ± {metrics.get('reward_std', float('nan')):.3f}, "
                f"kl {metrics.get('kl', float('nan')):.4f}",
                flush=True,
            )

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                print(f"saved checkpoint {args.output_dir}/checkpoint-{state.global_step}", flush=True)

    return ProgressCallback()


# ----------------------------------------------------------------------------------------------- main


def reward_config(args: argparse.Namespace) -> Any:
    from crucible.clients.reward import RewardConfig

    try:
        low, target, high = (float(x) for x in args.perplexity_window.split(","))
    except ValueError:
        raise SystemExit("--perplexity-window needs three numbers: min,target,max") from None
    weights: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in args.reward_weights.split(","))):
        name, _, value = item.partition("=")
        if name not in ("detector", "similarity", "fluency", "repetition", "language", "length", "copy"):
            raise SystemExit(f"--reward-weights: unknown component {name!r}")
        weights[f"w_{name}"] = float(value)
    try:
        gate_low, gate_high = (float(x) for x in args.similarity_gate.split(","))
    except ValueError:
        raise SystemExit("--similarity-gate needs two numbers: low,high") from None
    try:
        return RewardConfig(
            detector_signal=args.detector_signal,
            detector_normalization=args.detector_normalization,
            similarity_gate_low=gate_low,
            similarity_gate_high=gate_high,
            perplexity_min=low,
            perplexity_target=target,
            perplexity_max=high,
            perplexity_plateau=min(2.5, math.sqrt(target / low) * 0.99, math.sqrt(high / target) * 0.99),
            **weights,
        )
    except ValueError as e:
        raise SystemExit(f"reward settings: {e}") from None


def lora_config(args: argparse.Namespace) -> Any:
    """peft's LoraConfig for --lora (None without it); TRL wraps the policy and uses it, adapters off, as reference."""
    if not args.lora:
        return None
    try:
        from peft import LoraConfig
    except ImportError:
        raise SystemExit("--lora needs peft: pip install peft (it is in the [train] extra)") from None
    targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    if not targets:
        raise SystemExit("--lora-targets: no module names")
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")


def mesh_config(args: argparse.Namespace, env: dict[str, str] | None = None) -> Any:
    """The client config: CRUCIBLE_* env (Mesh.from_env), with --mesh / $GRPO_MESH addresses on top."""
    from crucible.clients.mesh import MeshConfig

    env = dict(os.environ if env is None else env)
    items = args.mesh or [x for x in env.get("GRPO_MESH", "").split(",") if x.strip()]
    for item in items:
        name, _, address = item.strip().partition("=")
        if name not in ("detector", "proposer", "scorer") or not address:
            raise SystemExit(f"--mesh {item!r}: expected detector|proposer|scorer=HOST:PORT")
        env[f"CRUCIBLE_{name.upper()}_ADDRESS"] = address
    return MeshConfig.from_env(env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from crucible.clients.reward import TRLReward
    from crucible.models import enable_tf32, resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = device_settings(args)
    if settings["tf32"]:
        enable_tf32()
    rcfg = reward_config(args)
    texts = load_texts(args.data, args.max_original_words, args.detect_half)
    resolved = resolve_model(args.model, prepare=True)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    dataset = build_dataset(texts, tokenizer, args.max_prompt_tokens)
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    mesh = mesh_config(args)
    peft_config = lora_config(args)

    batch = args.prompts_per_step * args.num_generations
    config = GRPOConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=args.grad_accum,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        learning_rate=args.lr,
        beta=args.beta,
        bf16=settings["bf16"],
        tf32=settings["tf32"] or None,
        gradient_checkpointing=settings["gradient_checkpointing"],
        torch_compile=settings["compile"],
        use_cpu=not settings["cuda"],
        logging_steps=args.log_every,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        report_to=[] if args.report_to == "none" else [args.report_to],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[TRLReward(rcfg, mesh)],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[make_progress_callback()],
        peft_config=peft_config,
    )
    start = resume_point(args)
    if trainer.is_world_process_zero():
        addresses = {
            name: ",".join(c.addresses) for name, c in mesh.services.items() if name in ("detector", "proposer", "scorer")
        }
        print(
            f"model {resolved.name} ({resolved.revision}); {len(texts)} texts; group {args.num_generations}; "
            f"settings {settings}; mesh {addresses}",
            flush=True,
        )
        if start is not None:
            print(f"resuming from {start}", flush=True)
    if start is not None and json.loads((start / "trainer_state.json").read_text()).get("global_step", 0) >= args.max_steps:
        print(f"nothing to do: {start} is at or past --max-steps {args.max_steps}", flush=True)
        return 0
    trainer.train(resume_from_checkpoint=str(start) if start is not None else None)
    trainer.save_model(str(Path(args.output_dir) / "final"))
    if trainer.is_world_process_zero():
        print(f"saved final model {args.output_dir}/final", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
