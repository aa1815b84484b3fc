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
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "CRUCIBLE_STATE_DIR": str(tmp_path / "user-state")},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    for heading in ("== Reward loop", "== Attack loop", "== nanoGPT job", "== Summary"):
        assert heading in out
    summary = dict(line.split(None, 1) for line in out.split("== Summary")[1].splitlines()[3:] if len(line.split(None, 1)) == 2)
    assert summary["nanogpt_state"].strip() == "succeeded"
    assert summary["rewrites_scored"].strip() == "6"
    # The attack picks questions the target answers right from the built-in set (no data folder is read), so it
    # attacks two whatever is beside the checkout, and shows each iteration's best candidate and verdict.
    assert int(summary["attack_attacked"]) >= 2, out
    assert int(summary["attack_errors"]) == 0
    assert "valid" in out.split("== Attack loop")[1] and " it 1: objective " in out
    assert "attack_valid_candidate_rate" in summary
    assert "clean (every service exited 0 after SIGTERM)" in out and out.rstrip().endswith("demo finished")
    # Issue 26: the demo's job lives in its own state folder, never in the user's (it headed every later `jobs list`);
    # each service is reported as it becomes ready; the summary says why the job ran twice and why spend != estimate.
    user_state = tmp_path / "user-state"
    assert not user_state.exists() or not any(user_state.rglob("*.db")), sorted(user_state.rglob("*"))
    assert all(f"  {name:<9} ready in " in out for name in ("detector", "proposer", "scorer", "scheduler", "cost")), out
    assert "The nanoGPT job ran 2 attempts" in out and "Estimate vs spend:" in out
