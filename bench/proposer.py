"""Benchmark of the proposer: generated tokens/s for 16 concurrent Propose calls vs the same 16 one after another,
and Embed texts/s (one big call, concurrent small calls, one text per call), all measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import grpc
from prometheus_client import CollectorRegistry

from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as pb_grpc
from crucible.clients.tables import format_table
from crucible.proposer.config import ProposerConfig
from crucible.proposer.server import create_server
from crucible.runtime.config import load_config

TEXTS = [
    "The committee postponed the vote because several members were travelling abroad.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease.",
    "Rising interest rates make mortgages more expensive for first-time buyers.",
    "The library extended its opening hours during the examination period.",
]


def _requests(calls: int, max_new_tokens: int) -> list[pb.ProposeRequest]:
    return [
        pb.ProposeRequest(
            text=TEXTS[i % len(TEXTS)],
            mode=pb.PROPOSE_MODE_PARAPHRASE,
            n=1,
            seed=1000 + i,
            temperature=1.0,
            max_new_tokens=max_new_tokens,
        )
        for i in range(calls)
    ]


class _TokenMeter:
    """Reads the server's generated-token counter, which counts kept and dropped candidates alike."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def __call__(self) -> float:
        return self.registry.get_sample_value("crucible_proposer_generated_tokens_total") or 0.0

    def batches(self) -> float:
        labels = {"batcher": "proposer_generate"}
        return self.registry.get_sample_value("crucible_batcher_batch_size_count", labels) or 0.0


async def _propose_runs(
    stub: pb_grpc.ProposerServiceStub, tokens: _TokenMeter, calls: int, max_new_tokens: int
) -> list[tuple[str, ...]]:
    requests = _requests(calls, max_new_tokens)
    await stub.Propose(requests[0], timeout=600)  # warm-up outside the measurement
    before, started = tokens(), time.perf_counter()
    sequential = [await stub.Propose(r, timeout=600) for r in requests]
    seq_s, seq_tokens = time.perf_counter() - started, tokens() - before
    before, batches, started = tokens(), tokens.batches(), time.perf_counter()
    concurrent = list(await asyncio.gather(*(stub.Propose(r, timeout=600) for r in requests)))
    con_s, con_tokens, batches = time.perf_counter() - started, tokens() - before, tokens.batches() - batches
    seq_rate, con_rate = seq_tokens / seq_s, con_tokens / con_s
    same = sum(a.candidates == b.candidates for a, b in zip(sequential, concurrent, strict=True))
    return [
        (f"{calls} Propose one after another", f"{seq_tokens:.0f}", f"{seq_s:.1f}", f"{seq_rate:.1f}", "1.00x", ""),
        (
            f"{calls} Propose concurrently (batched)",
            f"{con_tokens:.0f}",
            f"{con_s:.1f}",
            f"{con_rate:.1f}",
            f"{con_rate / seq_rate:.2f}x",
            f"{batches:.0f} batch(es); {same}/{calls} responses identical to sequential",
        ),
    ]


async def _embed_runs(stub: pb_grpc.ProposerServiceStub, count: int) -> list[tuple[str, ...]]:
    texts = [f"{TEXTS[i % len(TEXTS)]} (variant {i})" for i in range(count)]
    await stub.Embed(pb.EmbedRequest(texts=texts[:8]), timeout=60)
    rows = []
    started = time.perf_counter()
    await stub.Embed(pb.EmbedRequest(texts=texts), timeout=600)
    one = time.perf_counter() - started
    rows.append((f"Embed: 1 call x {count} texts", f"{count / one:.0f}", "1.00x"))
    started = time.perf_counter()
    await asyncio.gather(*(stub.Embed(pb.EmbedRequest(texts=texts[i : i + 8]), timeout=600) for i in range(0, count, 8)))
    small = time.perf_counter() - started
    rows.append((f"Embed: {count // 8} concurrent calls x 8 texts", f"{count / small:.0f}", f"{one / small:.2f}x"))
    started = time.perf_counter()
    for text in texts:
        await stub.Embed(pb.EmbedRequest(texts=[text]), timeout=600)
    single = time.perf_counter() - started
    rows.append((f"Embed: {count} calls x 1 text, one after another", f"{count / single:.0f}", f"{one / single:.2f}x"))
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--calls", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--embed-texts", type=int, default=256)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    config = load_config(
        ProposerConfig,
        "proposer",
        env={},
        port=0,
        metrics_enabled=False,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
    )
    server, _port = create_server(config)
    await server.start()
    await server.wait_ready(600)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ProposerServiceStub(channel)
            info = await stub.GetInfo(pb.GetInfoRequest(), timeout=10)
            generation = await _propose_runs(stub, _TokenMeter(server.registry), args.calls, args.max_new_tokens)
            embedding = await _embed_runs(stub, args.embed_texts)
    finally:
        await server.stop(0)
    model = info.generator_model
    print(
        f"Propose: {model.name} {model.dtype} on {model.device}, quantize={model.quantization}; n=1, "
        f"temperature 1.0, max_new_tokens {args.max_new_tokens}; tokens = all generated tokens (server counter)"
    )
    print(format_table(("run", "tokens", "seconds", "tokens/s", "vs sequential", "note"), generation))
    print()
    print(f"Embed: {info.embedding_model.name} {info.embedding_model.dtype} on {info.embedding_model.device}")
    print(format_table(("run", "texts/s", "vs 1 big call"), embedding))


if __name__ == "__main__":
    asyncio.run(main())
