"""kill -9 of a `crucible serve scheduler` process, twice, with jobs in every state, then restarts from the same state dir.

No job is lost or duplicated: each job's command ran exactly once (it prints `started`, counted in every attempt's
stdout file: a sandboxed job cannot write outside its own folder) and every job ends
in its real terminal state: those that finished while no scheduler ran get their true exit status, a job cancelled just
before the crash ends CANCELLED with its process gone, jobs created a moment before the crash are launched once.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
from pathlib import Path

import grpc
import pytest

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.health import wait_serving
from tests.conftest import free_port_block
from tests.reliability.support import ServiceProcess, child_env, serve_command

S = job_pb2.JobState
TERMINAL = {S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED}


def _command(sleep_s: float, exit_code: int = 0) -> list[str]:
    script = (
        f"import sys, time; print('started', flush=True); time.sleep({sleep_s}); print('finished', flush=True); "
        f"sys.exit({exit_code})"
    )
    return [sys.executable, "-c", script]


def _launches(state: Path, job_id: str) -> int:
    """How many times the job's command started, from the stdout files of all its attempts."""
    return sum(f.read_text().split().count("started") for f in (state / "jobs" / job_id / "attempts").glob("*/stdout"))


def _spec(command: list[str]) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(command=command, provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT, providers=["local"])


class Scheduler:
    """Starts, kills and restarts the scheduler on one port and state folder."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port_block(1)
        self.address = f"127.0.0.1:{self.port}"
        self.state = tmp / "state"
        self.log = tmp / "scheduler.log"
        self.proc: ServiceProcess | None = None

    async def start(self) -> None:
        """Start a scheduler process and wait until it is SERVING (resumed jobs included)."""
        argv = serve_command(
            "scheduler",
            self.port,
            "--state-dir",
            str(self.state),
            "--poll-interval-s",
            "0.1",
            "--metrics-enabled",
            "false",
            "--providers",
            "local",
            "--sqlite-synchronous",
            "FULL",
        )
        self.proc = ServiceProcess(argv, self.log, child_env())
        await wait_serving(self.address, timeout=90)

    def kill9(self) -> None:
        """SIGKILL the current process."""
        assert self.proc is not None
        self.proc.kill9()


async def _state(stub, job_id: str) -> job_pb2.Job:
    return (await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)).job


async def _wait_for(stub, job_id: str, states: set[int], timeout: float = 60) -> job_pb2.Job:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await _state(stub, job_id)
        if job.state in states:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} stuck in {S.Name(job.state)}: {list(job.transitions)}")
        await asyncio.sleep(0.1)


async def _wait_started(state: Path, job_ids: set[str], timeout: float = 30) -> None:
    """Until every job's command has printed `started` (RUNNING only says the process was started)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not all(_launches(state, j) for j in job_ids):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"commands of {job_ids} did not start")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_kill9_twice_with_jobs_in_every_state_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    sched = Scheduler(tmp_path)
    await sched.start()
    try:
        expect: dict[str, tuple[int, int | None]] = {}  # job id -> (terminal state, exit code)
        async with grpc.aio.insecure_channel(sched.address) as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)

            async def create(command: list[str]) -> str:
                return (await stub.CreateJob(pb.CreateJobRequest(spec=_spec(command)), timeout=30)).job.job_id

            # Running at the first crash and still running at the second; finishes afterwards.
            long_job = await create(_command(6.0))
            # Running at the crash, each ends while no scheduler runs: success and a user error.
            ends_ok = await create(_command(0.8))
            ends_bad = await create(_command(0.8, exit_code=5))
            # Cancelled right before the crash: CANCELLING when killed.
            victim = await create(_command(600))
            for job_id in (long_job, ends_ok, ends_bad, victim):
                await _wait_for(stub, job_id, {S.JOB_STATE_RUNNING})
            await _wait_started(sched.state, {long_job, ends_ok, ends_bad, victim})
            pid = int((await _state(stub, victim)).attempts[0].provider_ref)
            await stub.CancelJob(pb.CancelJobRequest(job_id=victim, reason="crash test"), timeout=10)
            # Created a moment before the crash: pending or launching when killed.
            fresh = [await create(_command(0.5)) for _ in range(3)]
            states_at_crash = {j: S.Name((await _state(stub, j)).state) for j in (*fresh, victim)}
        sched.kill9()
        expect.update(
            {
                long_job: (S.JOB_STATE_SUCCEEDED, 0),
                ends_ok: (S.JOB_STATE_SUCCEEDED, 0),
                ends_bad: (S.JOB_STATE_FAILED, 5),
                victim: (S.JOB_STATE_CANCELLED, None),
                **dict.fromkeys(fresh, (S.JOB_STATE_SUCCEEDED, 0)),
            }
        )
        await asyncio.sleep(1.5)  # ends_ok and ends_bad finish while nothing watches them

        await sched.start()
        async with grpc.aio.insecure_channel(sched.address) as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            # A second crash while the long job still runs and the fresh ones may be mid-launch.
            second_fresh = await stub.CreateJob(pb.CreateJobRequest(spec=_spec(_command(0.5))), timeout=30)
            expect[second_fresh.job.job_id] = (S.JOB_STATE_SUCCEEDED, 0)
        sched.kill9()
        await sched.start()

        async with grpc.aio.insecure_channel(sched.address) as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            for job_id, (state, exit_code) in expect.items():
                job = await _wait_for(stub, job_id, TERMINAL, timeout=90)
                assert job.state == state, (job_id, S.Name(job.state), list(job.transitions), states_at_crash)
                ran = [a for a in job.attempts if a.outcome != job_pb2.ATTEMPT_OUTCOME_LAUNCH_FAILED]
                assert len(ran) == 1, f"{job_id} ran {len(ran)} attempts: {list(job.attempts)}"
                if exit_code is not None:
                    assert ran[0].exit_code == exit_code
            logs = "".join([c.text async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=long_job))])
            assert logs == "started\nfinished\n"  # re-attached twice, its output mirrored once
            listed = (await stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=10)).jobs
            assert sorted(j.job_id for j in listed) == sorted(expect)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the cancelled job's process is gone
        launches = collections.Counter({j: _launches(sched.state, j) for j in expect})
        assert launches == collections.Counter(dict.fromkeys(expect, 1)), launches
    finally:
        if sched.proc is not None:
            sched.proc.stop()
