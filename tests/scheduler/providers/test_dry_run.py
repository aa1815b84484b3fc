"""`crucible jobs submit --provider lambda|runpod|paperspace --dry-run`: a real scheduler and cost service pick an offer
with a region, and the CLI shows the complete launch request (documented fields only, the key redacted)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from crucible.cli import main
from crucible.cost.config import CostConfig
from crucible.cost.server import create_server as create_cost
from crucible.runtime.config import load_config
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.lambda_cloud import LambdaProvider
from crucible.scheduler.providers.paperspace import PaperspaceProvider
from crucible.scheduler.providers.runpod import RunPodProvider
from crucible.scheduler.server import create_server as create_scheduler
from tests.fakes.api_fields import LAMBDA_LAUNCH, PAPERSPACE_MACHINE, PAPERSPACE_STARTUP_SCRIPT, RUNPOD_ON_DEMAND, violations

KEYS = {
    "LAMBDA_API_KEY": "secret_lambda_0123456789abcdef",
    "RUNPOD_API_KEY": "rpa_SECRET0123456789ABCDEF",
    "PAPERSPACE_API_KEY": "ps-SECRET-0123456789abcdef",
}
CATALOG = """provider,instance_type,gpu_name,gpu_count,gpu_memory_gib,vcpus,memory_gib,region,price_usd_per_hour,\
spot_price_usd_per_hour,storage_price_usd_per_gb_hour,egress_price_usd_per_gb,billing_granularity,source,observed_at
lambda,gpu_1x_a10,A10,1,24,30,200,us-east-1,0.31,,,,per_minute,test row,2026-12-01
lambda,gpu_1x_a10,A10,1,24,30,200,,0.05,,,,per_minute,cheapest but no region: cannot be launched,2026-12-01
paperspace,A100-80G,A100-80GB,1,80,,,,0.06,,,,per_hour,cheapest but no region: cannot be launched,2026-12-01
runpod,NVIDIA A100 80GB PCIe,A100-80GB,1,80,8,80,US-TX-3,0.41,,,,per_second,test row,2026-12-01
paperspace,A100-80G,A100-80GB,1,80,,,ny2,0.51,,,,per_hour,test row,2026-12-01
"""


def _serve(tmp_path_factory, user_catalog: str):
    folder = tmp_path_factory.mktemp("dryrun")
    (folder / "user.csv").write_text(user_catalog)
    settings = {"lambda": {"ssh_key_names": "laptop"}, "paperspace": {"template_id": "t0abc123"}}
    (folder / "providers.json").write_text(json.dumps(settings))
    store = SecretStore(env=KEYS)
    providers = {
        "lambda": LambdaProvider.from_settings(settings["lambda"], secrets=store),
        "runpod": RunPodProvider.from_settings({}, secrets=store),
        "paperspace": PaperspaceProvider.from_settings(settings["paperspace"], secrets=store),
    }
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        cost, cost_port = create_cost(
            load_config(
                CostConfig,
                "cost",
                env={},
                port=0,
                metrics_enabled=False,
                state_dir=str(folder / "cost"),
                user_catalog_file=str(folder / "user.csv"),
            )
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
                state_dir=str(folder / "state"),
                cost_address=f"127.0.0.1:{cost_port}",
            ),
            providers=providers,
        )
        await sched.start()
        await sched.wait_ready(30)
        return [sched, cost], sched_port

    servers, port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    yield {"address": f"127.0.0.1:{port}", "settings": folder / "providers.json"}
    for s in servers:
        asyncio.run_coroutine_threadsafe(s.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """User catalog rows on top of the shipped catalog, including cheaper rows without a region."""
    yield from _serve(tmp_path_factory, CATALOG)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Only the shipped catalog (the user layer is empty)."""
    yield from _serve(tmp_path_factory, CATALOG.splitlines()[0] + "\n")


