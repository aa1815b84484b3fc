"""`crucible up` starts the web console beside the services (and `--no-console` does not); Ctrl-C stops both.

Runs only the scheduler and cost services (no model services) to stay fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import free_port_block
from tests.e2e.test_console import _free_port


def _up(tmp_path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    base = free_port_block(5)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crucible",
            "up",
            "--services",
            "scheduler,cost",
            "--base-port",
            str(base),
            "--log-dir",
            str(tmp_path / "logs"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "CRUCIBLE_STATE_DIR": str(tmp_path / "state")},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving;"):
            return proc, lines
    proc.kill()
    pytest.fail("crucible up did not come up:\n" + "".join(lines))


def test_up_starts_the_console_and_stops_it(tmp_path) -> None:
    port = _free_port()
    proc, lines = _up(tmp_path, "--console-port", str(port))
    try:
        assert f"console: http://127.0.0.1:{port}/\n" in lines
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["status"] == "ok"
        jobs = httpx.get(f"http://127.0.0.1:{port}/api/jobs", timeout=10)  # the console reaches this mesh's scheduler
        assert jobs.status_code == 200 and jobs.json()["jobs"] == []
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_no_console_flag(tmp_path) -> None:
    proc, lines = _up(tmp_path, "--no-console")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0 and not any(line.startswith("console:") for line in lines + out.splitlines())
