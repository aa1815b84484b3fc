"""A small character-level GPT trainer (ideas from nanoGPT, written here) that the scheduler runs as its example job.

Trains on CPU in minutes, prints nanoGPT-style lines plus Crucible JSON progress, checkpoints every N iterations and
resumes with --resume (or when the scheduler sets CRUCIBLE_RESUME=1 after a preemption). With CRUCIBLE_CHECKPOINT_URL
set (the scheduler's object store: file:// or s3://) checkpoints go there through crucible.clients.checkpoint, so a
relaunch on a fresh machine resumes from the newest complete one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

#: Where `--input builtin:tinyshakespeare` (the job file's `inputs:`) stages the text, relative to the working folder.
DEFAULT_DATA = Path("data") / "tinyshakespeare" / "input.txt"


# --- data ---------------------------------------------------------------------------------------------------------


def fallback_corpus(limit: int = 1_000_000) -> tuple[str, str]:
    """Text every machine with Python has: the standard library's own source files."""
    root = Path(os.__file__).parent
    parts, size = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)[:limit], f"python standard library sources under {root}"


def load_text(path: str) -> tuple[str, str]:
    """(text, description): the file when it exists, else the fallback corpus."""
    candidate = Path(path) if path else DEFAULT_DATA
    if candidate.is_file():
        return candidate.read_text(encoding="utf-8"), str(candidate)
    return fallback_corpus()


class CharData:
    """Character vocabulary and the train/val split as one long tensor of ids each."""

    def __init__(self, text: str, chars: list[str] | None = None) -> None:
        self.chars = chars or sorted(set(text))
        index = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([index.get(c, 0) for c in text], dtype=torch.long)
        cut = int(0.9 * len(ids))
        self.train, self.val = ids[:cut], ids[cut:]

    def batch(self, split: str, batch_size: int, block_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of `block_size` characters and their next-character targets."""
        data = self.train if split == "train" else self.val
        starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=gen)
        x = torch.stack([data[s : s + block_size] for s in starts])
        y = torch.stack([data[s + 1 : s + 1 + block_size] for s in starts])
        return x, y


# --- model --------------------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention then an MLP, each with a residual connection."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.norm1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.norm2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class CharGPT(nn.Module):
    """Token and position embeddings, `n_layer` blocks, a final norm and an output head tied to the token embedding."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        """Small normal weights and zero biases: logits start near uniform (loss ~ ln(vocab))."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def sample(self, idx: torch.Tensor, steps: int, gen: torch.Generator) -> torch.Tensor:
        """Append `steps` sampled characters to `idx`."""
        for _ in range(steps):
            logits, _ = self(idx[:, -self.block_size :])
            probs = F.softmax(logits[:, -1, :], dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=gen)], dim=1)
        return idx


# --- training -----------------------------------------------------------------------------------------------------


def progress(step: int, total: int, **metrics: float) -> None:
    """Crucible's JSON progress line (see services/crucible/scheduler/README.md)."""
    print(json.dumps({"crucible_progress": {"step": step, "total_steps": total, **metrics}}), flush=True)


@torch.no_grad()
def evaluate(model: CharGPT, data: CharData, args: argparse.Namespace, gen: torch.Generator) -> dict[str, float]:
    """Mean loss over `eval_iters` random batches of each split."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = [model(*data.batch(split, args.batch_size, model.block_size, gen))[1].item() for _ in range(args.eval_iters)]
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def save_checkpoint(
    path: Path,
    model: CharGPT,
    opt: torch.optim.Optimizer,
    model_args: dict,
    iter_num: int,
    best_val: float,
    chars: list[str],
    args: argparse.Namespace,
) -> None:
    """Write the checkpoint atomically (a crash never leaves a half-written ckpt.pt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "model_args": model_args,
            "iter_num": iter_num,
            "best_val_loss": best_val,
            "chars": chars,
            "config": vars(args),
        },
        tmp,
    )
    os.replace(tmp, path)


def store_url() -> str:
    """The object-store URL for checkpoints ($CRUCIBLE_CHECKPOINT_URL) when the checkpoint helper is importable."""
    url = os.environ.get("CRUCIBLE_CHECKPOINT_URL", "")
    if not url:
        return ""
    try:
        import crucible.clients.checkpoint  # noqa: F401 - only checks that the helper (and fsspec) are installed
    except ImportError:
        print("CRUCIBLE_CHECKPOINT_URL is set but crucible is not installed: checkpoints stay local", flush=True)
        return ""
    return url


