"""The RunPod adapter against a loopback fake of its GraphQL API, where errors arrive in HTTP 200 bodies.

Covers on-demand and spot deploys (bidPerGpu), the command in dockerArgs with env, status mapping, terminate,
capacity/quota/auth/invalid classification, retries, adoption after a lost answer, and secret scrubbing.
"""

from __future__ import annotations

import base64
import logging
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError, RunState
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.runpod import RunPodProvider
from tests.fakes.runpod_api import FakeRunPod
from tests.fakes.server import Fault
from tests.fakes.ssh import make_fake_ssh

KEY = "rpa_SECRETKEY0123456789ABCDEF"
FAST = {"timeout_s": "0.5", "retry_base_s": "0.01", "retry_max_s": "0.02", "max_retries": "2"}


@pytest.fixture
async def fake():
    server = await FakeRunPod(KEY).start()
    yield server
    await server.close()


def provider(fake: FakeRunPod, key: str = KEY, **settings: str) -> RunPodProvider:
    return RunPodProvider.from_settings(
        {"base_url": fake.url, **FAST, **settings}, secrets=SecretStore(env={"RUNPOD_API_KEY": key})
    )


def spec(
    tmp_path: Path,
    gpu: str = "NVIDIA A40",
    spot: bool = False,
    price: float = 0.8,
    count: int = 2,
    command=("python", "train.py", "--out", "/workspace/out dir"),
) -> LaunchSpec:
    return LaunchSpec(
        "job-9",
        2,
        command,
        {"WANDB_MODE": "offline"},
        OfferRef("runpod", gpu, gpu_name="A40", gpu_count=count, spot=spot, price_usd_per_hour=price),
        tmp_path,
        checkpoint_dir="/workspace/ckpt",
        resume=True,
    )


async def test_on_demand_deploy_carries_command_and_env(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    inp = fake.inputs[-1]
    assert inp["gpuTypeId"] == "NVIDIA A40" and inp["gpuCount"] == 2 and inp["name"] == "crucible-job-9-2"
    assert "bidPerGpu" not in inp and inp["imageName"].startswith("runpod/pytorch")
    env = {e["key"]: e["value"] for e in inp["env"]}
    assert (
        env["WANDB_MODE"] == "offline" and env["CRUCIBLE_RESUME"] == "1" and env["CRUCIBLE_CHECKPOINT_DIR"] == "/workspace/ckpt"
    )
    # dockerArgs is a shell command line that, run in the container, writes and runs the wrapper
    argv = shlex.split(inp["dockerArgs"])
    assert argv[:2] == ["bash", "-c"] and argv[2].endswith("bash /tmp/crucible-run.sh; sleep infinity")
    sshd_setup, wrapper = (base64.b64decode(b).decode() for b in re.findall(r"echo ([A-Za-z0-9+/=]{16,}) \| base64 -d", argv[2]))
    assert "python train.py --out '/workspace/out dir'" in wrapper
    assert "service ssh start" in sshd_setup and "authorized_keys" in sshd_setup  # sshd first, then the workload
    assert handle.ref in fake.pods and handle.data["run_dir"].startswith("/workspace/crucible/")
    assert (await p.status(handle)).state is RunState.PROVISIONING  # no runtime yet
    fake.set_pod(handle.ref, runtime={"uptimeInSeconds": 3, "ports": []})
    status = await p.status(handle)
    assert status.state is RunState.RUNNING and "ssh" in status.message
    await p.cancel(handle)
    assert handle.ref not in fake.pods
    assert (await p.status(handle)).state is RunState.CANCELLED
    await p.cancel(handle)  # idempotent: "Pod not found" is fine
    await p.aclose()


async def test_spot_bid_and_preemption(fake, tmp_path):
    p = provider(fake, bid_factor="1.1")
    handle = await p.submit(spec(tmp_path, spot=True, price=0.8, count=2))
    assert fake.inputs[-1]["bidPerGpu"] == pytest.approx(0.44)
    fake.set_pod(handle.ref, desiredStatus="EXITED", lastStatusChange="Stopped: interrupted by a higher bid")
    status = await p.status(handle)
    assert status.state is RunState.PREEMPTED and "spot" in status.message
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path, spot=True, price=0.1, count=1))
    assert info.value.kind is K.INVALID and "bid" in str(info.value)
    await p.aclose()


async def test_errors_in_200_bodies_are_classified(fake, tmp_path):
    p = provider(fake)
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path, gpu="NVIDIA H100 80GB HBM3"))
    assert info.value.kind is K.CAPACITY and info.value.status == 200
    fake.balance = 0.0
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path))
    assert info.value.kind is K.QUOTA
    fake.balance = 10.0
    with pytest.raises(ProviderError) as info:
        await p.submit(LaunchSpec("j", 1, ("true",), {}, OfferRef("runpod", ""), tmp_path))
    assert info.value.kind is K.INVALID
    with pytest.raises(ProviderError) as info:
        await p.status(type("H", (), {"ref": "nope", "data": {}})())
    assert info.value.kind is K.NOT_FOUND
    await p.aclose()


