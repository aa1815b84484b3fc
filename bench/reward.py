"""Benchmark of the reward loop: samples/s for 8 prompts x 8 completions over the mesh, beside the same reward computed
in-process in batches (what a user would write) and a naive in-process loop, one sample at a time.

All three run the SDK's `CompositeReward` (the one reward definition: group normalisation, gates, hygiene, `combine`);
only where the detector scores and the embeddings come from differs. Same models and dtype on every path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mesh import running_mesh

from crucible.clients.mesh import Mesh
from crucible.clients.reward import CompositeReward, RewardConfig
from crucible.clients.tables import format_table
from crucible.demo import REWARD_SAMPLES
from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector, score_many
from crucible.detector.criterion import reference_criterion
from crucible.detector.reliability import assess
from crucible.models import embed, load_embedding_model

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


# ---- in-process stand-ins for the two services the reward calls (the same models, no gRPC) -------------------------


@dataclass(frozen=True)
class _Detection:
    """The fields of the SDK's Detection that the reward reads."""

    criterion: float
    perplexity: float
    probability: float | None  # not used with detector_signal="criterion"
    reliable: bool
    unreliable_reason: str


@dataclass(frozen=True)
class _Detected:
    detections: list[_Detection]


class _LocalDetector:
    """Fast-DetectGPT scores in this process: `batched` = the service's own core (length-sorted batches, the
    compiled statistics kernel); else one forward pass per text and the per-sample reference formula."""

    def __init__(self, detector: Detector, batched: bool) -> None:
        self.detector = detector
        self.batched = batched

    def _reliability(self, text: str, tokens: int) -> tuple[bool, str]:
        s = self.detector.settings
        r = assess(text, max(0, tokens - 1), min_tokens=s.min_reliable_tokens, max_invisible_fraction=s.max_invisible_fraction)
        return r.reliable, r.reason

    async def detect(self, texts: Sequence[str], **_: Any) -> _Detected:
        out = []
        if self.batched:
            for text, raw in zip(texts, score_many(self.detector, texts), strict=True):
                out.append(_Detection(raw.criterion, raw.perplexity, None, *self._reliability(text, raw.token_count)))
            return _Detected(out)
        model, tokenizer = self.detector.scoring.model, self.detector.tokenizer
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt")["input_ids"][:, : self.detector.settings.max_tokens]
                logits = model(ids).logits[0, :-1]
                labels = ids[0, 1:]
                criterion = float(reference_criterion(logits, logits, labels))
                nll = torch.nn.functional.cross_entropy(logits.float(), labels).item()
                out.append(_Detection(criterion, math.exp(nll), None, *self._reliability(text, ids.shape[1])))
        return _Detected(out)


class _LocalProposer:
    """Sentence embeddings in this process: one batched call, or one text at a time."""

    def __init__(self, embedder: Any, batched: bool) -> None:
        self.embedder = embedder
        self.batched = batched

    async def embed(self, texts: Sequence[str], **_: Any) -> list[list[float]]:
        if self.batched:
            return embed(self.embedder, list(texts), batch_size=32).tolist()
        return [embed(self.embedder, [t])[0].tolist() for t in texts]


@dataclass
class _LocalMesh:
    detector: _LocalDetector
    proposer: _LocalProposer


async def _score_all(reward: CompositeReward, groups: list[tuple[str, list[str]]]) -> list[float]:
    """The whole batch in one `score` call (how a GRPO step scores its groups)."""
    originals = [o for o, completions in groups for _ in completions]
    texts = [c for _, completions in groups for c in completions]
    return [r.total for r in await reward.score(originals, texts)]


def in_process(groups: list[tuple[str, list[str]]], batched: bool, models: tuple[Any, Any]) -> tuple[float, list[float]]:
    detector, embedder = models
    local = _LocalMesh(_LocalDetector(detector, batched), _LocalProposer(embedder, batched))
    reward = CompositeReward(local, CONFIG)  # type: ignore[arg-type]  # duck-typed: detect() and embed() only
    asyncio.run(_score_all(reward, groups[:1]))  # warm (first-call allocations), as the mesh path warms its channels
    start = time.perf_counter()
    totals = asyncio.run(_score_all(reward, groups))
    return time.perf_counter() - start, totals


