"""Issue 22 class 7: job records are bounded. Every JobSpec field has a bound checked at CreateJob, unknown fields are
dropped before storage, a ListJobs page is bounded in bytes, ended jobs can be deleted, and errors echo no huge id.

Each test failed on the code before the fix: three huge CreateJob calls made every ListJobs page past the message
limit, unknown fields were stored whole, there was no DeleteJob, and GetJob echoed an 8 MiB id.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.clients.channel import ChannelConfig
from crucible.clients.scheduler import SchedulerClient
from crucible.scheduler import convert
from crucible.scheduler.engine import jobspec
from tests.scheduler.reliability.test_hardening import Scheduler, finished, refused

S = job_pb2.JobState
MIB = 1 << 20


def dryrun(**kw) -> job_pb2.JobSpec:
    """A dryrun job; `kw` may replace the command too."""
    fields = {"command": ["python", "train.py"], "provider_policy": job_pb2.PROVIDER_POLICY_EXPLICIT, "providers": ["dryrun"]}
    return job_pb2.JobSpec(**{**fields, **kw})


def _unknown_field(number: int, payload: bytes) -> bytes:
    """The wire bytes of a length-delimited field `number` that JobSpec does not define."""
    tag = (number << 3) | 2
    out = bytearray()
    for value in (tag, len(payload)):
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out) + payload


async def test_three_huge_jobs_are_refused_field_by_field_and_listing_still_works(tmp_path: Path) -> None:
    """The probe: CreateJob calls near the message limit (a huge env value, argv, display name, env count) are each
    refused naming the field; jobs as large as the bounds allow still list, in pages under 1 MiB, for a client with
    gRPC's default 4 MiB receive limit (before the fix the first page of 20 of them was past it)."""
    sched = Scheduler(tmp_path / "state")
    async with sched as stub:
        for spec, field in (
            (dryrun(env={"BIG": "x" * (20 * MIB)}), "spec.env[BIG]"),
            (dryrun(command=["python", *(["a" * 1000] * 20000)]), "spec.command"),
            (dryrun(command=["python", "y" * (20 * MIB)]), "spec.command[1]"),
            (dryrun(display_name="n" * (20 * MIB)), "spec.display_name"),
            (dryrun(env={f"V{i}": "v" for i in range(5000)}), "spec.env"),
        ):
            await refused(stub.CreateJob(pb.CreateJobRequest(spec=spec), timeout=60), field)
        biggest = dryrun(
            env={f"V{i}": "v" * (jobspec.MAX_ENV_VALUE_BYTES - 100) for i in range(4)},
            command=["python", *(["a" * (jobspec.MAX_ARG_BYTES - 100)] * 3)],
        )
        assert biggest.ByteSize() <= jobspec.MAX_SPEC_BYTES
        for _ in range(20):
            await stub.CreateJob(pb.CreateJobRequest(spec=biggest), timeout=60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sched.port}") as channel:  # gRPC's default 4 MiB limit
            plain = type(stub)(channel)
            seen, pages, token = 0, 0, ""
            while True:
                reply = await plain.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=60)
                assert 0 < reply.ByteSize() <= jobspec.MAX_LIST_PAGE_BYTES + 1024
                seen, pages, token = seen + len(reply.jobs), pages + 1, reply.next_page_token
                if not token:
                    break
            assert seen == 20 and pages >= 4


async def test_unknown_fields_are_dropped_before_storage(tmp_path: Path) -> None:
    async with Scheduler(tmp_path / "state") as stub:
        raw = dryrun().SerializeToString() + _unknown_field(999, b"z" * MIB)
        request = pb.CreateJobRequest()
        request.spec.MergeFromString(raw)
        job = (await stub.CreateJob(request, timeout=60)).job
        stored = (await stub.GetJob(pb.GetJobRequest(job_id=job.job_id))).job
        assert stored.ByteSize() < 64 * 1024, stored.ByteSize()
        # Also in a nested message (resources) and at the top of the request.
        request = pb.CreateJobRequest()
        request.spec.CopyFrom(dryrun())
        request.spec.resources.MergeFromString(_unknown_field(77, b"r" * MIB))
        job = (await stub.CreateJob(request, timeout=60)).job
        listed = (await stub.ListJobs(pb.ListJobsRequest())).jobs
        assert all(j.ByteSize() < 64 * 1024 for j in listed)


async def test_delete_job_lifecycle(tmp_path: Path) -> None:
    sched = Scheduler(tmp_path / "state")
    async with sched as stub, SchedulerClient(ChannelConfig((f"127.0.0.1:{sched.port}",))) as client:
        running = (
            await stub.CreateJob(
                pb.CreateJobRequest(
                    spec=job_pb2.JobSpec(
                        command=[sys.executable, "-c", "import time; time.sleep(60)"],
                        provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT,
                        providers=["local"],
                    )
                )
            )
        ).job
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.delete_job(running.job_id)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await stub.CancelJob(pb.CancelJobRequest(job_id=running.job_id))
        assert (await finished(stub, running.job_id)).state == S.JOB_STATE_CANCELLED

        done = (await stub.CreateJob(pb.CreateJobRequest(spec=dryrun()))).job
        assert (await finished(stub, done.job_id)).state == S.JOB_STATE_SUCCEEDED
        folder = sched.jobs_dir / done.job_id
        assert folder.is_dir()
        for job_id in (running.job_id, done.job_id):
            await client.delete_job(job_id)
            for call in (
                stub.GetJob(pb.GetJobRequest(job_id=job_id)),
                stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id)),
                stub.ListJobProgress(pb.ListJobProgressRequest(job_id=job_id)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert not folder.exists()
        assert not (await stub.ListJobs(pb.ListJobsRequest())).jobs
        await refused(stub.DeleteJob(pb.DeleteJobRequest(job_id="")), "job_id")


async def test_an_8_mib_job_id_is_not_echoed(tmp_path: Path) -> None:
    huge = "j" * (8 * MIB)
    async with Scheduler(tmp_path / "state") as stub:
        for call in (
            stub.GetJob(pb.GetJobRequest(job_id=huge), timeout=60),
            stub.DeleteJob(pb.DeleteJobRequest(job_id=huge), timeout=60),
            stub.CancelJob(pb.CancelJobRequest(job_id=huge), timeout=60),
            stub.GetJob(pb.GetJobRequest(job_id="job-1\n"), timeout=60),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(info.value.details()) < 400, len(info.value.details())
            assert sum(len(v) for _k, v in info.value.trailing_metadata() or ()) < 4096


def test_spec_bounds_are_documented_in_the_proto() -> None:
    """Each bound the code enforces is stated in the JobSpec comments (the contract users read)."""
    text = (Path(__file__).parents[2] / "protos/crucible/scheduler/v1/job.proto").read_text()
    for bound in (
        jobspec.MAX_ARGS,
        jobspec.MAX_ARG_BYTES,
        jobspec.MAX_COMMAND_BYTES,
        jobspec.MAX_ENV_VARS,
        jobspec.MAX_ENV_VALUE_BYTES,
        jobspec.MAX_ENV_BYTES,
        jobspec.MAX_SPEC_BYTES,
    ):
        assert str(bound) in text, bound


def test_json_round_trip_of_a_bounded_spec() -> None:
    """The bounds leave ordinary specs alone."""
    spec = json_format.ParseDict(
        {"command": ["python", "train.py"], "env": {"A": "1"}, "provider_policy": "PROVIDER_POLICY_CHEAPEST"},
        job_pb2.JobSpec(),
    )
    jobspec.validate_spec(convert.spec(spec), "", {"dryrun"})  # as the servicer hands it on
