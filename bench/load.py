"""Load runs over the real mesh on loopback. `mix` (default): model, catalog, job and health calls from concurrent
clients, bounded by a call count and a wall-clock limit; prints calls/s, p50/p99 and errors per RPC.

`--scenario overload`: a burst of concurrent long Detect calls (200 x 512 tokens, 60 s deadlines, bounded to about a
minute) against the model services; prints the share refused within 1 s, p50/p99 latency of the accepted calls, and
each model service's idle, peak and after-burst RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mesh import free_base_port, running_mesh

from crucible.api.cost.v1 import cost_service_pb2 as cost_pb
from crucible.api.cost.v1 import cost_service_pb2_grpc as cost_grpc
from crucible.api.detector.v1 import detector_service_pb2 as det_pb
from crucible.api.detector.v1 import detector_service_pb2_grpc as det_grpc
from crucible.api.proposer.v1 import proposer_service_pb2 as prop_pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as prop_grpc
from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as sched_pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as sched_grpc
from crucible.api.scorer.v1 import scorer_service_pb2 as scorer_pb
from crucible.api.scorer.v1 import scorer_service_pb2_grpc as scorer_grpc
from crucible.clients.tables import format_table
from crucible.mesh import SERVICES, MeshLauncher, default_ports
from crucible.runtime.errors import parse_status_details

MODEL_SERVICES = ("detector", "proposer", "scorer")

SENTENCES = [
    "The committee postponed the vote because several members were travelling abroad.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "A small bakery on the corner sells bread that is still warm at seven in the morning.",
    "The new bridge shortened the commute across the river by almost twenty minutes.",
]
# RPC -> weight in the mix (model calls are the expensive, rarer ones in a training loop's traffic).
MIX = {
    "Detect": 3,
    "Propose": 1,
    "ScoreChoices": 2,
    "Embed": 3,
    "EstimateCost": 4,
    "ListOffers": 4,
    "GetJob": 3,
    "ListJobs": 2,
    "Health": 4,
}
Call = Callable[[], Awaitable[object]]


def build_calls(channels: dict[str, grpc.aio.Channel], job_id: str, offer_id: str) -> dict[str, Call]:
    """One zero-argument coroutine factory per RPC of the mix (texts rotate so caches do not answer everything)."""
    det = det_grpc.DetectorServiceStub(channels["detector"])
    prop = prop_grpc.ProposerServiceStub(channels["proposer"])
    scorer = scorer_grpc.ScorerServiceStub(channels["scorer"])
    sched = sched_grpc.SchedulerServiceStub(channels["scheduler"])
    cost = cost_grpc.CostServiceStub(channels["cost"])
    health = health_pb2_grpc.HealthStub(channels["cost"])
    counter = itertools.count()

    def text() -> str:
        n = next(counter)
        return f"{SENTENCES[n % len(SENTENCES)]} (sample {n})"

    return {
        "Detect": lambda: det.Detect(det_pb.DetectRequest(texts=[text(), text()]), timeout=120),
        "Propose": lambda: prop.Propose(
            prop_pb.ProposeRequest(text=text(), mode=prop_pb.PROPOSE_MODE_PARAPHRASE, n=1, max_new_tokens=12, seed=next(counter)),
            timeout=120,
        ),
        "ScoreChoices": lambda: scorer.ScoreChoices(
            scorer_pb.ScoreChoicesRequest(
                items=[
                    scorer_pb.ChoiceItem(raw_prompt=f"{text()} Is this sentence about science? Answer:", choices=[" Yes", " No"])
                ]
            ),
            timeout=120,
        ),
        "Embed": lambda: prop.Embed(prop_pb.EmbedRequest(texts=[text(), text()]), timeout=120),
        "EstimateCost": lambda: cost.EstimateCost(
            cost_pb.EstimateCostRequest(offer_id=offer_id, duration=duration_pb2.Duration(seconds=3600 + next(counter) % 600)),
            timeout=30,
        ),
        "ListOffers": lambda: cost.ListOffers(cost_pb.ListOffersRequest(gpu_names=["A100-80GB", "H100"]), timeout=30),
        "GetJob": lambda: sched.GetJob(sched_pb.GetJobRequest(job_id=job_id), timeout=30),
        "ListJobs": lambda: sched.ListJobs(sched_pb.ListJobsRequest(page_size=10), timeout=30),
        "Health": lambda: health.Check(health_pb2.HealthCheckRequest(service=SERVICES["cost"].proto_service), timeout=30),
    }


async def drive(
    calls: dict[str, Call], clients: int, max_calls: int, max_seconds: float
) -> tuple[float, dict[str, list[float]], dict[str, collections.Counter]]:
    """`clients` loops drawing RPCs from the weighted mix until `max_calls` calls were started or `max_seconds` passed."""
    schedule = itertools.cycle([name for name, weight in MIX.items() for _ in range(weight)])
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    errors: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    started = 0
    start = time.perf_counter()
    stop_at = start + max_seconds

    async def client() -> None:
        nonlocal started
        while started < max_calls and time.perf_counter() < stop_at:
            started += 1
            name = next(schedule)
            t0 = time.perf_counter()
            try:
                await calls[name]()
                latencies[name].append(time.perf_counter() - t0)
            except grpc.aio.AioRpcError as err:
                errors[name][err.code().name] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, latencies, errors


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def long_text(index: int, tokens: int) -> str:
    """A distinct text of at least `tokens` tokens for SmolLM2's tokenizer (about one token per word here)."""
    words = [SENTENCES[(index + i) % len(SENTENCES)] for i in range(tokens // 10 + 2)]
    return f"Sample {index}. " + " ".join(words)


async def overload(args: argparse.Namespace) -> None:
    """Start the model services, measure idle RSS, fire the burst while sampling RSS, wait, measure again."""
    import tempfile

    base = free_base_port()
    work = Path(tempfile.mkdtemp(prefix="crucible-overload-"))
    model_args = ["--dtype", args.dtype]
    mesh = MeshLauncher(
        list(MODEL_SERVICES),
        ports=default_ports(base),
        log_dir=work / "logs",
        env={"CRUCIBLE_STATE_DIR": str(work / "state"), "HF_HUB_OFFLINE": "1"},
        extra_args={
            "detector": [*model_args, "--max-tokens", str(args.tokens), "--cache-size", "0"],
            "proposer": model_args,
            "scorer": model_args,
        },
    )
    t_start = time.perf_counter()
    mesh.start()
    try:
        await mesh.wait_ready(timeout=600)
        up_s = time.perf_counter() - t_start
        pids = {name: mesh.processes[name].pid for name in MODEL_SERVICES}
        async with grpc.aio.insecure_channel(mesh.address("detector")) as channel:
            stub = det_grpc.DetectorServiceStub(channel)
            await stub.Detect(det_pb.DetectRequest(texts=[long_text(-1, args.tokens)]), timeout=120)  # warm
            await asyncio.sleep(1.0)
            idle = {name: rss_mib(pid) for name, pid in pids.items()}
            peak = dict(idle)
            sampling = True

            async def sample() -> None:
                while sampling:
                    for name, pid in pids.items():
                        peak[name] = max(peak[name], rss_mib(pid))
                    await asyncio.sleep(0.05)

            async def one(i: int) -> tuple[str, str, float]:
                t0 = time.perf_counter()
                try:
                    await stub.Detect(det_pb.DetectRequest(texts=[long_text(i, args.tokens)]), timeout=args.deadline_s)
                    return "OK", "", time.perf_counter() - t0
                except grpc.aio.AioRpcError as err:
                    info, _ = parse_status_details(err)
                    return err.code().name, info.reason if info else "", time.perf_counter() - t0

            sampler = asyncio.create_task(sample())
            t0 = time.perf_counter()
            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.calls))), args.deadline_s + 15)
            burst_s = time.perf_counter() - t0
            await asyncio.sleep(args.settle_s)  # the batchers trim the heap once their queues have drained
            sampling = False
            await sampler
            after = {name: rss_mib(pid) for name, pid in pids.items()}
    finally:
        mesh.stop()
    codes = collections.Counter(f"{c} {r}".strip() for c, r, _ in results)
    refused_fast = sum(1 for c, _, t in results if c == "RESOURCE_EXHAUSTED" and t <= 1.0)
    accepted = [t for c, _, t in results if c == "OK"]
    print(
        f"overload: {args.calls} concurrent Detect calls of {args.tokens} tokens, {args.deadline_s:.0f} s deadlines, "
        f"models {args.dtype}; burst over in {burst_s:.1f} s; model services up in {up_s:.0f} s"
    )
    print(f"outcomes: {', '.join(f'{k} {v}' for k, v in codes.most_common())}")
    refused = [t for c, _, t in results if c == "RESOURCE_EXHAUSTED"]
    print(
        f"refused within 1 s: {refused_fast / args.calls:.0%} of calls (refusal latency p50 {_pct(refused, 0.5)} ms, "
        f"p99 {_pct(refused, 0.99)} ms); accepted: {len(accepted)}, latency p50 {_pct(accepted, 0.5)} ms, "
        f"p99 {_pct(accepted, 0.99)} ms"
    )
    rows = [
        (name, f"{idle[name]:.0f}", f"{peak[name]:.0f}", f"{after[name]:.0f}", f"{after[name] - idle[name]:+.0f}")
        for name in MODEL_SERVICES
    ]
    print(format_table(("service", "idle RSS MiB", "peak RSS MiB", f"after +{args.settle_s:.0f}s MiB", "after - idle"), rows))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="mix", choices=("mix", "overload"), help="what to run (see above)")
    parser.add_argument("--calls", type=int, default=200, help="overload: concurrent Detect calls in the burst")
    parser.add_argument("--tokens", type=int, default=512, help="overload: tokens per Detect text (detector max_tokens)")
    parser.add_argument("--deadline-s", type=float, default=60.0, help="overload: deadline of each call")
    parser.add_argument("--settle-s", type=float, default=5.0, help="overload: idle seconds before the after-burst RSS")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client loops")
    parser.add_argument("--max-calls", type=int, default=4000, help="stop after this many calls")
    parser.add_argument("--max-seconds", type=float, default=45.0, help="stop after this many seconds of load")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="dtype of the model services")
    args = parser.parse_args()
    if args.scenario == "overload":
        await overload(args)
        return
    model_args = ["--dtype", args.dtype, "--max-wait-ms", "10"]
    extra = {
        "detector": [*model_args, "--max-tokens", "128"],
        "proposer": model_args,
        "scorer": model_args,
        "scheduler": ["--providers", "dryrun,local"],
    }
    t_start = time.perf_counter()
    async with running_mesh(list(SERVICES), extra_args=extra) as base:
        up_s = time.perf_counter() - t_start
        channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{base + i}") for i, name in enumerate(SERVICES)}
        try:
            sched = sched_grpc.SchedulerServiceStub(channels["scheduler"])
            job = (
                await sched.CreateJob(
                    sched_pb.CreateJobRequest(
                        spec=job_pb2.JobSpec(
                            command=["echo", "load"], provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT, providers=["dryrun"]
                        )
                    ),
                    timeout=30,
                )
            ).job
            offer = (
                await cost_grpc.CostServiceStub(channels["cost"]).ListOffers(
                    cost_pb.ListOffersRequest(gpu_names=["A100-80GB"]), timeout=30
                )
            ).offers[0]
            calls = build_calls(channels, job.job_id, offer.offer_id)
            for call in calls.values():  # warm every channel, method and model once
                await call()
            seconds, latencies, errors = await drive(calls, args.clients, args.max_calls, args.max_seconds)
        finally:
            for channel in channels.values():
                await channel.close()
    rows = []
    for name in MIX:
        done, failed = latencies.get(name, []), errors.get(name, collections.Counter())
        rows.append(
            (
                name,
                len(done) + sum(failed.values()),
                f"{len(done) / seconds:.1f}",
                _pct(done, 0.5),
                _pct(done, 0.99),
                ", ".join(f"{k} {v}" for k, v in failed.items()) or "0",
            )
        )
    all_done = [v for values in latencies.values() for v in values]
    all_errors = sum(sum(c.values()) for c in errors.values())
    rows.append(
        (
            "all",
            len(all_done) + all_errors,
            f"{len(all_done) / seconds:.1f}",
            _pct(all_done, 0.5),
            _pct(all_done, 0.99),
            str(all_errors),
        )
    )
    print(
        f"load over the mesh: {args.clients} clients, {seconds:.1f} s of load (limits {args.max_calls} calls, "
        f"{args.max_seconds:.0f} s), models {args.dtype}; mesh up in {up_s:.0f} s; median of all latencies "
        f"{statistics.median(all_done) * 1000 if all_done else float('nan'):.1f} ms"
    )
    print(format_table(("rpc", "calls", "ok calls/s", "p50 ms", "p99 ms", "errors"), rows))


if __name__ == "__main__":
    asyncio.run(main())
