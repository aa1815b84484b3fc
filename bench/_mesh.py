"""Benchmark helper: bring up the real mesh (child processes) on a free loopback port block and tear it down.

Used by bench/reward.py and bench/attack.py so both measure the services as users run them.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from crucible.mesh import MeshLauncher, default_ports


def free_base_port(count: int = 5) -> int:
    """A base port with base..base+count-1 and their +1000 metrics ports free on 127.0.0.1."""
    for base in range(42000, 48000, 10):
        try:
            sockets = []
            for port in [*range(base, base + count), *range(base + 1000, base + 1000 + count)]:
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port block")


@contextlib.asynccontextmanager
async def running_mesh(services: Sequence[str], extra_args: dict[str, list[str]] | None = None) -> AsyncIterator[int]:
    """Start `services`, wait until SERVING, yield the base port, stop them (logs in a temp folder)."""
    base = free_base_port()
    work = Path(tempfile.mkdtemp(prefix="crucible-bench-"))
    mesh = MeshLauncher(
        services,
        ports=default_ports(base),
        log_dir=work / "logs",
        env={"CRUCIBLE_STATE_DIR": str(work / "state"), "HF_HUB_OFFLINE": "1"},
        extra_args=extra_args or {},
    )
    mesh.start()
    try:
        await mesh.wait_ready(timeout=300)
        yield base
    finally:
        mesh.stop()
