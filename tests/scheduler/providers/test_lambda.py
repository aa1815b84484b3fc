"""The Lambda adapter against a loopback fake of the Lambda Cloud API, with a local stand-in for ssh.

Covers launch with cloud-init user data, status mapping, outcome and logs over ssh, capacity/quota/auth errors,
adoption after a lost launch answer, terminate, and that the key never leaks.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError, RunState
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.lambda_cloud import LambdaProvider
from tests.fakes.lambda_api import FakeLambda
from tests.fakes.server import Fault
from tests.fakes.ssh import make_fake_ssh

KEY = "secret_lambda-key_0123456789abcdef"
FAST = {"timeout_s": "0.5", "retry_base_s": "0.01", "retry_max_s": "0.02", "max_retries": "2"}


@pytest.fixture
async def fake():
    server = await FakeLambda(KEY).start()
    yield server
    await server.close()


def provider(fake: FakeLambda, tmp_path: Path | None = None, key: str = KEY, **settings: str) -> LambdaProvider:
    values = {"base_url": fake.base_url, "ssh_key_names": "laptop", **FAST, **settings}
    if tmp_path is not None:
        ssh, _, _ = make_fake_ssh(tmp_path / "ssh")
        (tmp_path / "key").write_text("k")
        values.update(ssh_key_path=str(tmp_path / "key"), ssh_command=str(ssh), remote_root=str(tmp_path / "remote"))
    return LambdaProvider.from_settings(values, secrets=SecretStore(env={"LAMBDA_API_KEY": key}))


def spec(tmp_path: Path, command=("sh", "-c", "echo step 1; echo warn >&2; exit 0"), **offer) -> LaunchSpec:
    return LaunchSpec(
        "job-7",
        1,
        command,
        {"SEED": "3"},
        OfferRef("lambda", offer.get("instance_type", "gpu_1x_a10"), offer.get("region", "us-east-1")),
        tmp_path,
    )


async def until_terminal(p: LambdaProvider, handle, attempts: int = 200):
    for _ in range(attempts):
        status = await p.status(handle)
        if status.state.terminal:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"never terminal: {status}")


async def test_launch_runs_user_data_and_reports_exit_code_and_logs(fake, tmp_path):
    p = provider(fake, tmp_path)
    assert p.credentials_present() and p.capabilities.live_logs
    handle = await p.submit(spec(tmp_path))
    body = fake.launch_bodies[-1]
    assert body["name"] == "crucible-job-7-1" and body["ssh_key_names"] == ["laptop"] and body["quantity"] == 1
    assert body["user_data"].startswith("#!/bin/bash")
    assert (await p.status(handle)).state is RunState.PROVISIONING  # booting
    fake.set_status(handle.ref, "active", ip="127.0.0.1")
    assert (await p.status(handle)).state is RunState.PROVISIONING  # up, command not started
    subprocess.run(["bash", "-c", body["user_data"]], check=True, timeout=30)  # what cloud-init does at boot
    status = await until_terminal(p, handle)
    assert status.state is RunState.SUCCEEDED and status.exit_code == 0
    out = await p.read_logs(handle, "stdout", 0)
    err = await p.read_logs(handle, "stderr", 0)
    assert out.data == b"step 1\n" and err.data == b"warn\n" and out.next_offset == 7
    assert (await p.read_logs(handle, "stdout", 7)).data == b""
    await p.cancel(handle)
    assert fake.instances[handle.ref]["status"] == "terminated"
    assert (await p.status(handle)).state is RunState.CANCELLED
    await p.cancel(handle)  # idempotent
    await p.aclose()


async def test_failing_command_is_failed_with_its_exit_code(fake, tmp_path):
    p = provider(fake, tmp_path)
    handle = await p.submit(spec(tmp_path, ("sh", "-c", "exit 7")))
    fake.set_status(handle.ref, "active", ip="127.0.0.1")
    subprocess.run(["bash", "-c", fake.launch_bodies[-1]["user_data"]], check=True, timeout=30)
    status = await until_terminal(p, handle)
    assert status.state is RunState.FAILED and status.exit_code == 7
    await p.aclose()


async def test_without_ssh_status_is_honest_and_logs_empty(fake, tmp_path):
    p = provider(fake)
    assert not p.capabilities.live_logs
    handle = await p.submit(spec(tmp_path))
    fake.set_status(handle.ref, "active", ip="127.0.0.1")
    status = await p.status(handle)
    assert status.state is RunState.RUNNING and "ssh" in status.message
    assert (await p.read_logs(handle, "stdout", 0)).data == b""
    fake.set_status(handle.ref, "unhealthy")
    assert (await p.status(handle)).state is RunState.UNKNOWN
    fake.set_status(handle.ref, "terminated")  # gone without a cancel from us: host loss
    assert (await p.status(handle)).state is RunState.PREEMPTED
    await p.aclose()


async def test_capacity_quota_invalid_and_auth_errors(fake, tmp_path):
    p = provider(fake)
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path, instance_type="gpu_8x_h100_sxm5"))
    assert info.value.kind is K.CAPACITY and "insufficient-capacity" in str(info.value)
    fake.quota = 0
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path))
    assert info.value.kind is K.QUOTA
    no_key_name = provider(fake, ssh_key_names="")
    with pytest.raises(ProviderError) as info:
        await no_key_name.submit(spec(tmp_path))
    assert info.value.kind is K.INVALID and "ssh_key_names" in str(info.value)
    with pytest.raises(ProviderError) as info:
        await p.submit(
            LaunchSpec("j", 1, ("true",), {}, OfferRef("lambda", "gpu_1x_a10", "us-east-1"), tmp_path, code_dir=tmp_path)
        )
    assert info.value.kind is K.INVALID and "code_dir" in str(info.value)
    with pytest.raises(ProviderError) as info:
        await p.status(type("H", (), {"ref": "nope", "data": {}})())
    assert info.value.kind is K.NOT_FOUND
    await p.aclose()
    await no_key_name.aclose()


async def test_bad_key_is_auth_and_secret_never_leaks(fake, tmp_path, caplog):
    wrong = "secret_wrong-key_9999999999"
    p = provider(fake, key=wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path))
    assert info.value.kind is K.AUTH
    for text in (str(info.value), repr(info.value), caplog.text, repr(p)):
        assert wrong not in text and KEY not in text
    await p.aclose()


async def test_lost_launch_answer_adopts_the_instance_instead_of_launching_twice(fake, tmp_path):
    p = provider(fake)
    fake.fault(Fault.hang(5, after=True), path="/instance-operations/launch")
    handle = await p.submit(spec(tmp_path))
    assert len(fake.instances) == 1 and handle.ref in fake.instances
    assert fake.count("POST", "/instance-operations/launch") == 1
    await p.aclose()


async def test_rate_limited_then_5xx_status_polls_recover(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    fake.fault(Fault.rate_limited("0"), path=f"/instances/{handle.ref}")
    fake.fault(Fault.server_error(502), path=f"/instances/{handle.ref}")
    assert (await p.status(handle)).state is RunState.PROVISIONING
    fake.fault(Fault.malformed(b"<html>gateway</html>"), path=f"/instances/{handle.ref}")
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.MALFORMED_RESPONSE
    fake.fault(Fault.hang(5), path=f"/instances/{handle.ref}", times=5)
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.TRANSIENT
    await p.aclose()


async def test_find_reattaches_by_name(fake, tmp_path):
    p = provider(fake)
    assert await p.find(spec(tmp_path)) is None
    handle = await p.submit(spec(tmp_path))
    found = await p.find(spec(tmp_path))
    assert found is not None and found.ref == handle.ref and found.data["run_dir"] == handle.data["run_dir"]
    fake.fault(Fault.server_error(500), path="/instances", times=10)
    with pytest.raises(ProviderError) as info:  # a failed lookup is not "never launched"
        await p.find(spec(tmp_path))
    assert info.value.kind is K.TRANSIENT
    await p.aclose()