async def test_bad_key_is_auth_and_never_leaks(fake, tmp_path, caplog):
    wrong = "rpa_WRONGKEY9999999999999999"
    p = provider(fake, key=wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path))
    assert info.value.kind is K.AUTH
    for text in (str(info.value), caplog.text, repr(p)):
        assert wrong not in text and KEY not in text
    fake.fault(Fault(401, b'{"error": "Unauthorized"}'), path="/graphql")
    with pytest.raises(ProviderError) as info:
        await provider(fake).status(type("H", (), {"ref": "x", "data": {}})())
    assert info.value.kind is K.AUTH and info.value.status == 401
    await p.aclose()


async def test_transient_faults_retry_and_malformed_bodies(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    fake.fault(Fault.rate_limited("0"), path="/graphql")
    fake.fault(Fault.server_error(503), path="/graphql")
    fake.fault(
        Fault(200, b'{"errors": [{"message": "Something went wrong. Please try again later or contact support."}]}'),
        path="/graphql",
    )
    assert (await p.status(handle)).state is RunState.PROVISIONING
    fake.fault(Fault.malformed(), path="/graphql")
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.MALFORMED_RESPONSE
    fake.fault(Fault(200, b'{"data": {"pod": {"id": "x"}}}'), path="/graphql")
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.MALFORMED_RESPONSE and "desiredStatus" in str(info.value)
    fake.fault(Fault.hang(5), path="/graphql", times=5)
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.TRANSIENT
    await p.aclose()


async def test_lost_deploy_answer_adopts_the_pod(fake, tmp_path):
    p = provider(fake)
    fake.fault(Fault.hang(5, after=True), path="/graphql")
    handle = await p.submit(spec(tmp_path))
    assert list(fake.pods) == [handle.ref] and len(fake.inputs) == 1
    await p.aclose()


def container_stubs(folder: Path, calls: Path) -> Path:
    """sshd, service, ssh-keygen and sleep stand-ins that only record their calls (nothing is installed or started)."""
    folder.mkdir(parents=True)
    for name in ("sshd", "service", "ssh-keygen", "sleep", "apt-get"):
        stub = folder / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> {shlex.quote(str(calls))}\n')
        stub.chmod(0o755)
    return folder


async def test_start_command_brings_up_sshd_then_the_workload_and_ssh_reads_the_outcome(fake, tmp_path):
    ssh, _, calls = make_fake_ssh(tmp_path / "ssh")
    (tmp_path / "key").write_text("k")
    (tmp_path / "key.pub").write_text("ssh-ed25519 AAAAprobe crucible-probe\n")
    p = provider(fake, ssh_key_path=str(tmp_path / "key"), ssh_command=str(ssh), remote_root=str(tmp_path / "remote"))
    handle = await p.submit(spec(tmp_path, command=("sh", "-c", 'echo workload >> "$CALLS"; echo trained; exit 0')))
    fake.set_pod(
        handle.ref,
        runtime={
            "uptimeInSeconds": 9,
            "ports": [
                {"ip": "100.65.0.2", "isIpPublic": False, "privatePort": 22, "publicPort": 22, "type": "tcp"},
                {"ip": "203.0.113.9", "isIpPublic": True, "privatePort": 22, "publicPort": 40122, "type": "tcp"},
            ],
        },
    )
    # Run the pod's start command as the container would, with RunPod's env ($PUBLIC_KEY is the account key).
    container_calls, home = tmp_path / "container-calls", tmp_path / "home"
    stubs = container_stubs(tmp_path / "stubs", container_calls)
    env = {e["key"]: e["value"] for e in fake.inputs[-1]["env"]}
    subprocess.run(
        shlex.split(fake.inputs[-1]["dockerArgs"]),
        check=True,
        timeout=30,
        env={
            "PATH": f"{stubs}:/usr/bin:/bin",
            "HOME": str(home),
            "CALLS": str(container_calls),
            "PUBLIC_KEY": "ssh-ed25519 AAAAaccount me@laptop",
            **env,
        },
    )
    order = [line.split()[0] for line in container_calls.read_text().splitlines()]
    assert order == ["ssh-keygen", "service", "workload", "sleep"], order  # sshd is up before the workload runs
    assert "service ssh start" in container_calls.read_text() and "apt-get" not in order
    keys = (home / ".ssh" / "authorized_keys").read_text()
    assert "AAAAaccount" in keys and "AAAAprobe" in keys
    assert (home / ".ssh").stat().st_mode & 0o777 == 0o700
    assert (home / ".ssh" / "authorized_keys").stat().st_mode & 0o777 == 0o600
    status = await p.status(handle)
    assert status.state is RunState.SUCCEEDED and status.exit_code == 0
    assert "root@203.0.113.9" in calls.read_text() and "-p 40122" in calls.read_text()
    assert (await p.read_logs(handle, "stdout", 0)).data == b"trained\n"
    await p.aclose()


async def test_find_reattaches_by_name(fake, tmp_path):
    p = provider(fake)
    assert await p.find(spec(tmp_path)) is None
    handle = await p.submit(spec(tmp_path))
    found = await p.find(spec(tmp_path))
    assert found is not None and found.ref == handle.ref and found.data == handle.data
    await p.aclose()
