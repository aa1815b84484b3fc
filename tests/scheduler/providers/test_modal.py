"""The Modal adapter over the Sandbox API, with the SDK faked at its boundary (the transport is gRPC).

The fake runs each Sandbox's argv as a local process and streams its output live, so commands, exit codes, timeouts
and logs are real; its signatures are checked against the real SDK's (tests/fakes/modal_signatures.json).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from pathlib import Path

import pytest

from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError, RunState
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.modal_provider import ModalProvider
from tests.fakes.modal_sdk import FakeModal

TOKEN_ID, TOKEN_SECRET = "ak-0123456789", "as-SECRET-abcdef987654"
SIGNATURES = Path(__file__).resolve().parents[2] / "fakes" / "modal_signatures.json"


def provider(sdk: FakeModal | None, token_secret: str = TOKEN_SECRET, **settings: str) -> ModalProvider:
    store = SecretStore(env={"MODAL_TOKEN_ID": TOKEN_ID, "MODAL_TOKEN_SECRET": token_secret})
    return ModalProvider.from_settings(settings, secrets=store, sdk=sdk)


def spec(tmp_path: Path, command: tuple[str, ...], attempt: int = 1, **kw) -> LaunchSpec:
    return LaunchSpec(
        "job-m", attempt, command, {"GREETING": "hi"}, OfferRef("modal", "A10G", gpu_name="A10G", gpu_count=1), tmp_path, **kw
    )


async def until_terminal(p: ModalProvider, handle, tries: int = 400):
    for _ in range(tries):
        status = await p.status(handle)
        if status.state.terminal:
            return status
        await asyncio.sleep(0.025)
    raise AssertionError(f"never terminal: {status}")


async def read_all(p: ModalProvider, handle, stream: str) -> bytes:
    out, offset = b"", 0
    while True:
        chunk = await p.read_logs(handle, stream, offset)
        if not chunk.data:
            return out
        out, offset = out + chunk.data, chunk.next_offset


async def test_output_is_live_and_the_exit_code_comes_back(tmp_path):
    sdk = FakeModal(TOKEN_ID, TOKEN_SECRET)
    p = provider(sdk)
    gate = tmp_path / "gate"
    script = (
        "import os, sys, time\n"
        "print(os.environ['GREETING'], os.environ['CRUCIBLE_JOB_ID'], flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        "print('second', flush=True); print('warn', file=sys.stderr); sys.exit(3)\n"
    )
    handle = await p.submit(spec(tmp_path, (sys.executable, "-c", script), max_duration_s=600, checkpoint_dir="/ckpt"))
    assert handle.ref.startswith("sb-") and handle.data["name"] == "crucible-job-m-1"
    options = sdk.runs[handle.ref].options
    assert options["gpu"] == "A10G" and options["timeout"] == 600 and options["env"]["CRUCIBLE_ATTEMPT"] == "1"
    assert options["volumes"]["/ckpt"].name == "crucible-ckpt-job-m" and sdk.runs[handle.ref].app_name == "crucible"
    for _ in range(400):  # the first line arrives while the command still runs
        chunk = await p.read_logs(handle, "stdout", 0)
        if chunk.data:
            break
        await asyncio.sleep(0.025)
    assert chunk.data == b"hi job-m\n" and (await p.status(handle)).state is RunState.RUNNING
    gate.touch()
    status = await until_terminal(p, handle)
    assert status.state is RunState.FAILED and status.exit_code == 3
    assert await read_all(p, handle, "stdout") == b"hi job-m\nsecond\n"
    assert await read_all(p, handle, "stderr") == b"warn\n"
    assert (await p.read_logs(handle, "stdout", 16)).data == b""
    sdk.shutdown()


async def test_a_restarted_scheduler_finds_the_sandbox_and_reads_its_logs_again(tmp_path):
    sdk = FakeModal(TOKEN_ID, TOKEN_SECRET)
    first = provider(sdk)
    s = spec(tmp_path, ("sh", "-c", "echo one; echo two"))
    handle = await first.submit(s)
    assert (await until_terminal(first, handle)).state is RunState.SUCCEEDED
    second = provider(sdk)  # a new process: no pumps, no memory of the handle
    found = await second.find(s)
    assert found is not None and found.ref == handle.ref
    assert await read_all(second, found, "stdout") == b"one\ntwo\n"
    assert await second.find(spec(tmp_path, ("true",), attempt=9)) is None
    sdk.shutdown()


async def test_timeout_cancel_and_code_dir(tmp_path):
    sdk = FakeModal(TOKEN_ID, TOKEN_SECRET)
    p = provider(sdk)
    code = tmp_path / "code"
    code.mkdir()
    (code / "marker.txt").write_text("shipped")
    handle = await p.submit(spec(tmp_path, ("cat", "marker.txt"), code_dir=code))
    assert sdk.runs[handle.ref].options["workdir"] == "/root/code"
    assert (await until_terminal(p, handle)).state is RunState.SUCCEEDED
    assert await read_all(p, handle, "stdout") == b"shipped"
    slow = await p.submit(spec(tmp_path, ("sleep", "30"), attempt=2, max_duration_s=1))
    status = await until_terminal(p, slow, tries=800)
    assert status.state is RunState.FAILED and status.exit_code == 124 and "timeout" in status.message
    other = await p.submit(spec(tmp_path, ("sleep", "30"), attempt=3))
    await p.cancel(other)
    status = await until_terminal(p, other)
    assert status.state is RunState.CANCELLED
    await p.cancel(other)  # idempotent
    sdk.shutdown()


async def test_errors_are_classified_and_secret_free(tmp_path):
    sdk = FakeModal(TOKEN_ID, TOKEN_SECRET)
    wrong = "as-WRONG-000000000000"
    p = provider(sdk, token_secret=wrong)
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path, ("true",)))
    assert info.value.kind is K.AUTH and wrong not in str(info.value) and wrong not in repr(p)
    good = provider(sdk)
    with pytest.raises(ProviderError) as info:
        await good.status(type("H", (), {"ref": "sb-unknown", "data": {}})())
    assert info.value.kind is K.NOT_FOUND
    with pytest.raises(ProviderError) as info:
        await good.submit(spec(tmp_path, ()))
    assert info.value.kind is K.INVALID
    sdk.shutdown()


async def test_missing_sdk_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modal", None)  # as if not installed
    p = provider(None)
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path, ("true",)))
    assert info.value.kind is K.INVALID and "pip install modal" in str(info.value)


def test_fake_signatures_match_the_real_sdk():
    """Every parameter the fake accepts exists in modal 1.6 with the same kind, and the fake accepts every parameter
    the real SDK requires (the snapshot was taken with inspect.signature on the installed package)."""
    real = json.loads(SIGNATURES.read_text())["signatures"]
    sdk = FakeModal()
    for name, params in real.items():
        cls_name, method = name.split(".")
        fake = inspect.signature(getattr(getattr(sdk, cls_name), method))
        real_params = {p["name"]: p for p in params if p["name"] not in ("self", "cls")}
        fake_params = {n: p for n, p in fake.parameters.items() if n not in ("self", "cls")}
        for pname, param in fake_params.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and any(p["kind"] == "VAR_KEYWORD" for p in params):
                continue
            assert pname in real_params, f"{name}: the real SDK has no parameter {pname!r}"
            assert real_params[pname]["kind"] == param.kind.name, f"{name}.{pname}: {param.kind.name} in the fake"
        for pname, p in real_params.items():
            if p["required"]:
                assert pname in fake_params, f"{name}: the fake lacks required {pname!r}"
