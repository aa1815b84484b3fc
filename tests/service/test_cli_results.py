"""Truthful results (issue 26, point 6): ended jobs show their last step and no ETA, failure reasons in `jobs list`,
and the demo keeps to its own state folder, shows one attempt's step with that attempt's loss, and explains its numbers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import types

import pytest
from google.protobuf import duration_pb2

from crucible.api.scheduler.v1 import job_pb2
from crucible.cli import main
from crucible.demo import explain, live_line
from crucible.runtime.config import load_config
from crucible.scheduler.cli_text import end_reason, progress_text
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.providers.dryrun import DryRunProvider
from crucible.scheduler.server import create_server as create_scheduler


def _job(state: int, step: int = 299, total: int = 300, reason: str = "") -> job_pb2.Job:
    job = job_pb2.Job(job_id="job-1", state=state)
    job.progress.step = step
    job.progress.total_steps = total
    job.progress.metrics["loss"] = 1.5
    job.progress.eta.CopyFrom(duration_pb2.Duration(seconds=1))
    job.transitions.add(to_state=state, reason=reason or "running")
    return job


def test_a_succeeded_job_shows_its_last_step_as_the_whole_run_and_no_eta():
    text = progress_text(_job(job_pb2.JOB_STATE_SUCCEEDED))
    assert "300/300" in text and "ETA" not in text and "299/300" not in text
    assert "#" * 24 in text  # a full bar


@pytest.mark.parametrize("state", [job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED])
def test_a_failed_or_cancelled_job_keeps_its_step_and_has_no_eta(state):
    text = progress_text(_job(state, step=120))
    assert "120/300" in text and "ETA" not in text


def test_a_running_job_still_shows_its_eta():
    assert "ETA 0:00:01" in progress_text(_job(job_pb2.JOB_STATE_RUNNING))


def test_end_reason_is_the_last_transition_of_failed_and_cancelled_jobs_only():
    assert end_reason(_job(job_pb2.JOB_STATE_FAILED, reason="exit status 3")) == "exit status 3"
    assert end_reason(_job(job_pb2.JOB_STATE_SUCCEEDED, reason="exit status 0")) == ""


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-results")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        sched, port = create_scheduler(
            load_config(
                SchedulerConfig,
                "scheduler",
                env={},
                port=0,
                metrics_enabled=False,
                poll_interval_s=0.2,
                state_dir=str(folder / "state"),
            ),
            providers={"dryrun": DryRunProvider(duration_s=60.0)},
        )
        await sched.start()
        await sched.wait_ready(30)
        return sched, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    yield f"127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_jobs_list_shows_why_a_job_failed(scheduler, capsys):
    address = ["--address", scheduler]
    assert main(["jobs", "submit", *address, "--provider", "dryrun", "--max-duration", "1s", "--", "sleep", "60"]) == 0
    job_id = next(line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("job "))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert main(["jobs", "list", *address]) == 0
        table = capsys.readouterr().out
        row = next(line for line in table.splitlines() if line.startswith(job_id))
        if " FAILED " in row:
            break
        time.sleep(0.5)
    header = table.splitlines()[0]
    assert header.split()[-1] == "reason", header
    assert " FAILED " in row and row.endswith("stopped: maximum duration 1s reached"), row


def _at(seconds: float) -> dt.datetime:
    return dt.datetime(2026, 12, 7, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)


def _plain_job(progress_time: float, step: int, loss: float) -> types.SimpleNamespace:
    attempts = [
        types.SimpleNamespace(attempt=1, create_time=_at(0), start_time=_at(1)),
        types.SimpleNamespace(attempt=2, create_time=_at(50), start_time=_at(52)),
    ]
    progress = types.SimpleNamespace(step=step, total_steps=60, metrics={"loss": loss}, update_time=_at(progress_time))
    return types.SimpleNamespace(state="running", attempts=attempts, progress=progress)


def test_the_demo_line_after_a_relaunch_never_mixes_attempts():
    """Attempt 1 reported step 40 (loss 2.5) before it crashed; attempt 2 has started but not reported yet."""
    stale = live_line(_plain_job(progress_time=45, step=40, loss=2.5))
    assert "attempt 2" in stale and "2.5" not in stale and "step 40" not in stale and "loss -" in stale
    fresh = live_line(_plain_job(progress_time=60, step=30, loss=1.9))
    assert "attempt 2 step 30/60 loss 1.9000" in fresh


def test_the_demo_summary_explains_the_crash_and_estimate_vs_spend():
    lines = explain(
        {
            "nanogpt_state": "succeeded",
            "nanogpt_attempts": 2,
            "nanogpt_resumed": "resumed from step 29",
            "nanogpt_estimated_usd": 0.0001,
            "nanogpt_expected_seconds": 60.0,
            "nanogpt_spent_usd": 0.00021,
            "nanogpt_runtime_seconds": 126.0,
            "nanogpt_price_usd_per_hour": 0.006,
        }
    )
    text = " ".join(lines)
    assert "2 attempts" in text and "resumed from the checkpoint" in text and "on purpose" in text
    assert "2.1x" in text and "expected_duration" in text and "126 s" in text


def test_the_demo_uses_its_own_state_folder(tmp_path, monkeypatch, capsys):
    import crucible.cli as cli

    seen: dict = {}

    async def bring_up(args, extra_args=None):
        seen["extra_args"] = extra_args
        raise RuntimeError("stop here")

    monkeypatch.setattr(cli, "_bring_up", bring_up)
    assert main(["demo", "--no-console", "--log-dir", str(tmp_path)]) == 1
    extra = seen["extra_args"]
    for name in ("scheduler", "cost"):
        flag, folder = extra[name]
        assert flag == "--state-dir" and folder.startswith(str(tmp_path))
    assert "its own state in" in capsys.readouterr().out
