"""Provider error bodies never reach a job record or a log with the credential in them, in any spelling, and errors
quote at most a short prefix of an oversized value (issue 22, probe 11).

A fake Lambda API answers with bodies that echo the API key as sent, lower- and upper-cased, base64 (alone and inside
a Basic header), URL-encoded and hex; the adapter, the scheduler's job record and the logs are searched for each.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import urllib.parse
from pathlib import Path

import grpc
import pytest

from crucible.api.cost.v1 import cost_service_pb2 as cpb
from crucible.api.cost.v1 import cost_service_pb2_grpc as cpb_grpc
from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as spb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as spb_grpc
from crucible.runtime.errors import MAX_ERROR_CHARS, InvalidArgument, NotFound, echo
from crucible.scheduler.providers.base import ProviderError, RunHandle
from crucible.scheduler.providers.credentials import SecretStore, scrub
from crucible.scheduler.providers.lambda_cloud import LambdaProvider
from tests.fakes.lambda_api import FakeLambda
from tests.fakes.server import Fault
from tests.reliability.support import service_settings, start_service

KEY = "Lam.Key+4417/ab90=CE3d~k9Zq"


def _forms(key: str) -> dict[str, str]:
    """Every spelling of the key a provider's error body has been seen to echo (or could)."""
    raw = key.encode()
    return {
        "as sent": key,
        "lower-cased": key.lower(),
        "upper-cased": key.upper(),
        "base64": base64.b64encode(raw).decode(),
        "base64 unpadded url-safe": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "basic header": base64.b64encode(b"user:" + raw).decode(),
        "base64 of the lower-cased key": base64.b64encode(key.lower().encode()).decode(),
        "url-encoded": urllib.parse.quote(key, safe=""),
        "url-encoded lower": urllib.parse.quote(key, safe="").lower(),
        "form-encoded": urllib.parse.quote_plus(key),
        "hex": raw.hex(),
    }


FORMS = _forms(KEY)


def _leaks(text: str) -> list[str]:
    """The forms of the key found in `text` (case-blind for the raw key: an upper- or lower-cased echo counts)."""
    found = [name for name, form in FORMS.items() if form in text]
    if KEY.lower() in text.lower():
        found.append("any case")
    # The key's distinctive inner run, in any case, in case a body splits or re-wraps it.
    if re.search(re.escape("4417/ab90"), text, re.IGNORECASE):
        found.append("inner run")
    return found


def _echo_body(form: str) -> bytes:
    return json.dumps(
        {"error": {"code": "global/invalid-parameters", "message": f"bad credential {form} for this call"}}
    ).encode()


@pytest.mark.parametrize("form", sorted(FORMS))
async def test_the_adapter_error_keeps_the_status_and_no_form_of_the_key(form: str, caplog) -> None:
    fake = await FakeLambda(KEY).start()
    provider = LambdaProvider({"base_url": fake.base_url, "max_retries": "0"}, secrets=SecretStore(env={"LAMBDA_API_KEY": KEY}))
    try:
        fake.fault(Fault(400, _echo_body(FORMS[form]), {"Content-Type": "application/json"}), path="/instances/i-1")
        with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as err:
            await provider.status(RunHandle("lambda", "i-1", {}))
        assert err.value.status == 400
        message = str(err.value)
        assert "HTTP 400" in message and "bad credential" in message
        assert not _leaks(message), (form, message)
        assert not _leaks(caplog.text), (form, caplog.text)
    finally:
        await provider.aclose()
        await fake.close()


async def test_a_huge_error_body_becomes_a_short_summary() -> None:
    fake = await FakeLambda(KEY).start()
    provider = LambdaProvider({"base_url": fake.base_url, "max_retries": "0"}, secrets=SecretStore(env={"LAMBDA_API_KEY": KEY}))
    try:
        body = json.dumps({"error": {"message": "x" * 2_000_000 + KEY}}).encode()
        fake.fault(Fault(400, body, {"Content-Type": "application/json"}), path="/instances/i-1")
        with pytest.raises(ProviderError) as err:
            await provider.status(RunHandle("lambda", "i-1", {}))
        assert len(str(err.value)) < 1000 and not _leaks(str(err.value))
    finally:
        await provider.aclose()
        await fake.close()


