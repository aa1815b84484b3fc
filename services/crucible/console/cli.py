"""`crucible console`: serve the web console (uvicorn) in the foreground; and the child process `crucible up` starts.

The mesh addresses, token and TLS come from the SDK configuration (CRUCIBLE_<SVC>_ADDRESS, CRUCIBLE_CLIENT_*).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from crucible.console.config import ConsoleConfig
from crucible.runtime.config import add_arguments, load_config
from crucible.runtime.errors import ConfigError
from crucible.runtime.logs import configure_logging

log = logging.getLogger(__name__)


def _mesh_env(args: argparse.Namespace) -> dict[str, str]:
    """CRUCIBLE_<SVC>_ADDRESS for --base-port (the ports `crucible up --base-port N` uses)."""
    from crucible.mesh import default_ports

    if args.base_port is None:
        return {}
    return {f"CRUCIBLE_{name.upper()}_ADDRESS": f"127.0.0.1:{port}" for name, port in default_ports(args.base_port).items()}


def cmd_console(args: argparse.Namespace) -> int:
    """Serve the console until SIGTERM/SIGINT."""
    import uvicorn

    from crucible.clients.mesh import MeshConfig
    from crucible.console.app import create_app

    try:
        config = load_config(ConsoleConfig, "console", args=args)
        mesh_config = MeshConfig.from_env({**os.environ, **_mesh_env(args)})
    except (ConfigError, ValueError, OSError) as err:
        print(f"crucible console: invalid setting {err}", file=sys.stderr)
        return 2
    configure_logging("console", config.log_level, config.log_format)
    log.info(
        "starting console",
        extra={"config": config.public_dict(), "mesh": {n: list(c.addresses) for n, c in mesh_config.services.items()}},
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, mesh_config),
            host=config.host,
            port=config.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            print(f"console: http://{'127.0.0.1' if config.host in ('0.0.0.0', '') else config.host}:{port}/", flush=True)
        await task

    asyncio.run(run())
    return 0 if server.started else 1


def add_commands(subparsers: Any) -> None:
    """Add `crucible console` to the main parser."""
    p = subparsers.add_parser(
        "console", help="serve the web console (default http://127.0.0.1:8080)", description=(ConsoleConfig.__doc__ or "").strip()
    )
    add_arguments(p, ConsoleConfig)
    p.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="talk to the mesh `crucible up --base-port N` started (default: the SDK configuration)",
    )
    p.set_defaults(handler=cmd_console)


def port_or_free(host: str, port: int) -> int:
    """`port` when it can be bound on `host` now, else a free port (so a second mesh still gets a console)."""
    bind = "127.0.0.1" if host in ("0.0.0.0", "") else host
    for candidate in (port, 0):
        with socket.socket() as s:
            try:
                s.bind((bind, candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    return port


class ConsoleProcess:
    """The console as a child process of `crucible up`, pointed at that mesh's addresses."""

    def __init__(
        self,
        host: str,
        port: int,
        addresses: Mapping[str, str],
        log_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host, self.port, self.addresses, self.log_dir = host, port, dict(addresses), log_dir
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        from crucible.mesh import _stop_with_parent

        env = {**os.environ, **self.env, **{f"CRUCIBLE_{n.upper()}_ADDRESS": a for n, a in self.addresses.items()}}
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_dir / f"console-{self.port}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "crucible", "console", "--host", self.host, "--port", str(self.port)],
            env=env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for /healthz; RuntimeError when the child exits first, TimeoutError past `timeout`."""
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    hint = f"; see {self.log_dir / f'console-{self.port}.log'}" if self.log_dir else ""
                    raise RuntimeError(f"console exited with code {self.process.returncode}{hint}")
                try:
                    if (await client.get(self.url + "healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"console not ready at {self.url} after {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> int | None:
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            try:
                code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        if self._log is not None:
            self._log.close()
        return code
