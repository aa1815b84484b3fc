"""The scheduler server on port 0 with the real `local` provider: lifecycle, logs, artifacts, errors, sizing, restarts.

Also a kill -9 of a scheduler process mid-run followed by a restart, and jobs priced by the real cost server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from crucible.api.cost.v1 import budget_pb2, cost_service_pb2, cost_service_pb2_grpc
from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.health import wait_serving
from crucible.runtime.config import load_config
from crucible.runtime.errors import parse_status_details
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.server import create_server
from tests.conftest import free_port_block

S = job_pb2.JobState
GIB = 1 << 30

JOB_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    os.makedirs(os.environ["CRUCIBLE_CHECKPOINT_DIR"], exist_ok=True)
    for i in range(4):
        print(f"iter {i}: loss {4 - i}.5, time 10.0ms", flush=True)
        print(json.dumps({"crucible_progress": {"step": i, "total_steps": 4}}), flush=True)
        time.sleep(0.05)
    print("warning: üñí", file=sys.stderr, flush=True)
    with open(os.path.join(os.environ["CRUCIBLE_CHECKPOINT_DIR"], "ckpt.bin"), "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024 + 17))
    open("result.txt", "w").write("done " + os.environ["CRUCIBLE_JOB_ID"])
""")


def local_spec(command: list[str], **kw) -> job_pb2.JobSpec:
    base = dict(command=command, provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT, providers=["local"])
    base.update(kw)
    return job_pb2.JobSpec(**base)


async def start_scheduler(state_dir: str, **overrides):
    cfg = load_config(
        SchedulerConfig, "scheduler", env={}, port=0, state_dir=state_dir, poll_interval_s=0.1, metrics_enabled=False, **overrides
    )
    server, port = create_server(cfg)
    await server.start()
    await server.wait_ready(30)
    return server, port


@pytest.fixture
async def sched(tmp_path):
    server, port = await start_scheduler(str(tmp_path / "state"), code_roots=(str(tmp_path),))  # job code from tmp_path
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.SchedulerServiceStub(channel), tmp_path
    await channel.close()
    await server.stop(0)


async def final(stub, job_id: str, timeout: float = 60) -> job_pb2.Job:
    async def run():
        last = None
        async for r in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
            last = r.job
        return last

    return await asyncio.wait_for(run(), timeout)


async def wait_state(stub, job_id: str, state: int, timeout: float = 60) -> job_pb2.Job:
    async def run():
        async for r in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
            if r.job.state == state:
                return r.job
        raise AssertionError(f"job ended without reaching {S.Name(state)}")

    return await asyncio.wait_for(run(), timeout)


async def error_of(call) -> tuple[grpc.StatusCode, str, list]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    info, violations = parse_status_details(err.value)
    return err.value.code(), info.reason if info else "", violations


