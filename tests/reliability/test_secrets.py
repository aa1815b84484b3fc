"""Secrets never appear in logs, errors or responses: cost and scheduler processes run with an auth token and provider
keys in their environment, a fake provider echoes the key back in its errors, and every output is searched for them.

Also: a local job's environment does not inherit the scheduler's keys or token.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc
import pytest

from crucible.api.cost.v1 import cost_service_pb2 as cpb
from crucible.api.cost.v1 import cost_service_pb2_grpc as cpb_grpc
from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as spb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as spb_grpc
from crucible.clients.health import wait_serving
from tests.conftest import free_port_block
from tests.fakes.lambda_api import FakeLambda
from tests.fakes.server import Fault
from tests.reliability.support import ServiceProcess, child_env, serve_command

SECRETS = {
    "CRUCIBLE_AUTH_TOKEN": "tok-9d1e0c7b55aa4f3e",
    "LAMBDA_API_KEY": "lam-key-4417ab90ce3d",
    "RUNPOD_API_KEY": "rpd-key-8a02f6d1b7c9",
    "PAPERSPACE_API_KEY": "pps-key-31c4e8a0d5f2",
    "REPLICATE_API_TOKEN": "r8_rep-token-77e0b2c4",
    "MODAL_TOKEN_ID": "ak-modal-id-5b6c7d8e",
    "MODAL_TOKEN_SECRET": "as-modal-secret-0f1e2d3c",
    "CRUCIBLE_KUBERNETES_TOKEN": "k8s-token-a9b8c7d6e5",
}
COST_KEYS = {"CRUCIBLE_COST_LAMBDA_API_KEY": SECRETS["LAMBDA_API_KEY"], "CRUCIBLE_COST_RUNPOD_API_KEY": SECRETS["RUNPOD_API_KEY"]}
GOOD = (("authorization", f"Bearer {SECRETS['CRUCIBLE_AUTH_TOKEN']}"),)
# A near miss of the token: an error must not echo what the client sent either.
NEAR_MISS = (("authorization", f"Bearer {SECRETS['CRUCIBLE_AUTH_TOKEN']}-x"),)


def _echo(status: int) -> Fault:
    """A provider error whose body repeats the credential it was sent (some APIs do)."""
    key = SECRETS["LAMBDA_API_KEY"]
    body = json.dumps(
        {
            "error": {
                "code": "global/invalid-api-key" if status == 401 else "internal",
                "message": f"Authorization: Bearer {key} rejected; api_key={key}",
            }
        }
    )
    return Fault(status, body.encode(), {"Content-Type": "application/json"})


class Outputs:
    """Everything the services said: response messages, error codes/details/metadata."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def call(self, rpc, request, metadata=GOOD, stream: bool = False):
        """Make a call and keep its answer or its error (details and trailing metadata) as text."""
        try:
            if stream:
                replies = [r async for r in rpc(request, metadata=metadata, timeout=20)]
                self.texts += [str(r) for r in replies]
                return replies
            reply = await rpc(request, metadata=metadata, timeout=20)
            self.texts.append(str(reply))
            return reply
        except grpc.aio.AioRpcError as err:
            self.texts += [err.code().name, err.details() or "", repr(err.trailing_metadata()), repr(err.debug_error_string())]
            return err


