"""Provider faults through the whole scheduling path: cost service priced from a fake Lambda API, scheduler launching on it.

429s are retried, 5xx and malformed answers fail over to the next region, a launch whose answer is lost (timeout) is
adopted rather than repeated, a rejected key blocks the provider, and no machine is left running or key leaked.
The adapters' own HTTP behaviour is tested in tests/scheduler/providers/; this is the engine's side.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from crucible.api.cost.v1 import cost_service_pb2, cost_service_pb2_grpc
from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from tests.fakes.lambda_api import FakeLambda
from tests.fakes.server import Fault
from tests.reliability.support import Running, start_service

KEY = "lambda-secret-key-5ca1ab1e-0042"
LAUNCH = "/instance-operations/launch"
S = job_pb2.JobState
A = job_pb2.AttemptOutcome
REGIONS = ("us-east-1", "us-west-1")


@dataclass
class Rig:
    """The fake Lambda API, the cost and scheduler servers, and a scheduler stub."""

    fake: FakeLambda
    cost: Running
    scheduler: Running
    stub: pb_grpc.SchedulerServiceStub


@pytest.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """Lambda offers in two regions, priced by a RefreshPrices from the fake, launched by the scheduler."""
    tmp = tmp_path_factory.mktemp("provider-faults")
    fake = await FakeLambda(KEY).start()
    fake.capacity = {(r, "gpu_1x_a10") for r in REGIONS}
    settings = tmp / "providers.json"
    settings.write_text(
        json.dumps(
            {
                "lambda": {
                    "base_url": fake.base_url,
                    "ssh_key_names": "crucible",
                    "timeout_s": "0.5",
                    "max_retries": "2",
                    "retry_base_s": "0.01",
                    "retry_max_s": "0.05",
                    "max_retry_after_s": "2",
                }
            }
        )
    )
    old_key = os.environ.get("LAMBDA_API_KEY")
    os.environ["LAMBDA_API_KEY"] = KEY  # the scheduler's SecretStore reads provider keys from the environment
    cost = scheduler = None
    try:
        cost = await start_service(
            "cost",
            {
                "port": 0,
                "metrics_enabled": False,
                "state_dir": str(tmp / "cost"),
                "lambda_api_url": fake.base_url,
                "lambda_api_key": KEY,
                "runpod_api_url": "http://127.0.0.1:9/graphql",
                "refresh_timeout_s": 2.0,
            },
        )
        async with grpc.aio.insecure_channel(cost.address) as ch:
            refreshed = await cost_service_pb2_grpc.CostServiceStub(ch).RefreshPrices(
                cost_service_pb2.RefreshPricesRequest(providers=["lambda"]), timeout=30
            )
        assert refreshed.results[0].offers_updated >= 2, refreshed
        scheduler = await start_service(
            "scheduler",
            {
                "port": 0,
                "metrics_enabled": False,
                "state_dir": str(tmp / "scheduler"),
                "cost_address": cost.address,
                "providers": ("lambda",),
                "provider_settings_file": str(settings),
                "poll_interval_s": 0.1,
                "transient_retries": 1,
                "sqlite_synchronous": "NORMAL",
            },
        )
        async with grpc.aio.insecure_channel(scheduler.address) as ch:
            yield Rig(fake, cost, scheduler, pb_grpc.SchedulerServiceStub(ch))
    finally:
        for server in (scheduler, cost):
            if server is not None:
                await server.server.stop(0)
        await fake.close()
        if old_key is None:
            os.environ.pop("LAMBDA_API_KEY", None)
        else:
            os.environ["LAMBDA_API_KEY"] = old_key


def _spec() -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        command=["python", "train.py"],
        provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST,
        providers=["lambda"],
        resources={"gpu_count": 1, "gpu_names": ["A10"]},
    )


async def _until(rig: Rig, job_id: str, done, timeout: float = 30) -> job_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = (await rig.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)).job
        if done(job):
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} stuck: {list(job.transitions)}")
        await asyncio.sleep(0.05)


def _launched(job: job_pb2.Job) -> bool:
    return (bool(job.attempts) and bool(job.attempts[-1].provider_ref)) or job.state in (S.JOB_STATE_FAILED,)


def _instances_of(fake: FakeLambda, job_id: str) -> list[dict]:
    return [i for i in fake.instances.values() if job_id in (i.get("name") or "")]


async def _finish(rig: Rig, job_id: str) -> None:
    """Cancel the job and check its machine is terminated (billing stopped)."""
    await rig.stub.CancelJob(pb.CancelJobRequest(job_id=job_id, reason="test done"), timeout=10)
    await _until(rig, job_id, lambda j: j.state == S.JOB_STATE_CANCELLED)
    assert all(i["status"] == "terminated" for i in _instances_of(rig.fake, job_id))


async def _run(rig: Rig, *faults: tuple[Fault, int]) -> tuple[job_pb2.Job, int]:
    """Queue `faults` on launches, create a job, wait until it has a machine (or failed); returns it and the launch
    requests it cost."""
    before = rig.fake.count("POST", LAUNCH)
    for fault, times in faults:
        rig.fake.fault(fault, path=LAUNCH, method="POST", times=times)
    job_id = (await rig.stub.CreateJob(pb.CreateJobRequest(spec=_spec()), timeout=30)).job.job_id
    job = await _until(rig, job_id, _launched)
    # A provider that refuses the job itself (INVALID) never reached the API: that is not the fault under test.
    assert "the provider rejected the job" not in job.transitions[-1].reason, job.transitions[-1].reason
    return job, rig.fake.count("POST", LAUNCH) - before


async def test_429_is_retried_by_the_adapter_without_failover(rig: Rig) -> None:
    job, launches = await _run(rig, (Fault.rate_limited("0"), 2))
    assert launches == 3 and len(job.attempts) == 1 and job.attempts[0].outcome == A.ATTEMPT_OUTCOME_IN_PROGRESS
    assert len(_instances_of(rig.fake, job.job_id)) == 1
    await _finish(rig, job.job_id)


@pytest.mark.parametrize("fault", [Fault.server_error(503), Fault.malformed()], ids=["5xx", "malformed"])
async def test_5xx_and_malformed_answers_fail_over_to_the_next_region(rig: Rig, fault: Fault) -> None:
    # transient_retries=1: the engine tries the first region twice, then blocks it and moves on.
    job, launches = await _run(rig, (fault, 2))
    assert launches == 3
    first, second = job.attempts
    assert first.outcome == A.ATTEMPT_OUTCOME_LAUNCH_FAILED and second.outcome == A.ATTEMPT_OUTCOME_IN_PROGRESS
    assert {first.offer.region, second.offer.region} == set(REGIONS)
    machines = _instances_of(rig.fake, job.job_id)
    assert [m["region"]["name"] for m in machines] == [second.offer.region]  # one machine, where the job failed over to
    await _finish(rig, job.job_id)


async def test_a_launch_whose_answer_is_lost_is_adopted_not_repeated(rig: Rig) -> None:
    # The launch happens, then the connection hangs past the client's 0.5 s timeout.
    job, launches = await _run(rig, (Fault.hang(3.0, after=True), 1))
    assert launches == 1 and len(job.attempts) == 1 and job.attempts[0].outcome == A.ATTEMPT_OUTCOME_IN_PROGRESS
    machines = _instances_of(rig.fake, job.job_id)
    assert len(machines) == 1 and job.attempts[0].provider_ref == machines[0]["id"]
    await _finish(rig, job.job_id)


async def test_every_region_failing_fails_the_job_and_leaves_no_machine(rig: Rig) -> None:
    job, launches = await _run(rig, (Fault.server_error(502), 4))
    job = await _until(rig, job.job_id, lambda j: j.state == S.JOB_STATE_FAILED)
    assert launches == 4 and [a.outcome for a in job.attempts] == [A.ATTEMPT_OUTCOME_LAUNCH_FAILED] * 2
    assert "no offer could be launched" in job.transitions[-1].reason
    assert not _instances_of(rig.fake, job.job_id)


async def test_a_rejected_key_blocks_the_provider_and_is_never_shown(rig: Rig) -> None:
    # A server that echoes the credential back in its error body: the job's reasons must not carry it.
    echo = json.dumps({"error": {"code": "global/invalid-api-key", "message": f"key Bearer {KEY} ({KEY}) is invalid"}})
    job, launches = await _run(rig, (Fault(401, echo.encode(), {"Content-Type": "application/json"}), 1))
    job = await _until(rig, job.job_id, lambda j: j.state == S.JOB_STATE_FAILED)
    assert launches == 1 and len(job.attempts) == 1  # AUTH blocks the whole provider: no second region tried
    assert "invalid-api-key" in job.attempts[0].reason
    assert KEY not in str(job) and KEY not in job.SerializeToString().decode("utf-8", "replace")
    assert not _instances_of(rig.fake, job.job_id)


async def test_no_machine_is_left_running(rig: Rig) -> None:
    """Runs last in the module: every machine any test launched was terminated."""
    assert rig.fake.instances, "the module launched nothing"
    assert {i["status"] for i in rig.fake.instances.values()} == {"terminated"}
