"""Overload, deadlines and cancellation against a real `crucible serve detector` process with a tiny model and a small queue.

A saturated detector rejects with RESOURCE_EXHAUSTED at once and recovers; repeated overload does not grow its memory or
threads; short deadlines end in DEADLINE_EXCEEDED and drop the queued work; cancelled streams leave nothing behind.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
from crucible.clients.health import wait_serving
from crucible.runtime.errors import parse_status_details
from tests.conftest import free_port_block
from tests.reliability.support import (
    AUTH,
    TOKEN,
    ServiceProcess,
    child_env,
    metric_value,
    rss_bytes,
    serve_command,
    wait_until,
    wide_lm_folder,
)

QUEUE = 8  # texts waiting before RESOURCE_EXHAUSTED
SERVICE = "crucible.detector.v1.DetectorService"
METHOD_LABELS = {"grpc_service": SERVICE}
# ~300 tokens each with the tiny byte-level tokenizer: each forward pass takes a noticeable time.
LONG = " ".join(f"sentence {i} about the quick brown fox, the lazy dog and café crème." for i in range(40))


def _texts(tag: str, n: int) -> list[str]:
    return [f"{tag} {i}: {LONG}" for i in range(n)]


class Detector:
    """The detector child process, its address and metrics port."""

    def __init__(self, proc: ServiceProcess, port: int) -> None:
        self.proc = proc
        self.address = f"127.0.0.1:{port}"
        self.metrics_port = port + 1000

    def metric(self, name: str, **labels: str) -> float:
        """A sample from /metrics (0 when absent)."""
        return metric_value(self.metrics_port, name, **labels) or 0.0

    def queue_depth(self) -> float:
        """Texts waiting in the detector's batcher."""
        return self.metric("crucible_batcher_queue_depth", batcher="detector")

    def items(self, outcome: str) -> float:
        """Texts by batcher outcome (done, rejected, expired, cancelled, failed)."""
        return self.metric("crucible_batcher_items_total", batcher="detector", outcome=outcome)

    def in_flight(self, method: str) -> float:
        """Calls of `method` started and not yet answered (started minus handled over every code)."""
        labels = {**METHOD_LABELS, "grpc_method": method}
        started = self.metric("grpc_server_started_total", **labels)
        handled = sum(self.metric("grpc_server_handled_total", **labels, grpc_code=c.name) for c in grpc.StatusCode)
        return started - handled

    def threads(self) -> int:
        """OS threads of the server process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise RuntimeError("no Threads line")


@pytest.fixture(scope="module")
async def detector(model_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Detector]:
    """`crucible serve detector` with a small random model, 2 texts per batch, a queue of 8 texts and auth on."""
    port = free_port_block(1)
    root = tmp_path_factory.mktemp("overload")
    log = root / "detector.log"
    model = wide_lm_folder(root / "wide-lm", model_folders["lm"])
    argv = serve_command(
        "detector",
        port,
        "--model",
        str(model),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-queue-size",
        str(QUEUE),
        "--max-batch-size",
        "2",
        "--max-wait-ms",
        "0",
        "--max-tokens",
        "512",
        "--max-texts-per-call",
        "64",
        "--cache-size",
        "0",
    )
    proc = ServiceProcess(argv, log, child_env(CRUCIBLE_AUTH_TOKEN=TOKEN))
    try:
        await wait_serving(f"127.0.0.1:{port}", SERVICE, timeout=180)
        yield Detector(proc, port)
    finally:
        proc.stop()
        text = log.read_text(errors="replace")
        assert TOKEN not in text, "the auth token was written to the detector's log"


async def _detect(stub, texts: list[str], timeout: float = 60) -> tuple[grpc.StatusCode, str, float]:
    start = time.perf_counter()
    try:
        await stub.Detect(pb.DetectRequest(texts=texts), timeout=timeout, metadata=AUTH)
        return grpc.StatusCode.OK, "", time.perf_counter() - start
    except grpc.aio.AioRpcError as err:
        info, _ = parse_status_details(err)
        return err.code(), info.reason if info else "", time.perf_counter() - start


async def _flood(stub, tag: str, calls: int = 48) -> list[tuple[grpc.StatusCode, str, float]]:
    """`calls` concurrent Detect calls of 2 long texts each: far more than the queue holds."""
    return list(await asyncio.gather(*(_detect(stub, _texts(f"{tag}-{c}", 2)) for c in range(calls))))


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.1f} ms"


@pytest.mark.slow
async def test_saturated_detector_rejects_at_once_recovers_and_does_not_grow(detector: Detector) -> None:
    async with grpc.aio.insecure_channel(detector.address) as channel:
        stub = pb_grpc.DetectorServiceStub(channel)
        # One call larger than the whole queue is refused before anything is queued.
        code, reason, _ = await _detect(stub, _texts("too-many", QUEUE + 1))
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")

        rss, threads = [], []
        rejected_latency, ok_latency = [], []
        for round_ in range(8):
            rejected_before = detector.items("rejected")
            results = await _flood(stub, f"round{round_}")
            codes = {c for c, _, _ in results}
            assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            rejections = [(r, t) for c, r, t in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert rejections, "48 concurrent calls against a queue of 8 texts were all admitted"
            assert {r for r, _ in rejections} == {"QUEUE_FULL"}
            assert any(c == grpc.StatusCode.OK for c, _, _ in results), "nothing was served during the overload"
            assert detector.items("rejected") - rejected_before == 2 * len(rejections)
            rejected_latency += [t for _, t in rejections]
            ok_latency += [t for c, _, t in results if c == grpc.StatusCode.OK]
            # Recovered: the queue drains and a call on its own succeeds.
            wait_until(lambda: detector.queue_depth() == 0, 30, what="an empty detector queue")
            assert (await _detect(stub, ["After the storm the service answers again."]))[0] == grpc.StatusCode.OK
            rss.append(rss_bytes(detector.proc.pid))
            threads.append(detector.threads())
        print(
            f"\noverload: {len(rejected_latency)} rejections ({_ms(rejected_latency)}), "
            f"{len(ok_latency)} served ({_ms(ok_latency)}); RSS after each round (MiB): "
            f"{[round(r / 2**20) for r in rss]}; threads {threads}"
        )
        # Memory and threads settle after the first rounds; later overload rounds must not keep adding to them.
        assert max(rss[2:]) - rss[1] < 64 * 2**20, f"RSS grew under repeated overload: {rss}"
        assert max(threads[2:]) <= threads[1] + 2, f"threads grew under repeated overload: {threads}"
        assert detector.in_flight("Detect") == 0


@pytest.mark.slow
async def test_short_deadlines_expire_and_the_server_keeps_working(detector: Detector) -> None:
    async with grpc.aio.insecure_channel(detector.address) as channel:
        stub = pb_grpc.DetectorServiceStub(channel)
        dropped_before = detector.items("expired") + detector.items("cancelled")
        done_before = detector.items("done")
        # A backlog: 6 long texts, computed 2 at a time (3 forward passes); then calls that cannot wait that long.
        backlog = asyncio.create_task(_detect(stub, _texts("backlog", 6)))
        await asyncio.sleep(0.01)
        rejected_before = detector.items("rejected")
        hurried = await asyncio.gather(*(_detect(stub, [f"hurried {i}: {LONG}"], timeout=0.1) for i in range(2)))
        # Refused at once when admission sees the backlog would outlast the deadline; else dropped when it passes.
        for code, reason, _ in hurried:
            assert (code, reason) in (
                (grpc.StatusCode.DEADLINE_EXCEEDED, ""),
                (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_WAIT_EXCEEDS_DEADLINE"),
            ), (code, reason)
        assert (await backlog)[0] == grpc.StatusCode.OK
        wait_until(lambda: detector.in_flight("Detect") == 0, 30, what="no Detect handler left running")
        # The hurried texts were refused or dropped, not computed for nobody.
        assert (
            detector.items("expired")
            + detector.items("cancelled")
            - dropped_before
            + detector.items("rejected")
            - rejected_before
        ) == 2
        assert detector.items("done") - done_before == 6
        assert detector.queue_depth() == 0, "queue-depth gauge stale after expired/cancelled items were dropped"
        assert (await _detect(stub, ["Still answering after the deadlines."]))[0] == grpc.StatusCode.OK


@pytest.mark.slow
async def test_cancelled_streams_do_not_leak(detector: Detector) -> None:
    async with grpc.aio.insecure_channel(detector.address) as channel:
        stub = pb_grpc.DetectorServiceStub(channel)
        cancelled_before = detector.metric(
            "grpc_server_handled_total", **METHOD_LABELS, grpc_method="DetectStream", grpc_code="CANCELLED"
        )
        threads_before = detector.threads()
        cancelled_items_before = detector.items("cancelled")
        done_before = detector.items("done")
        for round_ in range(10):
            # One batch in the model; the stream's texts wait behind it and are cancelled before their turn.
            backlog = asyncio.create_task(_detect(stub, _texts(f"stream-backlog-{round_}", 2)))
            await asyncio.sleep(0.02)
            call = stub.DetectStream(metadata=AUTH, timeout=60)
            await call.write(pb.DetectStreamRequest(texts=_texts(f"stream-{round_}", 4)))
            await asyncio.sleep(0.02)
            call.cancel()
            assert (await backlog)[0] == grpc.StatusCode.OK
        wait_until(lambda: detector.in_flight("DetectStream") == 0, 30, what="no DetectStream handler left running")
        cancelled = (
            detector.metric("grpc_server_handled_total", **METHOD_LABELS, grpc_method="DetectStream", grpc_code="CANCELLED")
            - cancelled_before
        )
        assert cancelled == 10
        # No stream text was computed: each was dropped from the queue, or its call ended while it was still being
        # tokenised (in a thread) and it was never queued.
        assert detector.items("done") - done_before == 20  # the backlogs' texts only
        assert detector.items("cancelled") - cancelled_items_before <= 40
        assert detector.threads() <= threads_before + 2
        wait_until(lambda: detector.queue_depth() == 0, 5, what="the queue-depth gauge back at 0 after cancellations")
        # And a stream that is not cancelled still works.
        replies = [
            r
            async for r in stub.DetectStream(
                iter([pb.DetectStreamRequest(texts=["A stream after the storm."])]), metadata=AUTH, timeout=60
            )
        ]
        assert len(replies) == 1 and len(replies[0].detections) == 1
