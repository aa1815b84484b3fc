"""The Modal adapter with the SDK faked at its boundary (the transport is gRPC): App/Function/spawn/FunctionCall.

The fake really runs the spawned function (after a cloudpickle round trip when available), so the command runs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from crucible.scheduler.providers.base import LaunchSpec
from crucible.scheduler.providers.base import OfferRef
from crucible.scheduler.providers.base import ProviderError
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.base import RunState
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.modal_provider import ModalProvider
from tests.fakes.modal_sdk import FakeModal

TOKEN_ID, TOKEN_SECRET = "ak-0123456789", "as-SECRET-abcdef987654"


def provider(sdk: FakeModal | None, token_secret: str = TOKEN_SECRET) -> ModalProvider:
    store = SecretStore(env={"MODAL_TOKEN_ID": TOKEN_ID, "MODAL_TOKEN_SECRET": token_secret})
    return ModalProvider.from_settings({}, secrets=store, sdk=sdk)


def spec(tmp_path: Path, command: tuple[str, ...], **kw) -> LaunchSpec:
    return LaunchSpec("job-m", 1, command, {"GREETING": "hi"}, OfferRef("modal", "A10G", gpu_name="A10G", gpu_count=1),
                      tmp_path, **kw)


async def until_terminal(p: ModalProvider, handle):
    for _ in range(400):
        status = await p.status(handle)
        if status.state.terminal:
            return status
        await asyncio.sleep(0.025)
    raise AssertionError(f"never terminal: {status}")


async def test_spawn_runs_the_command_and_reports_exit_code_and_log_tail(tmp_path):
    sdk = FakeModal(TOKEN_ID, TOKEN_SECRET)
    p = provider(sdk)
    assert p.credentials_present()
    code = tmp_path / "code"
    code.mkdir()
    handle = await p.submit(spec(tmp_path, (sys.executable, "-c", "import os,time; time.sleep(0.3); "
                                            "print(os.environ['GREETING'], os.environ['CRUCIBLE_JOB_ID'])"),
                                 max_duration_s=600, checkpoint_dir="/ckpt"))
    assert handle.ref.startswith("fc-")
    app = sdk.apps[-1]
    options = app.functions[0].options
    assert app.name == "crucible-job-m-1" and app.detached is True
    assert options["gpu"] == "A10G" and options["timeout"] == 600 and options["serialized"] is True
    assert "/ckpt" in options["volumes"] and options["volumes"]["/ckpt"].name == "crucible-ckpt-job-m"
    assert (await p.status(handle)).state is RunState.RUNNING
    assert (await p.read_logs(handle, "stdout", 0)).data == b""  # no live logs on Modal
    status = await until_terminal(p, handle)
    assert status.state is RunState.SUCCEEDED and status.exit_code == 0
    chunk = await p.read_logs(handle, "stdout", 0)
    assert chunk.data == b"hi job-m\n" and chunk.next_offset == 9
    assert (await p.read_logs(handle, "stdout", 9)).data == b""
    if sdk.pickled:  # shipped by value: the container has no `crucible` package
        assert b"crucible.scheduler" not in sdk.pickled[-1]
    sdk.shutdown()


async def test_failure_code_dir_and_cancel(tmp_path):
    sdk = FakeModal(TOKEN_ID, TOKEN_SECRET)
    p = provider(sdk)
    code = tmp_path / "code"
    code.mkdir()
    handle = await p.submit(spec(tmp_path, ("sh", "-c", "echo bad >&2; exit 4"), code_dir=None))
    status = await until_terminal(p, handle)
    assert status.state is RunState.FAILED and status.exit_code == 4
    assert (await p.read_logs(handle, "stderr", 0)).data == b"bad\n"
    slow = await p.submit(spec(tmp_path, ("sleep", "0.5"), code_dir=code))
    image = sdk.apps[-1].functions[0].options["image"]
    assert image.desc["local_dir"] == (str(code), "/root/code")
    await p.cancel(slow)
    assert (await p.status(slow)).state is RunState.CANCELLED
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
        await good.status(type("H", (), {"ref": "fc-unknown", "data": {}})())
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
