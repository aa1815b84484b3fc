"""`crucible demo` (what `make run` runs) end to end: mesh up, reward loop, attack, nanoGPT job, summary, clean stop.

Runs on a free port block with the embedded models; the demo must exit 0 and print each section.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import free_port_block

pytestmark = pytest.mark.slow


def test_demo_runs_every_section_and_stops_cleanly(tmp_path):
    base = free_port_block(5)
    result = subprocess.run(
        [sys.executable, "-m", "crucible", "demo", "--base-port", str(base), "--log-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "CRUCIBLE_STATE_DIR": str(tmp_path / "state")},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    for heading in ("== Reward loop", "== Attack loop", "== nanoGPT job", "== Summary"):
        assert heading in out
    summary = dict(line.split(None, 1) for line in out.split("== Summary")[1].splitlines()[3:] if len(line.split(None, 1)) == 2)
    assert summary["nanogpt_state"].strip() == "succeeded"
    assert "attack_attacked" in summary and summary["rewrites_scored"].strip() == "6"
    assert "clean (every service exited 0 after SIGTERM)" in out and out.rstrip().endswith("demo finished")
