"""Benchmark of the cost service: EstimateCost (and CheckAdmission) calls/s and latency beside a bare grpc.aio echo server.

Same process, same machine, one run: the echo server returns the serialized EstimateCost request bytes untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import duration_pb2

from crucible.api.cost.v1 import cost_service_pb2 as pb
from crucible.api.cost.v1 import cost_service_pb2_grpc as pb_grpc
from crucible.clients.tables import format_table
from crucible.cost.catalog import DATA_DIR
from crucible.cost.config import CostConfig
from crucible.cost.server import create_server
from crucible.runtime.config import load_config

ECHO_METHOD = "/bench.Echo/Echo"
TARGET_RATIO = 0.6
Call = Callable[[], Awaitable[object]]


def _first_offer_id(provider: str, instance_type: str) -> str:
    """An offer id of the built-in catalog (provider/instance/region/on-demand): regions come and go with refreshes."""
    with (DATA_DIR / "catalog.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["provider"] == provider and row["instance_type"] == instance_type:
                return f"{provider}/{instance_type}/{row['region']}/on-demand"
    raise SystemExit(f"no {provider} {instance_type} in the built-in catalog")


REQUEST = pb.EstimateCostRequest(
    offer_id=_first_offer_id("lambda", "gpu_1x_a10"),
    duration=duration_pb2.Duration(seconds=3 * 3600 + 7),
    storage_gb_hours=100,
    egress_gb=5,
)


async def _drive(call: Call, clients: int, calls: int) -> tuple[float, list[float]]:
    """`clients` concurrent loops, `calls` calls in all; returns (seconds, latencies)."""
    latencies: list[float] = []
    await call()  # warm the channel and the method
    per_client = calls // clients

    async def loop() -> None:
        for _ in range(per_client):
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return time.perf_counter() - start, latencies


@contextlib.asynccontextmanager
async def _echo_server() -> AsyncIterator[Call]:
    """A bare grpc.aio server whose one method returns the request bytes; yields a zero-argument call."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    payload = REQUEST.SerializeToString()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary(ECHO_METHOD)
            yield lambda: method(payload, timeout=5)
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def _cost_server() -> AsyncIterator[tuple[Call, Call]]:
    """The real cost server (runtime, interceptor, SQLite store); yields EstimateCost and CheckAdmission calls."""
    with tempfile.TemporaryDirectory(prefix="crucible-bench-cost-") as state:
        config = load_config(
            CostConfig, "cost", env={}, port=0, metrics_port=0, state_dir=state, user_catalog_file="", log_level="WARNING"
        )
        server, port = create_server(config)
        await server.start()
        await server.wait_ready(10)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.CostServiceStub(channel)
                admission = pb.CheckAdmissionRequest(scope="project:bench", estimated_cost_usd=1.0)
                yield (lambda: stub.EstimateCost(REQUEST, timeout=5)), (lambda: stub.CheckAdmission(admission, timeout=5))
        finally:
            await server.stop(0)


def _row(name: str, seconds: float, latencies: list[float], baseline: float | None) -> tuple[str, ...]:
    rate = len(latencies) / seconds
    q = statistics.quantiles(latencies, n=100)
    ratio = f"{rate / baseline:.2f}x" if baseline else "1.00x"
    return (name, f"{rate:,.0f}", f"{q[49] * 1000:.2f}", f"{q[98] * 1000:.2f}", ratio)


async def main() -> int:
    """Run the servers in alternating rounds and print the side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=6400, help="calls per server, split over the rounds")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="the servers take turns this many times, so load from other processes hits all of them alike",
    )
    args = parser.parse_args()
    names = ("bare grpc.aio echo (same bytes)", "cost EstimateCost", "cost CheckAdmission (SQLite read)")
    seconds = dict.fromkeys(names, 0.0)
    latencies: dict[str, list[float]] = {n: [] for n in names}
    round_ratios = []
    async with _echo_server() as echo, _cost_server() as (estimate, admission):
        for _ in range(args.rounds):
            rates = {}
            for name, call in zip(names, (echo, estimate, admission), strict=True):
                took, lat = await _drive(call, args.clients, args.calls // args.rounds)
                seconds[name] += took
                latencies[name].extend(lat)
                rates[name] = len(lat) / took
            round_ratios.append(rates[names[1]] / rates[names[0]])
    baseline = len(latencies[names[0]]) / seconds[names[0]]
    rows = [_row(n, seconds[n], latencies[n], baseline if n != names[0] else None) for n in names]
    print(
        f"{args.clients} concurrent clients, {args.calls} calls per server in {args.rounds} alternating rounds, "
        "one process (client and server)"
    )
    print(format_table(("server", "calls/s", "p50 ms", "p99 ms", "vs echo"), rows))
    ratio = statistics.median(round_ratios)
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(
        f"EstimateCost / echo calls/s per round: {', '.join(f'{r:.2f}' for r in round_ratios)}; median {ratio:.2f}x "
        f"{verdict} the target of {TARGET_RATIO:.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
