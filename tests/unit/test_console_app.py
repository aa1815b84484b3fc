"""The console app without a mesh: the chart asset may be missing (the pages say so), inputs are bounded first."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import httpx
import pytest

from crucible.clients.mesh import MeshConfig
from crucible.console.app import STATIC_DIR, create_app
from crucible.console.config import ConsoleConfig
from crucible.console.httpkit import BadInput, allowed_hosts, jsonable, number_param

UNREACHABLE = MeshConfig.from_mapping(
    {name: {"addresses": ["127.0.0.1:9"]} for name in ("detector", "proposer", "scorer", "scheduler", "cost")} | {"timeout_s": 1}
)


async def test_without_the_chart_asset_the_console_says_so(tmp_path: Path) -> None:
    static = tmp_path / "static"
    shutil.copytree(STATIC_DIR, static, ignore=shutil.ignore_patterns("vendor"))
    app = create_app(ConsoleConfig(), UNREACHABLE, static_dir=static)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok", "chart_available": False}
        assert (await http.get("/static/vendor/uPlot.iife.min.js")).status_code == 404
        job_js = (await http.get("/static/job.js")).text
        assert "make console-assets" in job_js and "innerHTML" not in job_js
        # The mesh is down: a clear 503 naming the gRPC status, not a stack trace.
        down = await http.get("/api/jobs")
        assert down.status_code == 503 and down.json()["error"]["code"] == "UNAVAILABLE"


def test_no_page_script_writes_html() -> None:
    for script in STATIC_DIR.glob("*.js"):
        text = script.read_text()
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text, script


def test_inputs_bounded_and_named() -> None:
    assert number_param({"hours": "2.5"}, "hours") == 2.5
    for bad in ("nan", "inf", "-1", "1e99", "x" * 40, "abc"):
        with pytest.raises(BadInput) as info:
            number_param({"hours": bad}, "hours", high=1000)
        assert info.value.field == "hours"
    assert jsonable({"t": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "d": dt.timedelta(seconds=90), "x": float("nan")}) == {
        "t": "2026-01-01T00:00:00+00:00",
        "d": 90.0,
        "x": None,
    }
    assert "evil.example" not in allowed_hosts("127.0.0.1") and allowed_hosts("0.0.0.0") == ["*"]
