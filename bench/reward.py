"""Benchmark of the reward loop: samples/s for 8 prompts x 8 completions end to end over the mesh, side by side with
a naive in-process sequential computation of the same reward (per-sample detector pass and per-text embeddings).

Both use the same models (SmolLM2 detector at the service's dtype, MiniLM) and the same `combine` reward definition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mesh import running_mesh

from crucible.clients.mesh import Mesh
from crucible.clients.reward import CompositeReward, RewardConfig, combine, embedding_similarity
from crucible.clients.tables import format_table
from crucible.demo import REWARD_SAMPLES
from crucible.detector.criterion import reference_criterion
from crucible.models import embed, load_causal_lm, load_embedding_model

CONFIG = RewardConfig(detector_signal="criterion", perplexity_target=40.0, perplexity_min=8.0, perplexity_max=250.0)


def _groups(prompts: int, completions: int, words: int) -> list[tuple[str, list[str]]]:
    """Originals and completions: human texts and machine texts from ../shared/data/detect, else the demo samples."""
    data = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "detect" / "xsum_gpt-4.json"
    clip = lambda t: " ".join(t.split()[:words])  # noqa: E731
    if data.exists():
        d = json.loads(data.read_text())
        human, machine = d["original"], d["sampled"]
        return [
            (clip(human[p]), [clip(machine[(p * completions + c) % len(machine)]) for c in range(completions)])
            for p in range(prompts)
        ]
    pool = [t for _, rewrites in REWARD_SAMPLES for t in rewrites if t]
    return [
        (clip(REWARD_SAMPLES[p % len(REWARD_SAMPLES)][0]), [clip(pool[(p + c) % len(pool)]) for c in range(completions)])
        for p in range(prompts)
    ]


def naive(groups: list[tuple[str, list[str]]], dtype: str) -> tuple[float, list[float]]:
    """One sample at a time: a detector forward pass, two embeddings, then combine."""
    lm = load_causal_lm("smollm2-135m-instruct", device="cpu", dtype=dtype)
    emb = load_embedding_model("minilm-l6-v2", device="cpu")
    totals: list[float] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for original, completions in groups:
            for completion in completions:
                ids = lm.tokenizer(completion, return_tensors="pt", truncation=True, max_length=512)["input_ids"]
                logits = lm.model(ids).logits[0, :-1]
                labels = ids[0, 1:]
                crit = reference_criterion(logits, logits, labels)
                nll = torch.nn.functional.cross_entropy(logits.float(), labels).item()
                sim = embedding_similarity(embed(emb, [original])[0].tolist(), embed(emb, [completion])[0].tolist())
                totals.append(combine(original, completion, crit, None, math.exp(nll), sim, CONFIG).total)
    return time.perf_counter() - start, totals


async def over_mesh(base: int, groups: list[tuple[str, list[str]]]) -> tuple[float, list[float]]:
    """Every group scored concurrently through the SDK (the services batch across groups)."""
    async with Mesh.local(base) as mesh:
        reward = CompositeReward(mesh, CONFIG)
        await reward.score_group(*groups[0])  # warm the channels
        start = time.perf_counter()
        results = await asyncio.gather(*(reward.score_group(o, c) for o, c in groups))
        seconds = time.perf_counter() - start
    return seconds, [r.total for g in results for r in g.rewards]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--words", type=int, default=100, help="clip texts to this many words")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16"),
        help="detector dtype on both paths (bf16 needs a CPU with native bf16 to be fast)",
    )
    args = parser.parse_args()
    groups = _groups(args.prompts, args.completions, args.words)
    samples = args.prompts * args.completions
    async with running_mesh(["detector", "proposer"], extra_args={"detector": ["--dtype", args.dtype]}) as base:
        mesh_s, mesh_totals = await over_mesh(base, groups)
    naive_s, naive_totals = naive(groups, args.dtype)
    agree = max(abs(a - b) for a, b in zip(mesh_totals, naive_totals, strict=True))
    print(
        f"reward loop, {args.prompts} prompts x {args.completions} completions (<= {args.words} words), {args.dtype} SmolLM2 "
        f"detector + MiniLM; max |reward difference| between the two paths: {agree:.2e}"
    )
    print(
        format_table(
            ("path", "seconds", "samples/s", "vs naive"),
            [
                ("naive in-process, one sample at a time", f"{naive_s:.2f}", f"{samples / naive_s:.2f}", "1.00x"),
                (
                    "mesh end to end (SDK, concurrent groups)",
                    f"{mesh_s:.2f}",
                    f"{samples / mesh_s:.2f}",
                    f"{naive_s / mesh_s:.2f}x",
                ),
            ],
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
