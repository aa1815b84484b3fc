"""The demo's nanoGPT section (what `make run` shows) on the default file:// object store: the first attempt stops
after a checkpoint, the relaunch resumes from it in a fresh working folder, and the demo prints "resumed from step N".
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from crucible.clients.channel import ChannelConfig
from crucible.clients.scheduler import SchedulerClient
from crucible.demo import nanogpt_section
from crucible.runtime.config import load_config
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.server import create_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nanogpt"


@pytest.mark.slow
async def test_demo_nanogpt_resumes_after_the_first_attempt_stops(tmp_path: Path, capsys) -> None:
    cfg = load_config(
        SchedulerConfig,
        "scheduler",
        env={},
        port=0,
        state_dir=str(tmp_path / "state"),
        poll_interval_s=0.2,
        metrics_enabled=False,
        code_roots=(str(EXAMPLE),),
    )
    server, port = create_server(cfg)
    await server.start()
    await server.wait_ready(30)
    try:
        async with SchedulerClient(ChannelConfig((f"127.0.0.1:{port}",))) as client:
            result = await nanogpt_section(types.SimpleNamespace(scheduler=client))
    finally:
        await server.stop(0)
    out = capsys.readouterr().out
    assert result["nanogpt_state"] == "succeeded" and result["nanogpt_steps"] == 60, out  # a finished run: 60 of 60
    # after the relaunch, no line shows attempt 2 with attempt 1's loss: each line names its attempt
    assert "attempt 2 step" in out and "attempt 1 step" in out
    assert result["nanogpt_resumed"] == "resumed from step 29", out
    assert "attempt 1: crashing on purpose at iter 45" in out
    assert "attempt 2: resumed from step 29: file://" in out and "continuing at iter 30" in out
