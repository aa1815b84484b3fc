"""The Replicate adapter against a loopback fake of its trainings API: create, status mapping, offset log chunks,
cancel, and billing/auth/invalid/not-found/transient errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crucible.scheduler.providers.base import LaunchSpec, OfferRef, ProviderError, RunState
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.replicate import ReplicateProvider
from tests.fakes.replicate_api import FakeReplicate
from tests.fakes.server import Fault

TOKEN = "r8_SECRETtoken0123456789abcdef"
FAST = {
    "timeout_s": "0.5",
    "retry_base_s": "0.01",
    "retry_max_s": "0.02",
    "max_retries": "2",
    "trainer": "acme/trainer:abc123",
    "destination": "me/tuned",
    "log_chunk_bytes": "8",
}


@pytest.fixture
async def fake():
    server = await FakeReplicate(TOKEN).start()
    yield server
    await server.close()


def provider(fake: FakeReplicate, token: str = TOKEN, **settings: str) -> ReplicateProvider:
    return ReplicateProvider.from_settings(
        {"base_url": fake.url, **FAST, **settings}, secrets=SecretStore(env={"REPLICATE_API_TOKEN": token})
    )


def spec(tmp_path: Path, **env: str) -> LaunchSpec:
    return LaunchSpec("job-5", 1, ("python", "train.py", "--lr", "3e-4"), env, OfferRef("replicate", "gpu-a100-large"), tmp_path)


async def test_training_lifecycle_and_offset_logs(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path, CRUCIBLE_REPLICATE_INPUT=json.dumps({"epochs": 3})))
    training = fake.trainings[handle.ref]
    assert training["input"] == {"epochs": 3, "command": "python train.py --lr 3e-4"}
    assert training["destination"] == "me/tuned"
    assert (await p.status(handle)).state is RunState.PROVISIONING
    fake.advance(handle.ref, "processing", "iter 0: loss 4.1\n")
    assert (await p.status(handle)).state is RunState.RUNNING
    chunks, offset = [], 0
    while True:
        chunk = await p.read_logs(handle, "stdout", offset)
        if not chunk.data:
            break
        assert chunk.offset == offset and len(chunk.data) <= 8
        chunks.append(chunk.data)
        offset = chunk.next_offset
    assert b"".join(chunks) == b"iter 0: loss 4.1\n"
    fake.advance(handle.ref, "succeeded", "iter 1: loss 3.0\n")
    assert (await p.read_logs(handle, "stdout", offset)).data == b"iter 1: "  # only the new bytes
    assert (await p.read_logs(handle, "stderr", 0)).data == b""
    status = await p.status(handle)
    assert status.state is RunState.SUCCEEDED and status.exit_code == 0 and "predict_time" in status.message
    await p.aclose()


async def test_failed_and_cancelled(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    fake.advance(handle.ref, "failed", "Traceback...\n", error="CUDA out of memory")
    status = await p.status(handle)
    assert status.state is RunState.FAILED and "CUDA out of memory" in status.message and status.exit_code is None
    other = await p.submit(spec(tmp_path))
    await p.cancel(other)
    assert (await p.status(other)).state is RunState.CANCELLED
    await p.aclose()


async def test_error_kinds(fake, tmp_path):
    p = provider(fake)
    fake.billing_ok = False
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path))
    assert info.value.kind is K.QUOTA and info.value.status == 402
    fake.billing_ok = True
    with pytest.raises(ProviderError) as info:
        await provider(fake, destination="no-slash").submit(spec(tmp_path))
    assert info.value.kind is K.INVALID and info.value.status == 422
    with pytest.raises(ProviderError) as info:
        await provider(fake, trainer="acme/missing:ffff").submit(spec(tmp_path))
    assert info.value.kind is K.NOT_FOUND
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path, CRUCIBLE_REPLICATE_INPUT="[1,2"))
    assert info.value.kind is K.INVALID and "CRUCIBLE_REPLICATE_INPUT" in str(info.value)
    wrong = "r8_WRONGtoken99999999999999"
    bad = provider(fake, token=wrong)
    with pytest.raises(ProviderError) as info:
        await bad.submit(spec(tmp_path))
    assert info.value.kind is K.AUTH and wrong not in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(ValueError, match="replicate.trainer"):
        provider(fake, trainer="not a trainer")
    await p.aclose()


async def test_transient_faults(fake, tmp_path):
    p = provider(fake)
    handle = await p.submit(spec(tmp_path))
    fake.fault(Fault.rate_limited("0", b'{"detail": "Request was throttled.", "status": 429}'), path="/v1/trainings/")
    fake.fault(Fault.server_error(503), path="/v1/trainings/")
    assert (await p.status(handle)).state is RunState.PROVISIONING
    fake.fault(Fault.malformed(), path="/v1/trainings/")
    with pytest.raises(ProviderError) as info:
        await p.read_logs(handle, "stdout", 0)
    assert info.value.kind is K.MALFORMED_RESPONSE
    fake.fault(Fault.hang(5), path="/v1/trainings/", times=5)
    with pytest.raises(ProviderError) as info:
        await p.status(handle)
    assert info.value.kind is K.TRANSIENT
    fake.fault(Fault.server_error(500), path="/trainings", method="POST")
    with pytest.raises(ProviderError) as info:
        await p.submit(spec(tmp_path))
    assert info.value.kind is K.TRANSIENT and len(fake.trainings) == 1  # a create is not blindly repeated
    await p.aclose()
