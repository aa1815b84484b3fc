"""Benchmark of CreateJob on the dryrun provider: calls/s and latency, then every job counted in the reopened store.

Side by side in one run: sequential vs concurrent clients, SQLite synchronous=FULL (default) vs NORMAL.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.tables import format_table
from crucible.runtime.config import load_config
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.persistence.jobdb import JobStore
from crucible.scheduler.server import create_server


async def one_run(calls: int, clients: int, synchronous: str, folder: Path) -> tuple[float, list[float], int, int]:
    """(seconds, latencies, jobs created, jobs found in the reopened store)."""
    cfg = load_config(
        SchedulerConfig,
        "scheduler",
        env={},
        port=0,
        state_dir=str(folder),
        metrics_enabled=False,
        sqlite_synchronous=synchronous,
        poll_interval_s=0.5,
        log_level="WARNING",
    )
    server, port = create_server(cfg)
    await server.start()
    await server.wait_ready(30)
    spec = job_pb2.JobSpec(command=["python", "train.py"], provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT, providers=["dryrun"])
    latencies: list[float] = []
    ids: set[str] = set()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        await stub.ListProviders(pb.ListProvidersRequest(), timeout=10)
        counter = iter(range(calls))

        async def client() -> None:
            for i in counter:
                t0 = time.perf_counter()
                reply = await stub.CreateJob(pb.CreateJobRequest(spec=spec, request_id=f"bench-{i}"), timeout=30)
                latencies.append(time.perf_counter() - t0)
                ids.add(reply.job.job_id)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - start
    await server.stop(5)
    store = JobStore(cfg.resolved_database())
    found = sum(1 for i in ids if store.get(i) is not None)
    assert store.count() == found, "the store holds jobs nobody created"
    store.close()
    return seconds, latencies, len(ids), found


def main() -> int:
    """Run the three configurations and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for clients, sync in ((1, "FULL"), (args.clients, "FULL"), (args.clients, "NORMAL")):
        with tempfile.TemporaryDirectory() as d:
            seconds, lat, created, found = asyncio.run(one_run(args.calls, clients, sync, Path(d)))
        lat_ms = sorted(x * 1000 for x in lat)
        p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
        rows.append(
            (
                clients,
                sync,
                args.calls,
                f"{args.calls / seconds:.0f}",
                f"{statistics.median(lat_ms):.2f}",
                f"{p99:.2f}",
                f"{found}/{created}",
            )
        )
        if found != args.calls or created != args.calls:
            print(format_table(("clients", "sqlite sync", "calls", "calls/s", "p50 ms", "p99 ms", "durable"), rows))
            print(f"FAILED: {found} of {args.calls} jobs found after reopening the store")
            return 1
    print(format_table(("clients", "sqlite sync", "calls", "calls/s", "p50 ms", "p99 ms", "durable"), rows))
    print("durable = jobs found by id after stopping the server and reopening its SQLite file / jobs created")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
