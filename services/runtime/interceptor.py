"""The server interceptor every Crucible service runs: metrics, request ids, bearer-token auth and error mapping.

One wrapper per call does all four in a fixed order so each call is counted once and every failure has one status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from crucible.runtime.errors import CrucibleError, Unauthenticated, internal_status, to_status
from crucible.runtime.logs import REQUEST_ID

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
HEALTH_PREFIX = "/grpc.health.v1.Health/"

# Latency buckets from 1 ms to 5 min: cost and health calls are sub-millisecond, model calls take seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Codes that are the caller's doing; they are logged at INFO, everything else unexpected at WARNING/ERROR.
_CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}


class ServerMetrics:
    """The go-grpc-prometheus metric family, registered in a per-server registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", labels, registry=registry)
        self.handled = Counter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code.", [*labels, "grpc_code"], registry=registry
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its completion, in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.msg_received = Counter("grpc_server_msg_received_total", "Stream messages received.", labels, registry=registry)
        self.msg_sent = Counter("grpc_server_msg_sent_total", "Stream messages sent.", labels, registry=registry)


def _split_method(full: str) -> tuple[str, str]:
    _, service, method = full.split("/", 2) if full.count("/") >= 2 else ("", "unknown", full)
    return service, method


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: count, time, tag with a request id, check the bearer token, and map errors to statuses."""

    def __init__(self, metrics: ServerMetrics, *, domain: str, token: str = "") -> None:
        self._metrics = metrics
        self._domain = domain
        self._token = token.encode() if token else b""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}
        scope = self._scope_factory(method, _rpc_type(handler), metadata)
        return _wrap_handler(handler, scope, self._metrics.msg_received, self._metrics.msg_sent, *_split_method(method))

    def _authorized(self, method: str, metadata: dict[str, str]) -> bool:
        if not self._token or method.startswith(HEALTH_PREFIX):
            return True
        header = metadata.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self._token)

    def _scope_factory(self, method: str, rpc_type: str, metadata: dict[str, str]) -> Callable[[Any], Any]:
        service, name = _split_method(method)
        labels = (rpc_type, service, name)

        @contextlib.asynccontextmanager
        async def scope(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            request_id = metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
            token = REQUEST_ID.set(request_id)
            self._metrics.started.labels(*labels).inc()
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
                if not self._authorized(method, metadata):
                    raise Unauthenticated("missing or invalid bearer token", reason="INVALID_TOKEN")
                yield
                code = context.code() or grpc.StatusCode.OK
            except CrucibleError as err:
                code = err.code
                log.log(logging.INFO if code in _CLIENT_CODES else logging.WARNING, "%s failed: %s %s", method, code.name, err)
                await context.abort_with_status(to_status(err, self._domain))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("%s raised an unexpected error", method)
                await context.abort_with_status(internal_status(self._domain, request_id))
            finally:
                self._metrics.handled.labels(*labels, code.name).inc()
                self._metrics.handling_seconds.labels(*labels).observe(time.perf_counter() - start)
                log.debug("%s %s in %.1f ms", method, code.name, (time.perf_counter() - start) * 1000)
                REQUEST_ID.reset(token)

        return scope


def _wrap_handler(
    handler: grpc.RpcMethodHandler, scope: Callable[[Any], Any], received: Counter, sent: Counter, service: str, method: str
) -> grpc.RpcMethodHandler:
    """Rebuild the method handler with each behaviour running inside `scope`, preserving its streaming shape."""
    rpc_type = _rpc_type(handler)
    labels = (rpc_type, service, method)

    def count_in(request_iterator: Any) -> Any:
        async def counted() -> AsyncIterator[Any]:
            async for item in request_iterator:
                received.labels(*labels).inc()
                yield item

        return counted()

    def wrap_unary_response(behavior: Callable[..., Any], streaming_in: bool) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                return await behavior(count_in(request) if streaming_in else request, context)

        return call

    def wrap_stream_response(behavior: Callable[..., Any], streaming_in: bool) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with scope(context):
                    async for item in behavior(count_in(request) if streaming_in else request, context):
                        sent.labels(*labels).inc()
                        yield item

            return stream

        async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with scope(context):
                return await behavior(count_in(request) if streaming_in else request, context)

        return writer

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary_response(handler.unary_unary, False), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary_response(handler.stream_unary, True), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream_response(handler.unary_stream, False), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream_response(handler.stream_stream, True), handler.request_deserializer, handler.response_serializer
    )
