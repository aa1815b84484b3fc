"""The five services of the mesh, their default ports, and a launcher that runs them as child processes.

`crucible up`, `crucible demo` and the end-to-end tests use `MeshLauncher`; each service runs in its own process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from crucible.clients.health import HealthResult, check, wait_serving
from crucible.clients.tables import format_table
from crucible.runtime.logs import QUIET_ENV

if TYPE_CHECKING:
    from crucible.runtime.preload import ForkServer

METRICS_PORT_OFFSET = 1000

#: The services that load models: forked from one process that imported torch and transformers once (see
#: crucible.runtime.preload) instead of each importing them on the same cores.
MODEL_SERVICES = ("detector", "proposer", "scorer")


@dataclasses.dataclass(frozen=True)
class ServiceEntry:
    """Where a service's config class and server factory live, and its default port."""

    name: str
    port: int
    proto_service: str
    config_class: str
    server_factory: str

    def load_config_only(self) -> tuple[type[Any], None]:
        """Import just the config class (cheap: no generated stubs, no torch)."""
        return _import(self.config_class), None

    def load(self) -> tuple[type[Any], Callable[[Any], Any]]:
        """Import the config class and create_server function (lazily: only the services started pay for their deps)."""
        return _import(self.config_class), _import(self.server_factory)


def _import(path: str) -> Any:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def _entry(name: str, port: int, proto: str) -> ServiceEntry:
    return ServiceEntry(
        name,
        port,
        f"crucible.{name}.v1.{proto}",
        f"crucible.{name}.config:{name.capitalize()}Config",
        f"crucible.{name}.server:create_server",
    )


SERVICES: dict[str, ServiceEntry] = {
    e.name: e
    for e in (
        _entry("detector", 50051, "DetectorService"),
        _entry("proposer", 50052, "ProposerService"),
        _entry("scorer", 50053, "ScorerService"),
        _entry("scheduler", 50054, "SchedulerService"),
        _entry("cost", 50055, "CostService"),
    )
}


def default_ports(base_port: int | None = None) -> dict[str, int]:
    """Ports of the five services: the defaults, or base_port, base_port+1, ... in SERVICES order."""
    if base_port is None:
        return {name: e.port for name, e in SERVICES.items()}
    return {name: base_port + i for i, name in enumerate(SERVICES)}