def load_resume_state(ckpt_path: Path, url: str, wanted: bool) -> tuple[dict | None, str]:
    """(checkpoint dict, where it came from): the store's newest complete checkpoint, else the local file, else None."""
    if not wanted:
        return None, ""
    if url:
        from crucible.clients.checkpoint import load_latest

        found = load_latest(url=url)
        if found is not None:
            state, info = found
            return state, f"{url} (step {info.step})"
    if ckpt_path.exists():
        return torch.load(ckpt_path, map_location="cpu", weights_only=False), str(ckpt_path)
    return None, ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings (nanoGPT's names where they exist)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--data",
        default="",
        help=f"text file (default {DEFAULT_DATA}, where the builtin:tinyshakespeare input lands; Python's standard "
        "library sources when absent)",
    )
    p.add_argument("--out-dir", default=os.environ.get("CRUCIBLE_CHECKPOINT_DIR", "checkpoints"))
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--checkpoint-interval", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    p.add_argument("--sample-chars", type=int, default=200, help="characters to sample at the end; 0 for none")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/ckpt.pt (also when CRUCIBLE_RESUME=1)")
    p.add_argument(
        "--crash-at-iter",
        type=int,
        default=0,
        help="exit with status 75 when reaching this iteration on the job's first attempt (CRUCIBLE_ATTEMPT "
        "1 or unset): a stand-in for a lost machine, to show a relaunch resuming; 0 never",
    )
    args = p.parse_args(argv)
    for name in (
        "max_iters",
        "eval_interval",
        "eval_iters",
        "log_interval",
        "checkpoint_interval",
        "batch_size",
        "block_size",
        "n_layer",
        "n_head",
        "n_embd",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.n_embd % args.n_head:
        p.error("--n-embd must be divisible by --n-head")
    return args


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate and checkpoint; returns the process exit status."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    ckpt_path = Path(args.out_dir) / "ckpt.pt"
    url = store_url()
    # With a store, every start looks for a checkpoint: a relaunch after preemption is a fresh machine and process.
    wanted = bool(url) or args.resume or os.environ.get("CRUCIBLE_RESUME") == "1"
    text, source = load_text(args.data)
    ckpt, ckpt_source = load_resume_state(ckpt_path, url, wanted)
    data = CharData(text, ckpt["chars"] if ckpt else None)
    model_args = (
        ckpt["model_args"]
        if ckpt
        else dict(
            vocab_size=len(data.chars),
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            dropout=args.dropout,
        )
    )
    model = CharGPT(**model_args)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start, best_val = 0, math.inf
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start, best_val = ckpt["iter_num"] + 1, ckpt["best_val_loss"]
        gen.manual_seed(args.seed + start)
        print(f"resumed from step {ckpt['iter_num']}: {ckpt_source}, continuing at iter {start}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"data: {source} ({len(text):,} chars, vocabulary {len(data.chars)}); model: {params:,} parameters", flush=True)
    if start >= args.max_iters:
        print(f"nothing to do: checkpoint is at iter {start}, max iters {args.max_iters}", flush=True)
        return 0
    t0 = time.time()
    first_attempt = os.environ.get("CRUCIBLE_ATTEMPT", "1") == "1"
    for it in range(start, args.max_iters):
        if args.crash_at_iter and it == args.crash_at_iter and first_attempt:
            print(f"crashing on purpose at iter {it} (--crash-at-iter)", flush=True)
            return 75
        if it % args.eval_interval == 0 or it == args.max_iters - 1:
            losses = evaluate(model, data, args, gen)
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
            progress(it, args.max_iters, train_loss=losses["train"], val_loss=losses["val"])
            best_val = min(best_val, losses["val"])
        x, y = data.batch("train", args.batch_size, model_args["block_size"], gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % args.log_interval == 0:
            dt = (time.time() - t0) * 1000 / (1 if it == start else args.log_interval)
            t0 = time.time()
            print(f"iter {it}: loss {loss.item():.4f}, time {dt:.2f}ms", flush=True)
            progress(it, args.max_iters, loss=loss.item())
        if (it + 1) % args.checkpoint_interval == 0 or it == args.max_iters - 1:
            if url:
                from crucible.clients.checkpoint import save_checkpoint as store_checkpoint

                state = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "model_args": model_args,
                    "iter_num": it,
                    "best_val_loss": best_val,
                    "chars": data.chars,
                    "config": vars(args),
                }
                info = store_checkpoint(state, it, {"loss": loss.item()}, url=url)
                print(f"saved checkpoint {info.url} at iter {it}", flush=True)
            # Also next to the run (an artifact of the attempt, and a resume point without a store).
            save_checkpoint(ckpt_path, model, opt, model_args, it, best_val, data.chars, args)
            print(f"saved checkpoint {ckpt_path} at iter {it}", flush=True)
    if args.sample_chars:
        model.eval()
        out = model.sample(torch.zeros((1, 1), dtype=torch.long), args.sample_chars, gen)
        print("sample:", "".join(data.chars[i] for i in out[0].tolist()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
