"""Benchmark of the detector on SmolLM2: texts/s of the per-text formula, the bare forward pass, the service and the core.

(a) per-text formula loop (the reference's way), (b) bare batched forward pass without criterion (the hardware limit),
(c) the service over gRPC with concurrent clients, (d) the in-process batched core; each at fp32 and bf16, one process.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import torch

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
from crucible.clients.tables import format_table
from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector
from crucible.detector.criterion import pad_batch, reference_criterion
from crucible.detector.server import create_server
from crucible.models import load_causal_lm
from crucible.runtime.config import load_config

SMOLLM2 = "smollm2-135m-instruct"

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "farmers",
    "watch",
    "rivers",
    "run",
    "past",
    "old",
    "wooden",
    "houses",
    "and",
    "children",
    "read",
    "stories",
    "about",
    "distant",
    "cities",
    "ships",
    "mountains",
    "and",
    "quiet",
    "winter",
    "evenings",
]


def make_texts(tokenizer, count: int, tokens: int, offset: int = 0) -> list[str]:
    """`count` distinct texts of about `tokens` tokens: data texts when ../shared/data exists, else generated prose."""
    sources: list[str] = []
    for name in ("writing_gpt-4.json", "writing_gpt-3.5-turbo.json"):
        path = DATA / "detect" / name
        if path.is_file():
            data = json.loads(path.read_text())
            sources += data["original"] + data["sampled"]
    out = []
    i = offset
    while len(out) < count:
        if i < len(sources):
            base = sources[i]
        else:
            g = torch.Generator().manual_seed(i)
            base = " ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (tokens * 2,), generator=g))
        i += 1
        ids = tokenizer(base)["input_ids"]
        if len(ids) < tokens:
            continue
        out.append(tokenizer.decode(ids[:tokens]))
    return out


def rate(n: int, seconds: float) -> float:
    return n / seconds


def bench_a(loaded, texts: list[str]) -> float:
    """Per-text loop: one forward pass per text and the reference formula on its full logits."""
    tok, model = loaded.tokenizer, loaded.model
    t0 = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids).logits[0, :-1]
            reference_criterion(logits, logits, ids[0, 1:])
    return rate(len(texts), time.perf_counter() - t0)


def bench_b(loaded, texts: list[str], batch: int) -> float:
    """Bare batched forward pass (full logits, no criterion), tokenising included."""
    tok, model = loaded.tokenizer, loaded.model
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            seqs = tok(texts[start : start + batch])["input_ids"]
            ids, mask = pad_batch(seqs, tok.pad_token_id)
            model(input_ids=ids, attention_mask=mask)
    return rate(len(texts), time.perf_counter() - t0)


def bench_d(detector: Detector, texts: list[str], batch: int) -> float:
    """The in-process batched core: checks, tokenising, criterion, Binoculars, perplexity."""
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch):
        detector.score(detector.prepare(texts[start : start + batch], classifier=False))
    return rate(len(texts), time.perf_counter() - t0)


async def bench_c(dtype: str, rounds: list[list[str]], clients: int, batch: int, kernel: str) -> float:
    """The service over gRPC: `clients` concurrent clients, each sending its share of a round in one call."""
    # stats_kernel=compile: the fused statistics kernel is compiled during warm-up, before the server reports SERVING
    # (the default, auto, compiles in the background after start; a benchmark must not time that switch).
    config = load_config(
        DetectorConfig,
        "detector",
        env={},
        port=0,
        metrics_enabled=False,
        dtype=dtype,
        device="cpu",
        model=SMOLLM2,  # the model (a), (b) and (d) run, alone (the service's default is the Gemma + SmolLM2 pair)
        likelihood_model="",
        cache_size=0,
        max_batch_size=batch,
        max_wait_ms=20.0,
        log_level="WARNING",
        log_format="text",
        stats_kernel=kernel,
    )
    server, _ = create_server(config)
    await server.start()
    await server.wait_ready(300)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)

            async def one_round(texts: list[str]) -> None:
                share = [texts[i::clients] for i in range(clients)]
                await asyncio.gather(*(stub.Detect(pb.DetectRequest(texts=s, skip_cache=True), timeout=600) for s in share if s))

            await one_round(rounds[0][:clients])  # warm-up (connection, first batch)
            t0 = time.perf_counter()
            for texts in rounds:
                await one_round(texts)
            return rate(sum(len(r) for r in rounds), time.perf_counter() - t0)
    finally:
        await server.stop(0)


def run_bench_c(dtype: str, rounds: list[list[str]], args: argparse.Namespace) -> float:
    """One measurement of the service path (a fresh event loop and mesh client per measurement)."""
    return asyncio.run(bench_c(dtype, rounds, args.clients, args.batch, args.stats_kernel))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=32, help="texts per measurement (default 32)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per text (default 128)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gRPC clients for (c) (default 8)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of (b), (c), (d) (default 32)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --texts texts for (c) (default 1)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default float32,bfloat16)")
    parser.add_argument("--repeat", type=int, default=1, help="measure each path N times, report the median (default 1)")
    parser.add_argument(
        "--stats-kernel",
        default="compile",
        choices=("compile", "eager"),
        help="statistics kernel of (c) and (d) (default compile: the service's fused kernel)",
    )
    args = parser.parse_args()

    def median(measure: Callable[[], float]) -> float:
        return statistics.median(measure() for _ in range(max(1, args.repeat)))

    rows = []
    results: dict[tuple[str, str], float] = {}
    kernel_mode: dict[str, str] = {}
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        loaded = load_causal_lm(SMOLLM2, device="cpu", dtype=dtype)
        detector = Detector(
            DetectorConfig(
                model=SMOLLM2, likelihood_model="", max_texts_per_call=max(args.texts, args.batch), stats_kernel=args.stats_kernel
            ),
            loaded,
        )
        detector.warm_up()  # compiles the statistics kernel (stats_kernel compile)
        kernel_mode[dtype] = detector.kernel.mode
        texts = make_texts(loaded.tokenizer, args.texts, args.tokens)
        # Distinct texts per measurement: nothing is served from a cache (the service is also told skip_cache).
        service_rounds = [
            make_texts(loaded.tokenizer, args.texts, args.tokens, offset=args.texts * (r + 1)) for r in range(args.rounds)
        ]
        bench_d(detector, texts[: min(4, len(texts))], args.batch)  # warm-up
        results[(dtype, "a")] = median(functools.partial(bench_a, loaded, texts))
        results[(dtype, "b")] = median(functools.partial(bench_b, loaded, texts, args.batch))
        results[(dtype, "d")] = median(functools.partial(bench_d, detector, texts, args.batch))
        del detector, loaded
        results[(dtype, "c")] = median(functools.partial(run_bench_c, dtype, service_rounds, args))
        for key, name in (
            ("a", "(a) per-text formula loop"),
            ("b", "(b) bare batched forward, no criterion"),
            ("c", f"(c) service over gRPC, {args.clients} clients"),
            ("d", "(d) in-process batched core"),
        ):
            rows.append((name, dtype, f"{results[(dtype, key)]:.2f}"))
    print(
        f"detector benchmark: SmolLM2-135M, {args.texts} texts x {args.tokens} tokens, batch {args.batch}, "
        f"{torch.get_num_threads()} torch threads, median of {max(1, args.repeat)}, statistics kernel "
        + ", ".join(f"{d} {m}" for d, m in kernel_mode.items())
        + f", load average {os.getloadavg()[0]:.1f}"
    )
    print(format_table(("path", "dtype", "texts/s"), rows))
    ratios = []
    for dtype in ("float32", "bfloat16"):
        if (dtype, "c") in results:
            ratios.append((f"(c)/(b) {dtype}", f"{results[(dtype, 'c')] / results[(dtype, 'b')]:.2f}", ">= 0.85"))
    if ("bfloat16", "c") in results and ("float32", "a") in results:
        ratios.append(("(c) bfloat16 / (a) float32", f"{results[('bfloat16', 'c')] / results[('float32', 'a')]:.2f}", ">= 2.5"))
    print(format_table(("ratio", "value", "target"), ratios))


if __name__ == "__main__":
    main()
