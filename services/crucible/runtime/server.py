"""The one gRPC server runtime all five services use: grpc.aio, health, reflection, metrics, auth, TLS, shutdown.

A service hands `create_server` its config and a `Service` (servicer registration plus start/stop hooks).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from crucible.runtime.config import ServerConfig
from crucible.runtime.errors import ConfigError, Unimplemented, error_domain
from crucible.runtime.interceptor import RuntimeInterceptor, ServerMetrics
from crucible.runtime.memory import limit_arenas
from crucible.runtime.startup import STARTUP, process_age

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Service(Protocol):
    """What a service gives the runtime. `start` loads and warms models; health says SERVING only after it returns."""

    @property
    def short_name(self) -> str:
        """Short name used for env vars, logs and the error domain, e.g. "detector"."""

    @property
    def service_names(self) -> Sequence[str]:
        """Fully qualified proto service names this service registers, e.g. ("crucible.detector.v1.DetectorService",)."""

    def add_to_server(self, server: grpc.aio.Server) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class CrucibleServer:
    """A bound but not yet started server. `start()` serves; `serve()` also waits for SIGTERM/SIGINT and shuts down."""

    def __init__(self, config: ServerConfig, service: Service, registry: CollectorRegistry) -> None:
        self.config = config
        self.service = service
        self.registry = registry
        self.health = health_aio.HealthServicer()
        self.metrics_port: int | None = None
        self._metrics_httpd: Any = None
        self._ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._startup_error: BaseException | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._stopping = False
        token = config.bearer_token()
        self._grpc = grpc.aio.server(
            interceptors=[
                RuntimeInterceptor(
                    ServerMetrics(registry),
                    domain=error_domain(service.short_name),
                    token=token,
                    text_limits=config.text_limits(),
                )
            ],
            options=_channel_options(config),
            maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        service.add_to_server(self._grpc)
        reflection.enable_server_reflection(
            (*service.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._grpc,
        )
        address = f"{config.host}:{config.port}"
        try:
            if config.tls_cert_file:
                self.port = self._grpc.add_secure_port(address, _server_credentials(config))
            else:
                self.port = self._grpc.add_insecure_port(address)
        except RuntimeError as err:  # grpc's "Failed to bind to address": name the settings, not a traceback
            tls = " with the TLS files tls_cert_file/tls_key_file" if config.tls_cert_file else ""
            raise ConfigError("port", f"cannot serve on {address}{tls} ({err}); is the port in use?") from None
        if self.port == 0:
            raise ConfigError("port", f"could not bind gRPC port {address}")
        self.tls = bool(config.tls_cert_file)
        self.auth = bool(token)

    @property
    def address(self) -> str:
        """host:port clients connect to."""
        return f"{self.config.host}:{self.port}"

    async def _set_health(self, status: int) -> None:
        for name in ("", *self.service.service_names):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Serve immediately (health NOT_SERVING), then run the service's start hook in the background."""
        arenas = getattr(self.config, "malloc_arena_max", 0)
        if arenas:
            limit_arenas(arenas)
        await self._set_health(NOT_SERVING)
        await self._grpc.start()
        if self.config.metrics_enabled:
            port = self.config.resolved_metrics_port(self.port)
            self._metrics_httpd, _thread = start_http_server(port, addr=self.config.host, registry=self.registry)
            self.metrics_port = self._metrics_httpd.server_port
        log.info(
            "%s listening",
            self.service.short_name,
            extra={
                "address": self.address,
                "metrics_port": self.metrics_port,
                "tls": self.tls,
                "auth": self.auth,
                "process_s": round(process_age(), 2),  # interpreter start and imports before the models load
            },
        )
        self._start_task = asyncio.create_task(self._run_start_hook(), name=f"{self.service.short_name}-start")

    async def _run_start_hook(self) -> None:
        try:
            await self.service.start()
        except Exception as err:  # the failure is reported by wait_ready/serve; the server stays NOT_SERVING
            self._startup_error = err
            log.exception("%s failed to start", self.service.short_name)
            self._ready.set()
            return
        if not self._stopping:
            await self._set_health(SERVING)
            # Where the start-up seconds went: one line with every phase (see crucible.runtime.startup).
            log.info("%s ready", self.service.short_name, extra={"startup": STARTUP.summary()})
        self._ready.set()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the start hook finished; re-raise its error if it failed."""
        await asyncio.wait_for(self._ready.wait(), timeout)
        if self._startup_error is not None:
            raise RuntimeError(f"{self.service.short_name} failed to start: {self._startup_error}") from self._startup_error

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, give in-flight ones `grace` seconds, then release resources."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.config.grace_period_s if grace is None else grace
        log.info("%s shutting down (grace %.1fs)", self.service.short_name, grace)
        await self.health.enter_graceful_shutdown()
        if self.config.shutdown_drain_s > 0:
            await asyncio.sleep(self.config.shutdown_drain_s)
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        await self._grpc.stop(grace)
        try:
            await self.service.stop()
        finally:
            if self._metrics_httpd is not None:
                self._metrics_httpd.shutdown()
                self._metrics_httpd.server_close()
            self._stopped.set()
            log.info("%s stopped", self.service.short_name)

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT (or a failed start); returns a process exit code."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        ready = asyncio.create_task(self.wait_ready())
        stop = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({ready, stop}, return_when=asyncio.FIRST_COMPLETED)
        exit_code = 0
        if ready.done() and ready.exception() is not None:
            exit_code = 1
        elif not stop.done():
            await stop
        if not ready.done():
            ready.cancel()
        await self.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        return exit_code


def _channel_options(config: ServerConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.keepalive_min_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.so_reuseport", 0),
    ]


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    """Credentials from the TLS files, checked first (ConfigError naming the file's setting when one is unusable)."""
    material = config.tls_material()
    if material is None:
        raise ConfigError("tls_cert_file", "TLS needs tls_cert_file and tls_key_file")
    cert, key, client_ca = material
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


def create_server(
    config: ServerConfig, service: Service, registry: CollectorRegistry | None = None
) -> tuple[CrucibleServer, int]:
    """Build the server for `service` with every runtime feature wired in; returns it and the bound gRPC port."""
    server = CrucibleServer(config, service, registry or CollectorRegistry())
    return server, server.port


def unimplemented_servicer(base: type, service_descriptor: Any, note: str) -> Any:
    """A servicer for a contract whose methods are not built yet: every call fails with UNIMPLEMENTED, never a fake success."""
    namespace: dict[str, Callable[..., Any]] = {}
    for method in service_descriptor.methods:
        message = f"{service_descriptor.full_name}/{method.name} is not implemented yet ({note})"
        if method.server_streaming:

            async def stream(self: Any, request: Any, context: Any, _message: str = message) -> Any:
                raise Unimplemented(_message)
                yield  # pragma: no cover - makes this an async generator

            namespace[method.name] = stream
        else:

            async def unary(self: Any, request: Any, context: Any, _message: str = message) -> Any:
                raise Unimplemented(_message)

            namespace[method.name] = unary
    return type(f"Unimplemented{base.__name__}", (base,), namespace)()
