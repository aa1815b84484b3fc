"""Benchmark of the shared server runtime's per-call overhead: health Check calls/s and latency, side by side.

(a) a bare grpc.aio server, (b) the Crucible runtime (metrics, request ids, error mapping), (c) the runtime with auth.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry

from crucible.clients.tables import format_table
from crucible.runtime.config import ServerConfig, load_config
from crucible.runtime.server import create_server
from crucible.runtime.service import BaseService


async def _drive(address: str, clients: int, calls: int, token: str = "") -> tuple[float, list[float]]:
    """`clients` concurrent loops over one channel, `calls` calls in all; returns (seconds, latencies)."""
    latencies: list[float] = []
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        await stub.Check(request, timeout=5)
        per_client = calls // clients

        async def loop() -> None:
            for _ in range(per_client):
                t0 = time.perf_counter()
                await stub.Check(request, timeout=5, metadata=metadata)
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        return time.perf_counter() - start, latencies


async def _bare(clients: int, calls: int) -> tuple[float, list[float]]:
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        return await _drive(f"127.0.0.1:{port}", clients, calls)
    finally:
        await server.stop(0)


async def _runtime(clients: int, calls: int, token: str = "") -> tuple[float, list[float]]:
    config = load_config(ServerConfig, "bench", env={}, port=0, metrics_port=0, auth_token=token)
    service = BaseService("bench", [], None, lambda servicer, server: None)
    server, port = create_server(config, service, CollectorRegistry())
    await server.start()
    await server.wait_ready(10)
    try:
        # Health is exempt from auth; the token is still sent so the header is parsed like a real call.
        return await _drive(f"127.0.0.1:{port}", clients, calls, token)
    finally:
        await server.stop(0)


def _row(name: str, seconds: float, latencies: list[float], baseline: float | None) -> tuple[str, ...]:
    rate = len(latencies) / seconds
    q = statistics.quantiles(latencies, n=100)
    ratio = f"{rate / baseline:.2f}x" if baseline else "1.00x"
    return (name, f"{rate:,.0f}", f"{q[49] * 1000:.2f}", f"{q[98] * 1000:.2f}", ratio)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=6400)
    args = parser.parse_args()
    runs = [
        ("bare grpc.aio", _bare),
        ("crucible runtime", _runtime),
        ("crucible runtime + auth header", lambda c, n: _runtime(c, n, token="bench-token")),
    ]
    rows = []
    baseline = None
    for name, fn in runs:
        seconds, latencies = await fn(args.clients, args.calls)
        row = _row(name, seconds, latencies, baseline)
        baseline = baseline or len(latencies) / seconds
        rows.append(row)
    print(f"health Check, {args.clients} concurrent clients, {args.calls} calls each run, one process (client and server)")
    print(format_table(("server", "calls/s", "p50 ms", "p99 ms", "vs bare"), rows))


if __name__ == "__main__":
    asyncio.run(main())