async def test_local_job_lifecycle_logs_and_artifacts(sched) -> None:
    stub, tmp = sched
    code = tmp / "code"
    code.mkdir()
    (code / "job.py").write_text(JOB_SCRIPT)
    spec = local_spec([sys.executable, "job.py"], code_dir=str(code), display_name="lifecycle")
    job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec, request_id="req-1"))).job
    assert job.job_id and job.state == S.JOB_STATE_PENDING
    assert "cost unknown" in job.transitions[0].reason
    again = (await stub.CreateJob(pb.CreateJobRequest(spec=spec, request_id="req-1"))).job
    assert again.job_id == job.job_id  # idempotent: not launched twice
    other = local_spec([sys.executable, "-c", "pass"])
    assert (await error_of(stub.CreateJob(pb.CreateJobRequest(spec=other, request_id="req-1"))))[
        0
    ] == grpc.StatusCode.ALREADY_EXISTS

    done = await final(stub, job.job_id)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.transitions
    assert [t.to_state for t in done.transitions] == [
        S.JOB_STATE_PENDING,
        S.JOB_STATE_PROVISIONING,
        S.JOB_STATE_RUNNING,
        S.JOB_STATE_SUCCEEDED,
    ]
    assert done.progress.step == 3 and done.progress.total_steps == 4 and done.progress.metrics["loss"] == 1.5
    assert done.latest_checkpoint == "checkpoints/ckpt.bin"
    assert len(done.attempts) == 1 and done.attempts[0].exit_code == 0

    chunks = [c async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job.job_id))]
    out = "".join(c.text for c in chunks if c.stream == pb.LOG_STREAM_STDOUT)
    err = "".join(c.text for c in chunks if c.stream == pb.LOG_STREAM_STDERR)
    assert out.count("iter ") == 4 and err == "warning: üñí\n"
    first = next(c for c in chunks if c.stream == pb.LOG_STREAM_STDOUT)
    tail = [
        c
        async for c in stub.StreamJobLogs(
            pb.StreamJobLogsRequest(job_id=job.job_id, streams=[pb.LOG_STREAM_STDOUT], stdout_offset=first.next_offset - 10)
        )
    ]
    assert "".join(c.text for c in tail) == out[len(out.encode()[: first.next_offset - 10].decode()) :]

    arts = (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts
    assert [(a.path, a.checkpoint) for a in arts] == [("checkpoints/ckpt.bin", True), ("result.txt", False)]
    page = await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id, page_size=1))
    assert len(page.artifacts) == 1 and page.next_page_token
    page2 = await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id, page_size=1, page_token=page.next_page_token))
    assert [a.path for a in page2.artifacts] == ["result.txt"]

    ckpt = tmp / "state" / "jobs" / job.job_id / "work" / "checkpoints" / "ckpt.bin"
    want = ckpt.read_bytes()
    got = [c async for c in stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path="checkpoints/ckpt.bin"))]
    assert len(got) == 4 and b"".join(c.data for c in got) == want
    assert got[-1].sha256 == hashlib.sha256(want).hexdigest() and not got[0].sha256
    resumed = [
        c
        async for c in stub.DownloadArtifact(
            pb.DownloadArtifactRequest(job_id=job.job_id, path="checkpoints/ckpt.bin", offset=len(want) - 5)
        )
    ]
    # The sha256 covers the bytes sent from the offset: nothing before it is read (issue 12).
    assert b"".join(c.data for c in resumed) == want[-5:] and resumed[-1].sha256 == hashlib.sha256(want[-5:]).hexdigest()

    os.symlink("/etc/passwd", ckpt.parent / "escape")
    for bad in ("../../../scheduler.db", "/etc/passwd", "checkpoints/escape", "a/../../x"):
        code_, reason, fields = await error_of(
            _drain(stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path=bad)))
        )
        assert code_ == grpc.StatusCode.INVALID_ARGUMENT and fields[0][0] == "path", bad
    assert (await error_of(_drain(stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path="nope")))))[
        0
    ] == grpc.StatusCode.NOT_FOUND
    assert (
        await error_of(
            _drain(stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path="result.txt", offset=10**6)))
        )
    )[0] == grpc.StatusCode.OUT_OF_RANGE

    code_, reason, _ = await error_of(stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id)))
    assert code_ == grpc.StatusCode.FAILED_PRECONDITION and reason == "JOB_TERMINAL"
    assert (await error_of(stub.GetJob(pb.GetJobRequest(job_id="job-nope"))))[0] == grpc.StatusCode.NOT_FOUND


async def _drain(stream):
    return [c async for c in stream]