def test_scrub_finds_key_shaped_tokens_it_was_not_told_about() -> None:
    text = scrub(
        "upstream said: token sk-AbCdEf0123456789XyZ, aws AKIAABCDEFGHIJKLMNOP, "
        "blob QWxhZGRpbjpvcGVuIHNlc2FtZQ9aZ3JlYXRrZXkxMjM0NTY3ODk=, id 0123456789abcdef0123456789abcdef"
    )
    assert "sk-AbCdEf" not in text and "AKIAABCD" not in text and "QWxhZGRpbjpv" not in text
    assert "0123456789abcdef0123456789abcdef" in text  # a hex id is not a secret


# ---- the job record and the scheduler's log ------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_job_record_and_the_log_carry_no_form_of_the_key(tmp_path: Path, monkeypatch, caplog) -> None:
    fake = await FakeLambda(KEY).start()
    monkeypatch.setenv("LAMBDA_API_KEY", KEY)
    provider_file = tmp_path / "lambda-settings.json"
    provider_file.write_text(
        json.dumps({"lambda": {"base_url": fake.base_url, "ssh_key_names": "k", "max_retries": "0", "timeout_s": "2"}})
    )
    cost = await start_service("cost", {**service_settings("cost", {"lm": tmp_path}, tmp_path), "lambda_api_url": fake.base_url})
    scheduler = None
    try:
        settings = service_settings("scheduler", {"lm": tmp_path}, tmp_path)
        settings.update(
            providers=("lambda",),
            provider_settings_file=str(provider_file),
            cost_address=cost.address,
            transient_retries=0,
            max_recoveries=0,
        )
        scheduler = await start_service("scheduler", settings)
        async with grpc.aio.insecure_channel(scheduler.address) as sch:
            every_form = " | ".join(FORMS.values())
            fake.fault(
                Fault(400, _echo_body(every_form), {"Content-Type": "application/json"}),
                path="/instance-operations/launch",
                times=20,
            )
            stub = spb_grpc.SchedulerServiceStub(sch)
            with caplog.at_level(logging.DEBUG):
                created = await stub.CreateJob(
                    spb.CreateJobRequest(
                        spec=job_pb2.JobSpec(
                            command=["python", "train.py"],
                            provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT,
                            providers=["lambda"],
                            resources={"gpu_count": 1, "gpu_names": ["A10"]},
                        )
                    ),
                    timeout=20,
                )
                job_id = created.job.job_id
                for _ in range(300):
                    job = (await stub.GetJob(spb.GetJobRequest(job_id=job_id), timeout=10)).job
                    if job.state in (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED, job_pb2.JOB_STATE_SUCCEEDED):
                        break
                    await asyncio.sleep(0.1)
        assert fake.count("POST", "/instance-operations/launch") >= 1, "the launch was never tried"
        record = str(job)
        assert "bad credential" in record, record  # the provider's summary is kept...
        assert not _leaks(record), record  # ...without the key
        assert not _leaks(caplog.text), [line for line in caplog.text.splitlines() if _leaks(line)][:3]
    finally:
        if scheduler is not None:
            await scheduler.server.stop(0)
        await cost.server.stop(0)
        await fake.close()


# ---- oversized values in errors ------------------------------------------------------------------------------------


def test_errors_cut_oversized_values_centrally() -> None:
    huge = "j" * 8 * 1024 * 1024
    assert echo(huge).startswith("'jjjj") and "8388608 characters" in echo(huge) and len(echo(huge)) < 120
    for error in (NotFound(f"no job {huge}"), InvalidArgument.field("job_id", f"bad {huge}")):
        assert len(error.message) <= MAX_ERROR_CHARS
        assert all(len(d) <= MAX_ERROR_CHARS for _f, d in getattr(error, "field_violations", []))


async def test_a_huge_budget_id_is_echoed_as_a_prefix(tmp_path: Path) -> None:
    cost = await start_service("cost", service_settings("cost", {"lm": tmp_path}, tmp_path))
    try:
        async with grpc.aio.insecure_channel(cost.address, options=[("grpc.max_send_message_length", 16 << 20)]) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cpb_grpc.CostServiceStub(ch).GetBudget(cpb.GetBudgetRequest(budget_id="b" * 4_000_000), timeout=20)
        assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        assert len(err.value.details() or "") <= MAX_ERROR_CHARS
        assert len(repr(err.value.trailing_metadata())) < 16_000
    finally:
        await cost.server.stop(0)
