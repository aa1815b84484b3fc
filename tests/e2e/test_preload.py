"""The fork server behind `crucible up`: model services forked from one process that imported the libraries once.

Tests use a light preload list (CRUCIBLE_PRELOAD_MODULES) and the cost service, so they need no model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from crucible.clients.health import wait_serving
from crucible.runtime.preload import ForkServer
from tests.conftest import free_port_block

pytestmark = pytest.mark.slow

LIGHT = {"CRUCIBLE_PRELOAD_MODULES": "json,sqlite3"}


def _env(tmp_path):
    return {**os.environ, **LIGHT, "CRUCIBLE_STATE_DIR": str(tmp_path / "state")}


def test_a_forked_service_serves_logs_json_and_reports_its_exit_code(tmp_path):
    port = free_port_block(1)
    env = _env(tmp_path)
    server = ForkServer(env)
    try:
        log = tmp_path / "cost.log"
        proc = server.spawn(["serve", "cost", "--port", str(port)], env, str(log))
        assert asyncio.run(wait_serving(f"127.0.0.1:{port}", timeout=120)).serving
        assert proc.pid > 0 and proc.pid != server.proc.pid and proc.poll() is None
        assert server.ready is not None and server.ready["loaded"] == ["json", "sqlite3"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        lines = log.read_text().splitlines()
        assert lines and all(json.loads(line)["service"] == "cost" for line in lines)
        bad = server.spawn(["serve", "cost", "--port", "not-a-port"], env, str(tmp_path / "bad.log"))
        assert bad.wait(60) == 2  # argparse's usage error, reported by the fork server
    finally:
        server.close()
    assert server.proc.returncode == 0


def test_when_the_fork_server_is_gone_services_start_as_plain_processes(tmp_path):
    port = free_port_block(1)
    env = _env(tmp_path)
    server = ForkServer(env)
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 30
    while not server.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    proc = server.spawn(["serve", "cost", "--port", str(port)], env, str(tmp_path / "cost.log"))
    try:
        assert proc.popen is not None
        assert asyncio.run(wait_serving(f"127.0.0.1:{port}", timeout=120)).serving
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        server.close()


def test_forked_services_stop_when_the_launcher_is_killed(tmp_path):
    """The chain launcher -> fork server -> service: a SIGKILLed launcher leaves no forked service behind."""
    port = free_port_block(1)
    code = (
        "import asyncio, os, time\n"
        "from crucible.clients.health import wait_serving\n"
        "from crucible.runtime.preload import ForkServer\n"
        "env = dict(os.environ)\n"
        "s = ForkServer(env)\n"
        f"p = s.spawn(['serve', 'cost', '--port', '{port}'], env, None)\n"
        f"asyncio.run(wait_serving('127.0.0.1:{port}', timeout=120))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(tmp_path)
    )
    child = int(launcher.stdout.readline())
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the forked cost service outlived its killed launcher")