async def test_cancel_time_limit_and_restart_with_resume(sched) -> None:
    stub, _tmp = sched
    sleeper = (
        await stub.CreateJob(
            pb.CreateJobRequest(
                spec=local_spec([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(600)"])
            )
        )
    ).job
    running = await wait_state(stub, sleeper.job_id, S.JOB_STATE_RUNNING)
    pid = int(running.attempts[0].provider_ref)
    cancelling = (await stub.CancelJob(pb.CancelJobRequest(job_id=sleeper.job_id, reason="test"))).job
    assert cancelling.state == S.JOB_STATE_CANCELLING
    again = (await stub.CancelJob(pb.CancelJobRequest(job_id=sleeper.job_id))).job
    assert again.state in (S.JOB_STATE_CANCELLING, S.JOB_STATE_CANCELLED)
    done = await final(stub, sleeper.job_id)
    assert done.state == S.JOB_STATE_CANCELLED and done.transitions[-1].reason == "cancelled: test"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    limited = (
        await stub.CreateJob(
            pb.CreateJobRequest(
                spec=local_spec(
                    [sys.executable, "-c", "import time; time.sleep(600)"], max_duration=duration_pb2.Duration(seconds=1)
                )
            )
        )
    ).job
    done = await final(stub, limited.job_id)
    assert done.state == S.JOB_STATE_FAILED and "maximum duration" in done.transitions[-1].reason
    assert done.attempts[0].outcome == job_pb2.ATTEMPT_OUTCOME_STOPPED

    flaky = textwrap.dedent("""
        import os, sys
        print("attempt", os.environ["CRUCIBLE_ATTEMPT"], "resume", os.environ.get("CRUCIBLE_RESUME", "0"), flush=True)
        sys.exit(1 if os.environ["CRUCIBLE_ATTEMPT"] == "1" else 0)
    """)
    job = (
        await stub.CreateJob(
            pb.CreateJobRequest(
                spec=local_spec([sys.executable, "-c", flaky], restart_policy=job_pb2.RestartPolicy(max_restarts_on_errors=1))
            )
        )
    ).job
    done = await final(stub, job.job_id)
    assert done.state == S.JOB_STATE_SUCCEEDED
    assert [a.outcome for a in done.attempts] == [job_pb2.ATTEMPT_OUTCOME_USER_ERROR, job_pb2.ATTEMPT_OUTCOME_SUCCEEDED]
    logs = [c async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job.job_id))]
    assert "".join(c.text for c in logs) == "attempt 1 resume 0\nattempt 2 resume 1\n"
    assert [c.attempt for c in logs] == [1, 2]

    listed = await stub.ListJobs(pb.ListJobsRequest(page_size=2))
    assert [j.job_id for j in listed.jobs] == [job.job_id, limited.job_id] and listed.next_page_token
    rest = await stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=listed.next_page_token))
    assert [j.job_id for j in rest.jobs] == [sleeper.job_id] and not rest.next_page_token
    failed = await stub.ListJobs(pb.ListJobsRequest(states=[S.JOB_STATE_FAILED]))
    assert [j.job_id for j in failed.jobs] == [limited.job_id]
    code_, _, fields = await error_of(stub.ListJobs(pb.ListJobsRequest(states=[S.JOB_STATE_UNSPECIFIED])))
    assert code_ == grpc.StatusCode.INVALID_ARGUMENT and fields[0][0] == "states[0]"


