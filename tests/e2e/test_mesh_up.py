"""End to end: `crucible up` as a subprocess, then grpcurl (reflection, health), /metrics and `crucible health`.

The mesh runs on a free block of loopback ports; SIGINT must stop all five services cleanly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from crucible.mesh import SERVICES, default_ports
from tests.conftest import free_port_block

pytestmark = pytest.mark.slow


def _grpcurl(*args: str, max_time: int = 10) -> str:
    grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    result = subprocess.run(
        [grpcurl, "-plaintext", "-max-time", str(max_time), *args], capture_output=True, text=True, timeout=max_time + 20
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    base = free_port_block(len(SERVICES))
    log_dir = tmp_path_factory.mktemp("mesh-logs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crucible", "up", "--base-port", str(base), "--log-dir", str(log_dir), "--startup-timeout", "480"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "CRUCIBLE_STATE_DIR": str(log_dir / "state")},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 540  # a loaded CI machine loads the three models slowly
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving;"):
            break
    if not lines or not lines[-1].startswith("serving;"):
        proc.kill()
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in log_dir.glob("*.log"))
        pytest.fail("mesh did not come up:\n" + "".join(lines) + logs)
    yield {"proc": proc, "ports": default_ports(base), "base": base, "banner": "".join(lines), "log_dir": log_dir}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_banner_shows_every_service_serving(mesh):
    for name in SERVICES:
        row = next(line for line in mesh["banner"].splitlines() if line.startswith(name + " "))
        assert "SERVING" in row


def test_up_reports_each_service_as_it_becomes_ready(mesh):
    """Issue 26: up to minutes of silence before `mesh ready`; now one line per service with its start-up time."""
    banner = mesh["banner"]
    assert banner.startswith("starting "), banner
    for name in SERVICES:
        assert re.search(rf"^  {name}\s+ready in\s+\d+\.\ds  127\.0\.0\.1:{mesh['ports'][name]}$", banner, re.M), banner
    assert banner.index("ready in") < banner.index("mesh ready in")


def test_grpcurl_lists_service_health_and_reflection_on_every_port(mesh):
    for name, entry in SERVICES.items():
        listed = _grpcurl(f"127.0.0.1:{mesh['ports'][name]}", "list").split()
        assert entry.proto_service in listed
        assert "grpc.health.v1.Health" in listed
        assert any(s.startswith("grpc.reflection.") for s in listed)


def test_grpcurl_health_check_and_describe_without_proto_files(mesh):
    for name, entry in SERVICES.items():
        out = _grpcurl(
            "-d", f'{{"service": "{entry.proto_service}"}}', f"127.0.0.1:{mesh['ports'][name]}", "grpc.health.v1.Health/Check"
        )
        assert '"status": "SERVING"' in out
    described = _grpcurl(f"127.0.0.1:{mesh['ports']['detector']}", "describe", "crucible.detector.v1.DetectRequest")
    assert "repeated string texts = 1;" in described


def test_metrics_endpoint_exposes_grpc_server_handled_total(mesh):
    for name in SERVICES:
        with urllib.request.urlopen(f"http://127.0.0.1:{mesh['ports'][name] + 1000}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert "grpc_server_handled_total{" in text
        assert 'grpc_service="grpc.health.v1.Health"' in text


def test_crucible_health_command_reports_all_serving(mesh):
    result = subprocess.run(
        [sys.executable, "-m", "crucible", "health", "--base-port", str(mesh["base"])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SERVING") == len(SERVICES)


def test_model_calls_for_the_log_check(mesh):
    """Work for every model service (loading, batching, generation), so their logs hold more than start-up lines."""
    calls = (
        ("detector", "crucible.detector.v1.DetectorService/Detect", {"texts": ["The quick brown fox jumps over the lazy dog."]}),
        ("proposer", "crucible.proposer.v1.ProposerService/Propose",
         {"text": "How do vaccines work?", "mode": "PROPOSE_MODE_PARAPHRASE", "n": 1}),
        ("scorer", "crucible.scorer.v1.ScorerService/ScoreChoices",
         {"items": [{"raw_prompt": "The capital of France is", "choices": [" Paris", " Rome"]}]}),
    )  # fmt: skip
    for name, method, body in calls:
        _grpcurl("-d", json.dumps(body), f"127.0.0.1:{mesh['ports'][name]}", method, max_time=180)


def test_sigint_stops_every_service_cleanly(mesh):
    proc = mesh["proc"]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert "stopped:" in out and out.count("exit 0") == len(SERVICES)
    health = subprocess.run(
        [sys.executable, "-m", "crucible", "health", "--base-port", str(mesh["base"]), "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert health.returncode == 1 and "UNREACHABLE" in health.stdout


def test_every_line_a_service_wrote_is_json(mesh):
    """Issue 26: service logs held tqdm bars, library warnings and gRPC's fork notice between the JSON lines. After
    start-up, model calls and a graceful stop, every line of every service's log is one JSON object."""
    assert mesh["proc"].poll() is not None  # after test_sigint_stops_every_service_cleanly: the logs are complete
    for name in SERVICES:
        lines = (mesh["log_dir"] / f"{name}.log").read_text().splitlines()
        assert len(lines) >= 2, name
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"{name}.log line {number} is not JSON: {line[:300]!r}")
            assert isinstance(record, dict) and record.get("service") == name, (name, number, line[:300])


def test_services_stop_when_the_launcher_is_killed(tmp_path):
    """A SIGKILLed `crucible up` (or test run) must not leave services running: children get SIGTERM on parent death."""
    port = free_port_block(1)
    code = (
        "import asyncio, time\n"
        "from crucible.mesh import MeshLauncher\n"
        f"m = MeshLauncher(['cost'], ports={{'cost': {port}}}, env={{'CRUCIBLE_STATE_DIR': {str(tmp_path)!r}}})\n"
        "m.start()\n"
        "asyncio.run(m.wait_ready(120))\n"
        "print(m.processes['cost'].pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
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
    pytest.fail("the cost service outlived its killed launcher")
