"""Health checks over the standard grpc.health.v1 protocol, for the CLI, the mesh launcher and tests.

`check(address)` returns a HealthResult; it never raises for an unreachable server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclasses.dataclass(frozen=True)
class HealthResult:
    """One health answer: `status` is SERVING, NOT_SERVING, SERVICE_UNKNOWN, or UNREACHABLE/ERROR with `detail`."""

    address: str
    service: str
    status: str
    latency_ms: float
    detail: str = ""

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"


async def check(
    address: str,
    service: str = "",
    *,
    timeout: float = 2.0,
    credentials: grpc.ChannelCredentials | None = None,
) -> HealthResult:
    """Ask `address` for the health of `service` ('' = the whole server) with one deadline-bound call."""
    start = time.perf_counter()
    channel = grpc.aio.secure_channel(address, credentials) if credentials else grpc.aio.insecure_channel(address)
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            detail = ""
        except grpc.aio.AioRpcError as err:
            status = "UNREACHABLE" if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else "ERROR"
            detail = f"{err.code().name}: {err.details()}"
    return HealthResult(address, service, status, (time.perf_counter() - start) * 1000, detail)


async def wait_serving(address: str, service: str = "", *, timeout: float = 120.0, interval: float = 0.25) -> HealthResult:
    """Poll until `address` reports SERVING; raises TimeoutError with the last answer when it does not in time."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check(address, service, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        if result.serving:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{address} not SERVING after {timeout:.0f}s: {result.status} {result.detail}".strip())
        await asyncio.sleep(interval)