@pytest.mark.parametrize("provider,gpu", [("lambda", "A10"), ("runpod", "A100-80GB"), ("paperspace", "A100-80GB")])
def test_dry_run_shows_a_complete_launch_request_with_a_region(mesh, provider, gpu, capsys, monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    argv = [
        "jobs",
        "submit",
        "--address",
        mesh["address"],
        "--provider",
        provider,
        "--gpu",
        gpu,
        "--gpus",
        "1",
        "--dry-run",
        "--provider-settings",
        str(mesh["settings"]),
    ]
    command = ["--", "python", "train.py"]
    code = main([*argv, "--json", *command])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    shown = json.loads(out)
    assert shown["offer"]["provider"] == provider and shown["offer"]["region"]
    launch = shown["launch"]
    assert launch["problems"] == [] and launch["requests"]
    for key in KEYS.values():
        assert key not in out
    last = launch["requests"][-1]
    assert last["method"] == "POST" and last["headers"]["Authorization"] == "Bearer ***"
    if provider == "lambda":
        assert violations(last["json"], LAMBDA_LAUNCH) == []
        assert last["json"]["region_name"] == shown["offer"]["region"]
        assert last["url"] == "https://cloud.lambda.ai/api/v1/instance-operations/launch"
    elif provider == "runpod":
        inp = last["json"]["variables"]["input"]
        assert violations(inp, RUNPOD_ON_DEMAND) == [] and "podFindAndDeployOnDemand" in last["json"]["query"]
        assert inp["dataCenterId"] == shown["offer"]["region"] and inp["gpuTypeId"].startswith("NVIDIA")
        assert last["url"] == "https://api.runpod.io/graphql"
    else:
        assert violations(launch["requests"][0]["json"], PAPERSPACE_STARTUP_SCRIPT) == []
        assert violations(last["json"], PAPERSPACE_MACHINE) == [] and last["json"]["region"] == shown["offer"]["region"]
        assert last["url"] == "https://api.paperspace.com/v1/machines"
    assert main([*argv, *command]) == 0  # the human form shows the same request
    text = capsys.readouterr().out
    assert "launch request: POST" in text and "region " in text and "launch problem" not in text


def test_dry_run_without_required_settings_names_the_problem(mesh, capsys, monkeypatch):
    monkeypatch.setenv("LAMBDA_API_KEY", KEYS["LAMBDA_API_KEY"])
    argv = [
        "jobs",
        "submit",
        "--address",
        mesh["address"],
        "--provider",
        "lambda",
        "--gpu",
        "A10",
        "--gpus",
        "1",
        "--dry-run",
        "--provider-settings",
        "",
        "--",
        "python",
        "train.py",
    ]
    assert main(argv) == 1  # a dry run that reports a launch problem is not a success
    assert "launch problem: setting lambda.ssh_key_names" in capsys.readouterr().err


@pytest.mark.parametrize("provider,gpu", [("lambda", "A10"), ("runpod", "A100-80GB"), ("paperspace", "A100-80GB")])
def test_the_shipped_catalog_is_launchable_on_each_remote_provider(shipped, provider, gpu, capsys, monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    code = main(
        [
            "jobs",
            "submit",
            "--address",
            shipped["address"],
            "--provider",
            provider,
            "--gpu",
            gpu,
            "--gpus",
            "1",
            "--dry-run",
            "--provider-settings",
            str(shipped["settings"]),
            "--json",
            "--",
            "python",
            "train.py",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    shown = json.loads(captured.out)
    assert shown["offer"]["region"] and "test row" not in shown["offer"]["price_source"]
    assert shown["launch"]["problems"] == [] and shown["launch"]["requests"]


@pytest.fixture(scope="module")
def keyless(tmp_path_factory):
    """A scheduler whose remote providers have no keys at all (a new user's machine)."""
    folder = tmp_path_factory.mktemp("keyless")
    settings = {"lambda": {"ssh_key_names": "laptop"}, "paperspace": {"template_id": "t0abc123"}}
    (folder / "providers.json").write_text(json.dumps(settings))
    store = SecretStore(env={})
    providers = {
        "lambda": LambdaProvider.from_settings(settings["lambda"], secrets=store),
        "runpod": RunPodProvider.from_settings({}, secrets=store),
        "paperspace": PaperspaceProvider.from_settings(settings["paperspace"], secrets=store),
    }
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
                state_dir=str(folder / "state"),
                cost_address=f"127.0.0.1:{cost_port}",
            ),
            providers=providers,
        )
        await sched.start()
        await sched.wait_ready(30)
        return [sched, cost], sched_port

    servers, port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    yield {"address": f"127.0.0.1:{port}", "settings": folder / "providers.json"}
    for s in servers:
        asyncio.run_coroutine_threadsafe(s.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.mark.parametrize(
    "provider,gpu,auth",
    [
        ("lambda", "A10", ("Authorization", "Bearer ***")),
        ("runpod", "A100-80GB", ("Authorization", "Bearer ***")),
        ("paperspace", "A100-80GB", ("Authorization", "Bearer ***")),
        ("modal", "H100", ("token", "***")),
    ],
)
@pytest.mark.parametrize("key_here", [False, True], ids=["no-key-anywhere", "key-set-here"])
def test_dry_run_needs_no_keys_and_always_shows_them_as_stars(keyless, provider, gpu, auth, key_here, capsys, monkeypatch):
    """Issue 26: `--dry-run` failed with "credentials missing" on a scheduler without keys, and showed
    `Bearer <missing: env RUNPOD_API_KEY ...>` where the CLI had none; the preview is the same either way."""
    for name in (*KEYS, "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "CRUCIBLE_SECRETS_FILE"):
        monkeypatch.delenv(name, raising=False)
    if key_here:
        for name, value in KEYS.items():
            monkeypatch.setenv(name, value)
    argv = ["jobs", "submit", "--address", keyless["address"], "--provider", provider, "--gpus", f"{gpu}:1", "--dry-run"]
    code = main([*argv, "--provider-settings", str(keyless["settings"]), "--json", "--", "python", "train.py"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    shown = json.loads(captured.out)
    assert shown["offer"]["provider"] == provider and shown["launch"]["problems"] == []
    header, value = auth
    assert {r["headers"][header] for r in shown["launch"]["requests"]} == {value}
    assert "<missing" not in captured.out and all(k not in captured.out for k in KEYS.values())


def test_dry_run_exits_non_zero_when_it_reports_a_launch_problem(keyless, capsys, monkeypatch):
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)
    argv = ["jobs", "submit", "--address", keyless["address"], "--provider", "lambda", "--gpus", "A10:1", "--dry-run"]
    code = main([*argv, "--provider-settings", "", "--", "python", "train.py"])  # no ssh_key_names: Lambda refuses
    captured = capsys.readouterr()
    assert code == 1 and "launch problem: setting lambda.ssh_key_names" in captured.err
    code = main([*argv, "--provider-settings", "", "--json", "--", "python", "train.py"])
    captured = capsys.readouterr()
    assert code == 1 and json.loads(captured.out)["launch"]["problems"]


def test_a_real_submit_without_keys_is_still_refused(keyless, capsys, monkeypatch):
    """The preview needs no keys; creating the job does (the scheduler cannot launch without them)."""
    argv = ["jobs", "submit", "--address", keyless["address"], "--provider", "runpod", "--gpus", "A100-80GB:1"]
    code = main([*argv, "--", "python", "train.py"])
    captured = capsys.readouterr()
    assert code == 1 and "credentials missing" in captured.err
