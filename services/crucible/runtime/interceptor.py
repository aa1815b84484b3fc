"""The server interceptor every Crucible service runs: metrics, request ids, auth, request checks and error mapping.

One wrapper per call does all of it in a fixed order so each call is counted once and every failure has one status.
Request bytes that do not parse become INVALID_ARGUMENT (not grpc's UNKNOWN naming a Python class), and every string
of a request is held to the service's byte limits before its handler runs.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from crucible.runtime.errors import CrucibleError, InvalidArgument, Unauthenticated, internal_status, to_status
from crucible.runtime.logs import REQUEST_ID
from crucible.runtime.validation import TextLimits, check_text_sizes, string_fields

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
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
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


def _rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


class _MethodMetrics:
    """Metric children of one method, resolved once (label lookups are not free on the hot path)."""

    def __init__(self, metrics: ServerMetrics, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = metrics.started.labels(*labels)
        self.seconds = metrics.handling_seconds.labels(*labels)
        self.received = metrics.msg_received.labels(*labels)
        self.sent = metrics.msg_sent.labels(*labels)
        self._handled = metrics.handled
        self._by_code: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._handled.labels(*self.labels, code.name)
        return child


class _CallScope:
    """Runs around one call: request id, auth, counting, timing and the error -> status mapping."""

    __slots__ = ("_context", "_method", "_metrics", "_owner", "_start", "_token", "request_id")

    def __init__(
        self, owner: RuntimeInterceptor, method: str, metrics: _MethodMetrics, context: grpc.aio.ServicerContext[Any, Any]
    ):
        self._owner = owner
        self._method = method
        self._metrics = metrics
        self._context = context

    async def __aenter__(self) -> _CallScope:
        metadata = self._context.invocation_metadata() or ()
        request_id = ""
        authorization = ""
        for key, value in metadata:
            if not isinstance(value, str):  # binary (-bin) headers are neither of the two read here
                continue
            if key == REQUEST_ID_HEADER:
                request_id = value
            elif key == "authorization":
                authorization = value
        self.request_id = request_id or uuid.uuid4().hex
        self._token = REQUEST_ID.set(self.request_id)
        self._metrics.started.inc()
        self._start = time.perf_counter()
        if not self._owner.authorized(self._method, authorization):
            await self.__aexit__(Unauthenticated, None, None)  # counts the call and aborts with UNAUTHENTICATED
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        context = self._context
        try:
            if exc_type is None:
                code = context.code() or grpc.StatusCode.OK
                context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id), *(context.trailing_metadata() or ())))
                return False
            if exc_type is Unauthenticated and exc is None:
                exc = Unauthenticated("missing or invalid bearer token", reason="INVALID_TOKEN")
            if isinstance(exc, CrucibleError):
                code = exc.code
                log.log(
                    logging.INFO if code in _CLIENT_CODES else logging.WARNING, "%s failed: %s %s", self._method, code.name, exc
                )
                await context.abort_with_status(self._with_request_id(to_status(exc, self._owner.domain)))
            if issubclass(exc_type, grpc.aio.AbortError):
                code = context.code() or grpc.StatusCode.UNKNOWN
                return False
            if issubclass(exc_type, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED
                return False
            code = grpc.StatusCode.INTERNAL
            log.error("%s raised an unexpected error", self._method, exc_info=exc)
            await context.abort_with_status(self._with_request_id(internal_status(self._owner.domain, self.request_id)))
            return False  # unreachable: abort_with_status raises AbortError
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            elapsed = time.perf_counter() - self._start
            self._metrics.handled(code).inc()
            self._metrics.seconds.observe(elapsed)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s in %.1f ms", self._method, code.name, elapsed * 1000)
            REQUEST_ID.reset(self._token)

    def _with_request_id(self, status: grpc.Status) -> grpc.Status:
        return _Status(status.code, status.details, ((REQUEST_ID_HEADER, self.request_id), *status.trailing_metadata))


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, Any], ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


class RuntimeInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: count, time, tag with a request id, check the bearer token, and map errors to statuses.

    Wrapped handlers are built once per method and cached; per-call state lives in a _CallScope.
    The request id (from x-request-id or generated) is returned in trailing metadata, on errors too.
    """

    def __init__(self, metrics: ServerMetrics, *, domain: str, token: str = "", text_limits: TextLimits | None = None) -> None:
        self._metrics = metrics
        self.domain = domain
        self.text_limits = text_limits or TextLimits()
        self._token = token.encode() if token else b""
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            service, name = _split_method(method)
            metrics = _MethodMetrics(self._metrics, (_rpc_type(handler), service, name))
            wrapped = self._handlers[method] = _wrap_handler(handler, self, method, metrics)
        return wrapped

    def authorized(self, method: str, authorization: str) -> bool:
        """True when auth is off, the method is health, or the header carries the configured bearer token."""
        if not self._token or method.startswith(HEALTH_PREFIX):
            return True
        scheme, _, credential = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self._token)


class _Malformed:
    """Stands in for a request whose bytes did not parse; the call fails with INVALID_ARGUMENT inside its scope."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"request is not a valid {self.message}", reason="MALFORMED_REQUEST")


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpc.aio answers a deserializer's exception with UNKNOWN and the exception's class and text; this one returns
    a _Malformed marker instead, so the call is answered INVALID_ARGUMENT by the interceptor's error mapping."""
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", "") or "message"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return _Malformed(name)

    return parse


def _checked(request: Any, limits: TextLimits) -> Any:
    """The request after the malformed-bytes and text-size checks (InvalidArgument when one fails)."""
    if isinstance(request, _Malformed):
        raise request.error()
    if limits.enabled and hasattr(request, "ListFields"):
        check_text_sizes(string_fields(request), limits)
    return request


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], owner: RuntimeInterceptor, method: str, metrics: _MethodMetrics
) -> grpc.RpcMethodHandler[Any, Any]:
    """Rebuild the method handler with each behaviour running inside a _CallScope, preserving its streaming shape."""
    limits = owner.text_limits
    # A stream message is held to the per-request total here; its texts are numbered across the whole stream, so the
    # service checks each one itself and names it by its position in the stream (DetectStream: texts[i]).
    stream_limits = TextLimits(0, limits.max_request_bytes)

    def count_in(request_iterator: Any) -> Any:
        async def counted() -> AsyncIterator[Any]:
            async for item in request_iterator:
                metrics.received.inc()
                yield _checked(item, stream_limits)

        return counted()

    def wrap_unary_response(behavior: Callable[..., Any], streaming_in: bool) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with _CallScope(owner, method, metrics, context):
                return await behavior(count_in(request) if streaming_in else _checked(request, limits), context)

        return call

    def wrap_stream_response(behavior: Callable[..., Any], streaming_in: bool) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                async with _CallScope(owner, method, metrics, context):
                    async for item in behavior(count_in(request) if streaming_in else _checked(request, limits), context):
                        metrics.sent.inc()
                        yield item

            return stream

        return wrap_unary_response(behavior, streaming_in)  # a coroutine that writes with context.write()

    deserialize = _safe_deserializer(handler.request_deserializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary_response(handler.unary_unary, False), deserialize, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary_response(handler.stream_unary, True), deserialize, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream_response(handler.unary_stream, False), deserialize, handler.response_serializer
        )
    assert handler.stream_stream is not None  # a handler has exactly one of the four behaviours
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream_response(handler.stream_stream, True), deserialize, handler.response_serializer
    )
