"""One CLI (issue 26, point 5): the same --json, durations, GPU strings, connection errors and job files everywhere.

Real cost and scheduler servers (the shipped catalog, no provider keys) run in a thread; the CLI runs in-process.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from crucible.cli import main
from crucible.clients.cli_common import parse_duration, parse_gpus
from crucible.clients.jobfile import JobFileError, load_job_file
from crucible.cost.config import CostConfig
from crucible.cost.server import create_server as create_cost
from crucible.runtime.config import load_config
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.server import create_server as create_scheduler
from tests.conftest import free_port_block

REPO = Path(__file__).resolve().parents[2]
CLIENT_ENV = ("CRUCIBLE_CLIENT_CONFIG", "CRUCIBLE_CLIENT_TOKEN", "CRUCIBLE_CLIENT_TOKEN_FILE", "CRUCIBLE_CLIENT_TLS")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-conventions")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        cost, cost_port = create_cost(
            load_config(CostConfig, "cost", env={}, port=0, metrics_enabled=False, state_dir=str(folder / "cost"))
        )
        await cost.start()
        await cost.wait_ready(30)
        sched, sched_port = create_scheduler(
            load_config(
                SchedulerConfig,
                "scheduler",
                env={},
                port=0,
                metrics_enabled=False,
                state_dir=str(folder / "scheduler"),
                cost_address=f"127.0.0.1:{cost_port}",
            )
        )
        await sched.start()
        await sched.wait_ready(30)
        return [sched, cost], sched_port, cost_port

    servers, sched_port, cost_port = asyncio.run_coroutine_threadsafe(start(), loop).result(120)
    yield {"scheduler": f"127.0.0.1:{sched_port}", "cost": f"127.0.0.1:{cost_port}", "folder": folder}
    for s in servers:
        asyncio.run_coroutine_threadsafe(s.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(autouse=True)
def _no_client_config(monkeypatch):
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("LAMBDA_API_KEY", "RUNPOD_API_KEY", "PAPERSPACE_API_KEY", "CRUCIBLE_SECRETS_FILE"):
        monkeypatch.delenv(name, raising=False)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 2
        if not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json_lines(out: str) -> list[dict]:
    lines = out.splitlines()
    assert lines, "no output"
    rows = [json.loads(line) for line in lines]  # every line is a whole JSON object
    assert all(isinstance(r, dict) for r in rows)
    return rows


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)} - {k for k in value if k.isupper()}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def _snake(rows: list[dict], ignore: set[str] = frozenset()) -> None:
    keys = {k for r in rows for k in _keys(r)} - ignore
    camel = sorted(k for k in keys if re.search(r"[a-z][A-Z]", k))
    assert not camel, f"camelCase keys in --json output: {camel}"


def test_json_is_one_snake_case_object_per_line_for_jobs_and_cost(mesh, capsys):
    s, c = ["--address", mesh["scheduler"]], ["--address", mesh["cost"]]
    code, out, err = _run(capsys, "jobs", "submit", *s, "--provider", "dryrun", "--env", "MY_VAR=1", "--", "echo", "hi")
    assert code == 0, err
    job_id = next(line.split()[1] for line in out.splitlines() if line.startswith("job "))
    for argv, ignore in (
        (["jobs", "submit", *s, "--provider", "dryrun", "--json", "--", "true"], set()),
        (["jobs", "list", *s, "--json"], {"MY_VAR"}),
        (["jobs", "get", job_id, *s, "--json"], {"MY_VAR"}),
        (["jobs", "providers", *s, "--json"], set()),
        (["cost", "offers", *c, "--gpu", "A100-80GB", "--limit", "3", "--json"], set()),
        (["cost", "compare", *c, "--gpu", "A100-80GB", "--limit", "3", "--json"], set()),
        (["cost", "estimate", "modal/H100/any/on-demand", "--duration", "1h", *c, "--json"], set()),
        (["cost", "budget", "create", "--scope", "user:cli", "--limit", "5", *c, "--json"], set()),
        (["cost", "budget", "list", *c, "--json"], set()),
    ):
        code, out, err = _run(capsys, *argv)
        assert code == 0, (argv, err)
        rows = _json_lines(out)
        _snake(rows, ignore)
        if argv[:2] == ["jobs", "submit"]:
            assert len(rows) == 1 and rows[0]["job_id"].startswith("job-") and rows[0]["state"] == "JOB_STATE_PENDING"
        if argv[:2] == ["jobs", "list"]:
            assert job_id in [r["job_id"] for r in rows]
        if argv[:2] == ["jobs", "get"]:
            assert len(rows) == 1 and rows[0]["job_id"] == job_id and rows[0]["spec"]["env"] == {"MY_VAR": "1"}
        if argv[:2] == ["cost", "offers"]:
            assert len(rows) == 3 and all(r["gpu_name"] == "A100-80GB" for r in rows)
        if argv[:2] == ["cost", "budget"]:
            assert all("budget_id" in r for r in rows)


def test_compare_groups_regions_and_honours_limit_in_json(mesh, capsys):
    c = ["--address", mesh["cost"]]
    code, out, err = _run(capsys, "cost", "compare", *c, "--gpu", "A100-80GB", "--limit", "8", "--json", "--regions")
    assert code == 0, err
    regions = _json_lines(out)
    assert len(regions) == 8  # --limit applies to --json too (it printed every feasible offer before)
    code, out, err = _run(capsys, "cost", "compare", *c, "--gpu", "A100-80GB", "--limit", "8", "--json")
    assert code == 0, err
    groups = _json_lines(out)
    pairs = [(g["offer"]["provider"], g["offer"]["gpu_name"], g["offer"]["gpu_count"], g["offer"]["spot"]) for g in groups]
    assert len(pairs) == len(set(pairs)) and len(pairs) >= 2  # one row per provider x GPU type, not 8 RunPod regions
    assert [g["recommended"] for g in groups].count(True) == 1 and groups[0]["recommended"]
    top = groups[0]
    assert top["regions_at_price"] >= 1 and top["offer"]["region"] in top["regions"] and top["region_count"] >= 1
    totals = [g["cost"]["total_usd"] for g in groups]
    assert totals == sorted(totals)
    code, out, err = _run(capsys, "cost", "compare", *c, "--gpu", "A100-80GB", "--limit", "8")
    assert code == 0, err
    table = out.split("recommended:")[0]
    assert re.search(r"skypilot-catalog \d{4}-\d\d-\d\d", table)  # the source: a short name and a date, no URL
    assert "github.com" not in table and "--regions lists each region" in out
    assert "\n* " in table or table.splitlines()[2].startswith("*")


def test_durations_accept_units_everywhere(mesh, capsys):
    assert [parse_duration(t) for t in ("90s", "30m", "1h", "1h30m", "2d", "3600")] == [90, 1800, 3600, 5400, 172800, 3600]
    s = ["--address", mesh["scheduler"]]
    code, out, err = _run(
        capsys, "jobs", "submit", *s, "--provider", "dryrun", "--max-duration", "1h30m", "--expected-duration", "90s", "--",
        "true",
    )  # fmt: skip
    assert code == 0, err
    job_id = next(line.split()[1] for line in out.splitlines() if line.startswith("job "))
    code, out, err = _run(capsys, "jobs", "get", job_id, *s, "--json")
    spec = json.loads(out)["spec"]
    assert spec["max_duration"] == "5400s" and spec["expected_duration"] == "90s"
    code, out, err = _run(capsys, "cost", "compare", "--address", mesh["cost"], "--duration", "30m", "--json", "--limit", "1")
    assert code == 0 and json.loads(out)["cost"]["runtime"] == "1800s", err
    code, _, err = _run(capsys, "jobs", "submit", *s, "--max-duration", "soon", "--", "true")
    assert code == 2 and "expected a duration such as 90s, 30m, 1h" in err


def test_gpu_resource_strings_and_family_names(mesh, capsys):
    assert parse_gpus("A100:1") == (["A100"], 1)
    assert parse_gpus("h100:8") == (["H100"], 8)
    assert parse_gpus("A100-80GB") == (["A100-80GB"], 1)
    assert parse_gpus("2") == ([], 2)
    c = ["--address", mesh["cost"]]
    code, out, err = _run(capsys, "cost", "compare", *c, "--gpus", "A100:1", "--regions", "--limit", "1000", "--json")
    assert code == 0, err
    rows = _json_lines(out)
    assert {r["offer"]["gpu_name"] for r in rows} == {"A100-40GB", "A100-80GB"}  # the family: every A100 variant
    totals = [r["cost"]["total_usd"] for r in rows]
    assert totals == sorted(totals)  # cheapest first
    s = ["--address", mesh["scheduler"]]
    code, out, err = _run(
        capsys, "jobs", "submit", *s, "--provider", "runpod", "--gpus", "A100:1", "--dry-run", "--json", "--", "true"
    )
    assert code == 0, err
    shown = json.loads(out)
    assert shown["offer"]["gpu_name"].startswith("A100-") and shown["offer"]["gpu_count"] == 1
    code, _, err = _run(capsys, "jobs", "submit", *s, "--gpus", "A100:x", "--", "true")
    assert code == 2 and "expected GPUs such as A100:1" in err


def test_connection_problems_name_the_address_and_the_fix(mesh, capsys):
    closed = f"127.0.0.1:{free_port_block(1)}"
    code, _, err = _run(capsys, "jobs", "list", "--address", closed)
    assert code == 1 and f"cannot reach the scheduler service at {closed}" in err and "crucible up" in err
    code, _, err = _run(capsys, "cost", "offers", "--address", closed)
    assert code == 1 and f"cannot reach the cost service at {closed}" in err and "--address" in err
    # a port that belongs to another service: say so, not "Method not found!"
    code, _, err = _run(capsys, "cost", "offers", "--address", mesh["scheduler"])
    assert code == 1 and f"{mesh['scheduler']} answered but is not the cost service" in err
    code, _, err = _run(capsys, "jobs", "list", "--address", mesh["cost"])
    assert code == 1 and "is not the scheduler service" in err and "50054" in err
    for text in (err,):
        assert "Traceback" not in text and "_InactiveRpcError" not in text and "AioRpcError" not in text


def test_detect_against_a_wrong_port_says_so(mesh, tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text('"The quick brown fox jumps over the lazy dog."\n')
    code, _, err = _run(capsys, "detect", str(texts), "--address", mesh["cost"], "--timeout", "10")
    assert code == 1 and "is not the detector service" in err and "_InactiveRpcError" not in err, err


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["reward", "--data", "nosuch.jsonl"], "cannot read --data nosuch.jsonl"),
        (["jobs", "submit", "nosuch.yaml"], "nosuch.yaml: cannot read the job file"),
        (["cost", "compare", "--duration", "3 fortnights"], "expected a duration"),
        (["cost", "compare", "--limit", "0"], "at least 1"),
        (["jobs", "submit", "--provider", "local"], "nothing to run"),
    ],
)
def test_user_mistakes_get_a_sentence_not_a_traceback(argv, expected, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "crucible", *argv, "--address", "127.0.0.1:1"] if argv[0] != "reward" else
        [sys.executable, "-m", "crucible", *argv],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_the_example_job_files_parse(tmp_path):
    nanogpt = load_job_file(REPO / "examples/nanogpt/job.yaml")
    assert nanogpt.name == "nanogpt-shakespeare" and nanogpt.provider == ["local"]
    assert nanogpt.command[:2] == ["sh", "-c"] and "python train.py" in nanogpt.command[2]
    assert nanogpt.input == ["builtin:tinyshakespeare"] and nanogpt.max_duration == 3600
    assert Path(nanogpt.code_dir).resolve() == (REPO / "examples/nanogpt").resolve()
    grpo = load_job_file(REPO / "examples/grpo/job.yaml")
    assert "GRPO_MESH=detector=127.0.0.1:50051,proposer=127.0.0.1:50052" in grpo.env and grpo.max_restarts == 2


@pytest.mark.parametrize(
    "text,field",
    [
        ("run: python x.py\nresoures: {gpus: A100:1}\n", "resoures: unknown key"),
        ("run: python x.py\nresources: {gpus: A100:lots}\n", "resources.gpus: expected GPUs such as A100:1"),
        ("run: python x.py\nmax_duration: soon\n", "max_duration: expected a duration"),
        ("name: no-run\n", "run: required"),
        ("run: [python\n", "not valid YAML (line 2"),
        ("run: python x.py\nenvs: {1BAD: x}\n", "envs.1BAD"),
        ("run: python x.py\nprovider_policy: random\n", "provider_policy: expected one of explicit"),
        ("- run\n", "expected a mapping"),
    ],
)
def test_bad_job_files_are_refused_with_the_field(tmp_path, text, field):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(JobFileError) as caught:
        load_job_file(path)
    assert field in str(caught.value) and str(path) in str(caught.value)


def test_job_file_submits_with_setup_run_envs_resources_and_overrides(mesh, tmp_path, capsys):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("print('hi')\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: from-a-file\n"
        "workdir: code\n"
        "setup: echo setting up\n"
        "run: python train.py\n"
        "envs: {OMP_NUM_THREADS: 1, DEBUG: true}\n"
        "provider: runpod\n"
        "resources: {gpus: A100:1}\n"
        "max_duration: 2h\n"
    )
    s = ["--address", mesh["scheduler"]]
    code, out, err = _run(capsys, "jobs", "submit", str(job), *s, "--dry-run", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["offer"]["provider"] == "runpod" and shown["offer"]["gpu_name"].startswith("A100")
    assert shown["launch"]["problems"] == [] and shown["launch"]["requests"][-1]["headers"]["Authorization"] == "Bearer ***"
    # options win over the file, before or after it: run it on the dryrun provider, CPU only
    code, out, err = _run(capsys, "jobs", "submit", "--provider", "dryrun", str(job), "--gpus", "0", *s)
    assert code == 0, err
    job_id = next(line.split()[1] for line in out.splitlines() if line.startswith("job "))
    code, out, err = _run(capsys, "jobs", "get", job_id, *s, "--json")
    got = json.loads(out)
    assert got["provider"] == "dryrun" and got["spec"]["display_name"] == "from-a-file"
    assert got["spec"]["command"] == ["sh", "-c", "set -e\necho setting up\npython train.py"]
    assert got["spec"]["env"] == {"OMP_NUM_THREADS": "1", "DEBUG": "true"} and got["spec"]["max_duration"] == "7200s"
    assert got["code_archive_sha256"]  # the workdir went as the job's code


def test_the_nanogpt_job_file_submits_as_a_dry_run(mesh, capsys):
    code, out, err = _run(
        capsys, "jobs", "submit", str(REPO / "examples/nanogpt/job.yaml"), "--address", mesh["scheduler"], "--dry-run"
    )
    assert code == 0, err
    assert "offer: local/" in out and "launch request: none (local runs on the scheduler's machine)" in out
    code, out, err = _run(
        capsys, "jobs", "submit", str(REPO / "examples/grpo/job.yaml"), "--address", mesh["scheduler"], "--dry-run"
    )
    assert code == 0, err