async def over_mesh(base: int, groups: list[tuple[str, list[str]]]) -> tuple[float, list[float]]:
    """The same batch through the SDK: one `score` call, whose detector and embedding calls go out concurrently."""
    # A long deadline: the detector's start-up throughput probe is its admission prior, and on a busy machine a
    # 30 s default would be refused at once (RESOURCE_EXHAUSTED) rather than measured.
    async with Mesh.local(base, timeout_s=600.0) as mesh:
        reward = CompositeReward(mesh, CONFIG)
        await _score_all(reward, groups[:1])  # warm the channels
        start = time.perf_counter()
        totals = await _score_all(reward, groups)
        seconds = time.perf_counter() - start
    return seconds, totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--words", type=int, default=100, help="clip texts to this many words")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16"),
        help="detector dtype on every path (bf16 needs a CPU with native bf16 to be fast)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="time each path this many times, keep the fastest")
    args = parser.parse_args()
    groups = _groups(args.prompts, args.completions, args.words)
    samples = args.prompts * args.completions
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    mesh_runs = []
    with_mesh = running_mesh(["detector", "proposer"], extra_args={"detector": ["--dtype", args.dtype]})

    async def mesh_path() -> None:
        async with with_mesh as base:
            for _ in range(args.repeat):
                mesh_runs.append(await over_mesh(base, groups))

    asyncio.run(mesh_path())
    print(f"mesh: {min(mesh_runs)[0]:.2f}s", flush=True)
    # The in-process models: the detector's own core at the service's settings (compiled kernel included), MiniLM at
    # the proposer's equivalence dtype (float32).
    detector = Detector.load(DetectorConfig(device="cpu", dtype=args.dtype))
    detector.warm_up()
    embedder = load_embedding_model("minilm-l6-v2", device="cpu", dtype="float32")
    runs: dict[str, list[tuple[float, list[float]]]] = {}
    for path, batched in (("batched", True), ("naive", False)):
        runs[path] = [in_process(groups, batched, (detector, embedder)) for _ in range(args.repeat)]
        print(f"in-process {path}: {min(runs[path])[0]:.2f}s", flush=True)
    mesh_s, mesh_totals = min(mesh_runs)
    batched_s, batched_totals = min(runs["batched"])
    naive_s, naive_totals = min(runs["naive"])
    agree = max(abs(a - b) for a, b in zip(mesh_totals, batched_totals, strict=True))
    agree_naive = max(abs(a - b) for a, b in zip(batched_totals, naive_totals, strict=True))
    print(
        f"reward loop, {args.prompts} prompts x {args.completions} completions (<= {args.words} words), {args.dtype} SmolLM2 "
        f"detector + MiniLM, {torch.get_num_threads()} torch threads in-process, kernel {detector.kernel.mode}; "
        f"load average {load_before} before, {' '.join(f'{x:.2f}' for x in os.getloadavg())} after"
    )
    print(f"max |reward difference|: mesh vs in-process batched {agree:.2e}, batched vs naive {agree_naive:.2e}")
    print(
        format_table(
            ("path", "seconds", "samples/s", "mesh / this"),
            [
                ("mesh end to end (SDK, one score call)", f"{mesh_s:.2f}", f"{samples / mesh_s:.2f}", "1.00x"),
                (
                    "in-process batched (same core, batched embeddings)",
                    f"{batched_s:.2f}",
                    f"{samples / batched_s:.2f}",
                    f"{batched_s / mesh_s:.2f}x",
                ),
                (
                    "in-process naive, one sample at a time",
                    f"{naive_s:.2f}",
                    f"{samples / naive_s:.2f}",
                    f"{naive_s / mesh_s:.2f}x",
                ),
            ],
        )
    )
    print("mesh / this = mesh samples/s divided by the path's: above 1.00x the mesh is faster")


if __name__ == "__main__":
    main()