async def test_bad_requests_name_the_field(sched) -> None:
    stub, _ = sched
    code_, _, fields = await error_of(stub.CreateJob(pb.CreateJobRequest(spec=local_spec([], env={"A": "1"}))))
    assert code_ == grpc.StatusCode.INVALID_ARGUMENT and fields[0][0] == "spec.command"
    code_, _, fields = await error_of(stub.CreateJob(pb.CreateJobRequest(spec=local_spec(["x"], env={"CRUCIBLE_X": "1"}))))
    assert fields[0][0] == "spec.env[CRUCIBLE_X]"
    code_, reason, _ = await error_of(stub.CreateJob(pb.CreateJobRequest(spec=local_spec(["x"], providers=["nimbus"]))))
    assert code_ == grpc.StatusCode.NOT_FOUND and reason == "UNKNOWN_PROVIDER"
    code_, reason, _ = await error_of(stub.CreateJob(pb.CreateJobRequest(spec=local_spec(["x"], providers=["lambda"]))))
    assert code_ == grpc.StatusCode.FAILED_PRECONDITION and reason == "PROVIDER_UNAVAILABLE"
    gpu = job_pb2.JobSpec(
        command=["x"], provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST, providers=["local"], resources={"gpu_count": 8}
    )
    code_, reason, _ = await error_of(stub.CreateJob(pb.CreateJobRequest(spec=gpu)))
    assert code_ == grpc.StatusCode.FAILED_PRECONDITION and reason == "NO_FEASIBLE_OFFER"
    dry = (await stub.CreateJob(pb.CreateJobRequest(spec=local_spec(["x"], providers=["dryrun"]), validate_only=True))).job
    assert dry.job_id == "" and dry.provider == "dryrun"
    assert not (await stub.ListJobs(pb.ListJobsRequest())).jobs  # validate_only stored nothing

    providers = {p.name: p for p in (await stub.ListProviders(pb.ListProvidersRequest())).providers}
    assert {"local", "dryrun", "lambda", "kubernetes", "modal", "paperspace", "runpod", "replicate", "colab"} <= set(providers)
    assert providers["local"].credentials_present and not providers["local"].unavailable_reason
    if not os.environ.get("LAMBDA_API_KEY"):
        assert not providers["lambda"].credentials_present and providers["lambda"].unavailable_reason


async def test_sizing_rpcs(sched) -> None:
    stub, _ = sched
    est = await stub.EstimateRequirements(
        pb.EstimateRequirementsRequest(
            transformer=pb.TransformerConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
            workload=pb.WORKLOAD_KIND_TRAINING,
            batch_size=12,
            precision=pb.PRECISION_MIXED_BF16,
            optimizer=pb.OPTIMIZER_ADAMW,
        )
    )
    assert est.parameter_count == 124_475_904 and est.optimizer_state_bytes == 8 * 124_475_904
    assert est.total_bytes == est.weights_bytes + est.gradients_bytes + est.optimizer_state_bytes + est.activations_bytes
    code_, _, fields = await error_of(
        stub.EstimateRequirements(
            pb.EstimateRequirementsRequest(
                parameter_count=10, workload=pb.WORKLOAD_KIND_TRAINING, batch_size=1, block_size=8, precision=pb.PRECISION_FP32
            )
        )
    )
    assert code_ == grpc.StatusCode.INVALID_ARGUMENT and fields[0][0] == "optimizer"

    models = [
        pb.PlacementModel(name="proposer", parameter_count=70_000_000_000, precision=pb.PRECISION_INT4),
        pb.PlacementModel(name="target", parameter_count=8_000_000_000, precision=pb.PRECISION_INT8),
        pb.PlacementModel(name="deberta", parameter_count=435_000_000, precision=pb.PRECISION_FP16),
    ]
    gpu = pb.Device(name="cuda:0", kind=pb.DEVICE_KIND_GPU, memory_bytes=80 * GIB)
    plan = await stub.PlanPlacement(
        pb.PlanPlacementRequest(models=models, devices=[gpu], parallel_requests=3, sequence_length=4096)
    )
    assert not plan.fits and any("move target to cpu" in line for line in plan.explanation)
    models[1].pinned_device = "cpu"
    cpu = pb.Device(name="cpu", kind=pb.DEVICE_KIND_CPU, memory_bytes=128 * GIB)
    plan = await stub.PlanPlacement(
        pb.PlanPlacementRequest(models=models, devices=[gpu, cpu], parallel_requests=3, sequence_length=4096)
    )
    assert plan.fits and list(plan.assignments[1].device_names) == ["cpu"]
    assert plan.assignments[0].strategy == pb.PLACEMENT_STRATEGY_SINGLE_DEVICE


def _serve_cmd(port: int, state: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "crucible",
        "serve",
        "scheduler",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--poll-interval-s",
        "0.1",
        "--metrics-enabled",
        "false",
        "--log-format",
        "text",
    ]


