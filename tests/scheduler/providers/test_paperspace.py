"""The Paperspace adapter against a loopback fake of its REST API: startup script + machine, paginated lists,
state mapping, cancel (delete or stop), capacity/limit/auth errors, adoption after a lost answer.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError, RunState
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.paperspace import PaperspaceProvider
from tests.fakes.paperspace_api import FakePaperspace
from tests.fakes.server import Fault

KEY = "ps_secret_abcdef0123456789"
FAST = {"timeout_s": "0.5", "retry_base_s": "0.01", "retry_max_s": "0.02", "max_retries": "2", "template_id": "t0nspxyz"}


@pytest.fixture
async def fake():
    server = await FakePaperspace(KEY).start()
    yield server
    await server.close()


def provider(fake: FakePaperspace, key: str = KEY, **settings: str) -> PaperspaceProvider:
    return PaperspaceProvider.from_settings(
        {"base_url": fake.base_url, **FAST, **settings}, secrets=SecretStore(env={"PAPERSPACE_API_KEY": key})
    )


def spec(tmp_path: Path, machine_type: str = "A100-80G") -> LaunchSpec:
    return LaunchSpec(
        "job-3",
        1,
        ("python", "train.py", "--iters", "100"),
        {"A": "1"},
        OfferRef("paperspace", machine_type, "ny2", "A100", 1),
        tmp_path,
    )


async def test_submit_creates_run_once_script_and_machine_then_cancel_deletes_both(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    machine = fake.machines[handle.ref]
    script = fake.scripts[machine["startupScriptId"]]
    assert script["isRunOnce"] is True and machine["name"] == "crucible-job-3-1" and machine["machineType"] == "A100-80G"
    wrapper = base64.b64decode(re.search(r"echo (\S+) \| base64 -d", script["script"]).group(1)).decode()
    assert "python train.py --iters 100" in wrapper and "export A=1" in wrapper
    assert (await p.status(handle)).state is RunState.PROVISIONING
    machine["state"] = "ready"
    assert (await p.status(handle)).state is RunState.RUNNING
    await p.cancel(handle)
    assert handle.ref not in fake.machines and not fake.scripts
    assert (await p.status(handle)).state is RunState.CANCELLED
    await p.cancel(handle)  # idempotent
    await p.aclose()


async def test_cancel_with_stop_keeps_the_machine_off(fake, tmp_path):
    p = provider(fake, cancel_action="stop")
    handle = await p.submit(spec(tmp_path))
    await p.cancel(handle)
    assert fake.machines[handle.ref]["state"] == "off"
    assert (await p.status(handle)).state is RunState.CANCELLED
    await p.aclose()


async def test_machine_off_without_cancel_is_preempted(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    fake.machines[handle.ref]["state"] = "off"
    assert (await p.status(handle)).state is RunState.PREEMPTED
    await p.aclose()


async def test_pagination_walks_every_page(fake, tmp_path):
    p = provider(fake, page_size="3")
    for i in range(10):
        fake.add_machine(f"other-{i}")
    names = [m["name"] async for m in p.list_machines()]
    assert names == [f"other-{i}" for i in range(10)]
    assert fake.count("GET", "/machines") == 4
    fake.fault(Fault(200, b'{"items": [], "hasMore": true}'), path="/machines")
    with pytest.raises(ProviderError) as info:
        _ = [m async for m in p.list_machines()]
    assert info.value.kind is K.MALFORMED_RESPONSE and "nextPage" in str(info.value)
    await p.aclose()


async def test_lost_create_answer_adopts_the_machine_found_on_a_later_page(fake, tmp_path):
    p = provider(fake, page_size="2")
    for i in range(5):
        fake.add_machine(f"other-{i}")
    fake.fault(Fault.hang(5, after=True), path="/machines", method="POST")
    handle = await p.submit(spec(tmp_path))
    assert fake.machines[handle.ref]["name"] == "crucible-job-3-1"
    assert fake.count("POST", "/machines") == 1 and len(fake.machines) == 6
    await p.aclose()


async def test_capacity_limit_auth_and_invalid(fake, tmp_path):
    p = provider(fake)
    fake.unavailable.add("H100")
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path, "H100"))
    assert info.value.kind is K.CAPACITY
    assert not fake.scripts  # the startup script of a failed create is deleted
    fake.machine_limit = 0
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path))
    assert info.value.kind is K.QUOTA
    with pytest.raises(ProviderError) as info:
        await provider(fake, template_id="").submit(spec(tmp_path))
    assert info.value.kind is K.INVALID and "template_id" in str(info.value)
    wrong = "ps_wrong_key_000000000000"
    bad = provider(fake, key=wrong)
    with pytest.raises(ProviderError) as info:
        await bad.submit(spec(tmp_path))
    assert info.value.kind is K.AUTH and wrong not in str(info.value) and wrong not in repr(bad)
    await p.aclose()


async def test_faults_on_status(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    fake.fault(Fault.rate_limited("0"), path=f"/machines/{handle.ref}")
    fake.fault(Fault.server_error(500), path=f"/machines/{handle.ref}")
    assert (await p.status(handle)).state is RunState.PROVISIONING
    fake.fault(Fault.malformed(b"not json at all"), path=f"/machines/{handle.ref}")
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.MALFORMED_RESPONSE
    fake.fault(Fault.rate_limited("0"), path=f"/machines/{handle.ref}", times=10)
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.TRANSIENT and info.value.status == 429
    await p.aclose()


async def test_find_reattaches_by_name(fake, tmp_path):
    p = provider(fake, page_size="2")
    for i in range(3):
        fake.add_machine(f"other-{i}")
    assert await p.find(spec(tmp_path)) is None
    handle = await p.submit(spec(tmp_path))
    found = await p.find(spec(tmp_path))
    assert found is not None and found.ref == handle.ref and found.data == handle.data
    await p.aclose()