class MeshLauncher:
    """Runs services as `python -m crucible serve NAME` children on one host and stops them with SIGTERM."""

    def __init__(
        self,
        services: Sequence[str] | None = None,
        *,
        host: str = "127.0.0.1",
        ports: Mapping[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        extra_args: Mapping[str, Sequence[str]] | None = None,
        preload: bool | None = None,
    ) -> None:
        self.services = list(services or SERVICES)
        unknown = [s for s in self.services if s not in SERVICES]
        if unknown:
            raise ValueError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
        self.host = host
        self.ports = {**default_ports(), **(ports or {})}
        # Progress bars off, the gRPC fork notice silenced: the services' logs stay one JSON object per line.
        self.env = {**QUIET_ENV, **os.environ, **(env or {})}
        self.log_dir = log_dir
        self.extra_args = extra_args or {}
        # preload: fork the model services from a fork server (default: on Linux unless CRUCIBLE_PRELOAD=0)
        if preload is None:
            preload = sys.platform == "linux" and self.env.get("CRUCIBLE_PRELOAD", "1") != "0"
        self.preload = preload
        self.fork_server: ForkServer | None = None
        self.processes: dict[str, Any] = {}  # subprocess.Popen, or ForkedProcess (the same methods) when preloaded
        self._logs: list[IO[bytes]] = []

    def address(self, name: str) -> str:
        return f"{self.host}:{self.ports[name]}"

    def metrics_url(self, name: str) -> str:
        return f"http://{self.host}:{self.ports[name] + METRICS_PORT_OFFSET}/metrics"

    def start(self) -> None:
        """Spawn every service; their logs go to log_dir/NAME.log when a log dir is given, else to our stderr.

        With preload the model services are forked from one fork server once it imported torch and transformers
        (its own log: log_dir/preload.log); the other services start at once as plain processes."""
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        models = [n for n in self.services if n in MODEL_SERVICES]
        if self.preload and models and self.fork_server is None:
            from crucible.runtime.preload import ForkServer

            server_log: IO[bytes] | None = None
            if self.log_dir is not None:
                server_log = open(self.log_dir / "preload.log", "ab")  # noqa: SIM115 - closed in stop()
                self._logs.append(server_log)
            self.fork_server = ForkServer(self.env, stderr=server_log)
        for name in self.services:
            extra = list(self.extra_args.get(name, ()))
            if name == "scheduler" and "cost" in self.services and "--cost-address" not in extra:
                extra += ["--cost-address", self.address("cost")]  # offers, estimates and spend from this mesh's cost
            argv = ["serve", name, "--host", self.host, "--port", str(self.ports[name]), *extra]
            log = None if self.log_dir is None else self.log_dir / f"{name}.log"
            if self.fork_server is not None and name in MODEL_SERVICES:
                self.processes[name] = self.fork_server.spawn(argv, self.env, None if log is None else str(log))
                continue
            cmd = [sys.executable, "-m", "crucible", *argv]
            out: IO[bytes] | None = None
            if log is not None:
                out = open(log, "ab")  # noqa: SIM115 - closed in stop()
                self._logs.append(out)
            self.processes[name] = subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=out, start_new_session=True, preexec_fn=_stop_with_parent
            )

    async def wait_ready(
        self, timeout: float = 180.0, on_ready: Callable[[str, HealthResult, float], None] | None = None
    ) -> dict[str, HealthResult]:
        """Wait until every service answers SERVING; fails early, naming the service, if a child exits.

        `on_ready(name, result, seconds)` is called as each service becomes ready (seconds since this call).
        """
        started = time.perf_counter()

        async def one(name: str) -> HealthResult:
            waiter = asyncio.create_task(wait_serving(self.address(name), timeout=timeout))
            while not waiter.done():
                code = self.processes[name].poll()
                if code is not None:
                    waiter.cancel()
                    hint = f"; see {self.log_dir / (name + '.log')}" if self.log_dir else ""
                    raise RuntimeError(f"{name} exited with code {code} before becoming ready{hint}")
                await asyncio.wait({waiter}, timeout=0.2)
            result = waiter.result()
            if on_ready is not None:
                on_ready(name, result, time.perf_counter() - started)
            return result

        results = await asyncio.gather(*(one(n) for n in self.services))
        return dict(zip(self.services, results, strict=True))

    async def health(self) -> dict[str, HealthResult]:
        """One health check of every service."""
        results = await asyncio.gather(*(check(self.address(n)) for n in self.services))
        return dict(zip(self.services, results, strict=True))

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every child (graceful shutdown), SIGKILL the ones still alive after `timeout`; returns exit codes."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in self.processes.items():
            try:
                codes[name] = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                if isinstance(proc, subprocess.Popen):
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                codes[name] = proc.wait()
        if self.fork_server is not None:
            self.fork_server.close()
            self.fork_server = None
        for handle in self._logs:
            handle.close()
        self._logs.clear()
        return codes


def _stop_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM (a graceful stop) when the launching process dies, even by
    SIGKILL, so a killed `crucible up` or test run leaves no services behind. Elsewhere a no-op."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def health_table(mesh: MeshLauncher, results: Mapping[str, HealthResult]) -> str:
    """The health of each service with its gRPC address and metrics URL."""
    rows = [
        (name, SERVICES[name].proto_service, mesh.address(name), r.status, f"{r.latency_ms:.1f}", mesh.metrics_url(name))
        for name, r in results.items()
    ]
    return format_table(("service", "contract", "address", "health", "ms", "metrics"), rows)


def repo_root() -> Path | None:
    """The source checkout this package runs from, if any (used to find protos/ and examples/ for tooling)."""
    root = Path(__file__).resolve().parents[2]  # services/crucible/mesh.py -> the checkout
    return root if (root / "protos").is_dir() else None