@pytest.mark.slow
async def test_kill9_and_restart_reconciles(tmp_path: Path) -> None:
    port = free_port_block(1)
    state = tmp_path / "state"
    log = open(tmp_path / "sched.log", "ab")
    proc = subprocess.Popen(_serve_cmd(port, state), stdout=log, stderr=log, start_new_session=True)
    try:
        await wait_serving(f"127.0.0.1:{port}", timeout=60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            long_job = (
                await stub.CreateJob(
                    pb.CreateJobRequest(
                        spec=local_spec(
                            [
                                sys.executable,
                                "-c",
                                "import time; print('launch', flush=True); time.sleep(4); print('finished')",
                            ]
                        )
                    )
                )
            ).job
            short_job = (
                await stub.CreateJob(
                    pb.CreateJobRequest(spec=local_spec([sys.executable, "-c", "import time, sys; time.sleep(1); sys.exit(3)"]))
                )
            ).job
            for j in (long_job, short_job):
                await wait_state(stub, j.job_id, S.JOB_STATE_RUNNING)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        await asyncio.sleep(2.0)  # the short job ends while no scheduler is running
        proc = subprocess.Popen(_serve_cmd(port, state), stdout=log, stderr=log, start_new_session=True)
        await wait_serving(f"127.0.0.1:{port}", timeout=60)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            short_done = await final(stub, short_job.job_id)
            assert short_done.state == S.JOB_STATE_FAILED and short_done.attempts[0].exit_code == 3
            long_done = await final(stub, long_job.job_id)
            assert long_done.state == S.JOB_STATE_SUCCEEDED and len(long_done.attempts) == 1
            text = "".join([c.text async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=long_job.job_id))])
            assert text == "launch\nfinished\n"  # re-attached, never launched twice (the job sees no host folder)
            assert len((await stub.ListJobs(pb.ListJobsRequest())).jobs) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


async def test_with_the_real_cost_service(tmp_path: Path) -> None:
    from crucible.cost.config import CostConfig
    from crucible.cost.server import create_server as create_cost_server

    cost_cfg = load_config(CostConfig, "cost", env={}, port=0, state_dir=str(tmp_path / "cost"), metrics_enabled=False)
    cost, cost_port = create_cost_server(cost_cfg)
    await cost.start()
    await cost.wait_ready(30)
    server, port = await start_scheduler(str(tmp_path / "state"), cost_address=f"127.0.0.1:{cost_port}", usage_interval_s=0.2)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
            grpc.aio.insecure_channel(f"127.0.0.1:{cost_port}") as cost_ch,
        ):
            stub = pb_grpc.SchedulerServiceStub(ch)
            cost_stub = cost_service_pb2_grpc.CostServiceStub(cost_ch)
            spec = job_pb2.JobSpec(
                command=[sys.executable, "-c", "import time; time.sleep(1.0)"],
                provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST,
                providers=["local"],
                budget_scope="project:test",
                expected_duration=duration_pb2.Duration(seconds=3600),
            )
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec))).job
            assert job.offer.offer_id.startswith("local/") and job.cost.estimated_usd > 0
            done = await final(stub, job.job_id)
            assert done.state == S.JOB_STATE_SUCCEEDED
            assert done.cost.spent_usd > 0  # recorded with RecordUsage, read back from the cost service's answer
            await cost_stub.CreateBudget(
                cost_service_pb2.CreateBudgetRequest(
                    budget=budget_pb2.Budget(
                        scope="project:capped", limit_usd=0.0001, enforcement=budget_pb2.BUDGET_ENFORCEMENT_HARD
                    )
                )
            )
            spec.budget_scope = "project:capped"
            code_, reason, _ = await error_of(stub.CreateJob(pb.CreateJobRequest(spec=spec)))
            assert code_ == grpc.StatusCode.FAILED_PRECONDITION and reason == "BUDGET_EXCEEDED"
    finally:
        await server.stop(0)
        await cost.stop(0)