@pytest.mark.slow
async def test_no_secret_in_logs_errors_or_responses(tmp_path: Path) -> None:
    fake = await FakeLambda(SECRETS["LAMBDA_API_KEY"]).start()
    port = free_port_block(2)
    cost_addr, sched_addr = f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"
    settings = tmp_path / "providers.json"
    settings.write_text(
        json.dumps(
            {
                "lambda": {
                    "base_url": fake.base_url,
                    "ssh_key_names": "k",
                    "timeout_s": "1",
                    "max_retries": "1",
                    "retry_base_s": "0.01",
                }
            }
        )
    )
    common = ("--log-level", "DEBUG", "--log-format", "json", "--metrics-enabled", "false")
    cost = ServiceProcess(
        serve_command(
            "cost",
            port,
            *common,
            "--state-dir",
            str(tmp_path / "cost"),
            "--lambda-api-url",
            fake.base_url,
            "--runpod-api-url",
            "http://127.0.0.1:9/g",
            "--refresh-timeout-s",
            "1",
        ),
        tmp_path / "cost.log",
        child_env(**SECRETS, **COST_KEYS),
    )
    sched = ServiceProcess(
        serve_command(
            "scheduler",
            port + 1,
            *common,
            "--state-dir",
            str(tmp_path / "sched"),
            "--cost-address",
            cost_addr,
            "--providers",
            "local,lambda,runpod",
            "--provider-settings-file",
            str(settings),
            "--poll-interval-s",
            "0.1",
        ),
        tmp_path / "scheduler.log",
        child_env(**SECRETS),
    )
    out = Outputs()
    try:
        await wait_serving(cost_addr, timeout=90)
        await wait_serving(sched_addr, timeout=90)
        async with grpc.aio.insecure_channel(cost_addr) as cch, grpc.aio.insecure_channel(sched_addr) as sch:
            cstub, sstub = cpb_grpc.CostServiceStub(cch), spb_grpc.SchedulerServiceStub(sch)
            # Price refresh failing with the key echoed back, then succeeding.
            fake.fault(_echo(500), path="/instance-types", times=10)
            failed = await out.call(cstub.RefreshPrices, cpb.RefreshPricesRequest())
            assert any(r.error for r in failed.results)
            fake.fault(_echo(401), path="/instance-types", times=1)
            await out.call(cstub.RefreshPrices, cpb.RefreshPricesRequest(providers=["lambda"]))
            await out.call(cstub.RefreshPrices, cpb.RefreshPricesRequest(providers=["lambda"]))
            # Refused and bad calls.
            for metadata in ((), NEAR_MISS):
                err = await out.call(cstub.ListOffers, cpb.ListOffersRequest(), metadata=metadata)
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                err = await out.call(sstub.ListJobs, spb.ListJobsRequest(), metadata=metadata)
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            await out.call(cstub.EstimateCost, cpb.EstimateCostRequest(offer_id="nope"))
            await out.call(sstub.ListProviders, spb.ListProvidersRequest())
            await out.call(sstub.CreateJob, spb.CreateJobRequest(spec=job_pb2.JobSpec(command=[])))
            # A Lambda job whose launch is refused with the key echoed back.
            fake.fault(_echo(401), path="/instance-operations/launch", times=5)
            lam = await out.call(
                sstub.CreateJob,
                spb.CreateJobRequest(
                    spec=job_pb2.JobSpec(
                        command=["python", "train.py"],
                        provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST,
                        providers=["lambda"],
                        resources={"gpu_count": 1, "gpu_names": ["A10"]},
                    )
                ),
            )
            # A local job that prints its whole environment.
            env_job = await out.call(
                sstub.CreateJob,
                spb.CreateJobRequest(
                    spec=job_pb2.JobSpec(
                        command=[sys.executable, "-c", "import os; print(sorted(os.environ.items()))"],
                        provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT,
                        providers=["local"],
                    )
                ),
            )
            for job in (lam, env_job):
                if isinstance(job, grpc.aio.AioRpcError):
                    continue
                await out.call(sstub.WatchJob, spb.WatchJobRequest(job_id=job.job.job_id), stream=True)
                await out.call(sstub.GetJob, spb.GetJobRequest(job_id=job.job.job_id))
                await out.call(sstub.StreamJobLogs, spb.StreamJobLogsRequest(job_id=job.job.job_id), stream=True)
            assert not isinstance(env_job, grpc.aio.AioRpcError)
            logs = [c async for c in sstub.StreamJobLogs(spb.StreamJobLogsRequest(job_id=env_job.job.job_id), metadata=GOOD)]
            assert "PATH" in "".join(c.text for c in logs)  # the job ran and printed its environment
    finally:
        cost.stop()
        sched.stop()
        await fake.close()
    logs = {"cost": cost.log_text(), "scheduler": sched.log_text()}
    for name, text in logs.items():
        assert "***" in text, f"{name}: no masked setting in its start-up log"  # the secrets were configured
        assert [json.loads(line) for line in text.splitlines() if line.startswith("{")], f"{name}: no JSON log"
    haystacks = {**logs, "responses": "\n".join(out.texts)}
    for where, text in haystacks.items():
        for name, value in SECRETS.items():
            assert value not in text, f"{name} appeared in {where}"
