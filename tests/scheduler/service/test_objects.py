"""The scheduler's object store on its default file:// backend: outputs uploaded when an attempt ends and served after
the working folder is gone, a restart in a fresh folder that resumes through CRUCIBLE_CHECKPOINT_URL, inputs staged and
refused, DeleteJobArtifacts refused while running, and the store's secret kept out of the logged config.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import re
import shutil
import sys
import tarfile
import textwrap

import grpc
import pytest

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.runtime.config import load_config
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.domain import states as st
from crucible.scheduler.engine.coordinator import Engine, EngineSettings
from crucible.scheduler.objects.objectstore import StoreSettings
from crucible.scheduler.persistence.jobdb import AsyncJobStore, JobStore
from crucible.scheduler.providers.base import ArtifactInfo, ProviderCapabilities, ProviderError, ProviderErrorKind
from crucible.scheduler.providers.registry import ProviderRegistry
from tests.scheduler.engine.test_engine import OK, RUNNING, FixedOffers, ScriptedProvider, finish, offer
from tests.scheduler.engine.test_engine import spec as engine_spec
from tests.scheduler.service.test_scheduler import error_of, final, local_spec, start_scheduler

S = job_pb2.JobState
# Attempt 1 saves a checkpoint through the SDK, leaves a file and fails; attempt 2 (a fresh folder) must resume.
RESUMING = textwrap.dedent("""
    import os, sys
    from crucible.clients.checkpoint import load_latest, save_checkpoint
    found = load_latest(raw=True)
    print("attempt", os.environ["CRUCIBLE_ATTEMPT"], "leftover", os.path.exists("left.txt"),
          "resumed", found[1].step if found else None, "input", open("data/words.txt").read().strip(), flush=True)
    if found is None:
        save_checkpoint(b"weights at step 7", 7, {"loss": 1.5})
        open("left.txt", "w").write("from attempt 1")
        sys.exit(3)
    open("out/result.txt", "w").write("x" * 5000)
""")


@pytest.fixture
async def sched(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "words.txt").write_text("hello input\n")
    server, port = await start_scheduler(str(tmp_path / "state"), code_roots=(str(tmp_path),), input_roots=(f"file://{data}",))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.SchedulerServiceStub(channel), tmp_path, port
    await channel.close()
    await server.stop(0)


async def test_restart_resumes_in_a_fresh_folder_and_outputs_outlive_it(sched) -> None:
    stub, tmp, _ = sched
    code = tmp / "code"
    (code / "out").mkdir(parents=True)
    (code / "job.py").write_text(RESUMING)
    spec = local_spec(
        [sys.executable, "job.py"],
        code_dir=str(code),
        restart_policy=job_pb2.RestartPolicy(max_restarts_on_errors=1),
        inputs=[job_pb2.JobInput(uri=f"file://{tmp}/data/words.txt", path="data/words.txt")],
    )
    job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec))).job
    done = await final(stub, job.job_id)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.transitions[-1].reason
    text = "".join(c.text for c in [c async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job.job_id))])
    assert "attempt 1 leftover False resumed None input hello input" in text
    assert "attempt 2 leftover False resumed 7 input hello input" in text  # fresh folder, checkpoint from the store

    shutil.rmtree(tmp / "state" / "jobs" / job.job_id / "work")
    arts = {a.path: a for a in (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts}
    assert {"left.txt", "out/result.txt", "checkpoints/step-000000000007/state.pt"} <= set(arts)
    assert "job.py" not in arts and "data/words.txt" not in arts  # code and inputs are not outputs
    assert arts["checkpoints/step-000000000007/state.pt"].checkpoint
    got = [
        c async for c in stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path="out/result.txt", offset=4990))
    ]
    assert b"".join(c.data for c in got) == b"x" * 10 and got[-1].total_size_bytes == 5000
    assert got[-1].sha256 == hashlib.sha256(b"x" * 10).hexdigest()
    code_, _reason, _ = await error_of(
        stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job.job_id, path="out/result.txt", offset=5001)).read()
    )
    assert code_ == grpc.StatusCode.OUT_OF_RANGE
    ckpt = [
        c
        async for c in stub.DownloadArtifact(
            pb.DownloadArtifactRequest(job_id=job.job_id, path="checkpoints/step-000000000007/state.pt")
        )
    ]
    assert b"".join(c.data for c in ckpt) == b"weights at step 7"

    deleted = await stub.DeleteJobArtifacts(pb.DeleteJobArtifactsRequest(job_id=job.job_id))
    assert deleted.objects_deleted >= 4
    assert not (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts
    again = await stub.DeleteJobArtifacts(pb.DeleteJobArtifactsRequest(job_id=job.job_id))
    assert again.objects_deleted == 0


async def test_delete_refused_while_running_and_bad_inputs_name_the_field(sched) -> None:
    stub, tmp, _ = sched
    job = (await stub.CreateJob(pb.CreateJobRequest(spec=local_spec([sys.executable, "-c", "import time; time.sleep(60)"])))).job
    code_, reason, _ = await error_of(stub.DeleteJobArtifacts(pb.DeleteJobArtifactsRequest(job_id=job.job_id)))
    assert code_ == grpc.StatusCode.FAILED_PRECONDITION and reason == "JOB_NOT_TERMINAL"
    await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id))
    await final(stub, job.job_id)

    (tmp / "secret.txt").write_text("not an input")
    for uri, path, field in (
        (f"file://{tmp}/secret.txt", "", "spec.inputs[0].uri"),  # outside --input-roots
        ("ftp://example.com/x", "", "spec.inputs[0].uri"),
        ("builtin:tinyshakespeare", "../escape", "spec.inputs[0].path"),
    ):
        code_, _, fields = await error_of(
            stub.CreateJob(
                pb.CreateJobRequest(
                    spec=local_spec([sys.executable, "-c", "pass"], inputs=[job_pb2.JobInput(uri=uri, path=path)])
                )
            )
        )
        assert code_ == grpc.StatusCode.INVALID_ARGUMENT and fields[0][0] == field, (uri, fields)


def test_store_secret_is_masked_and_bad_settings_refused(tmp_path) -> None:
    cfg = load_config(
        SchedulerConfig,
        "scheduler",
        env={},
        state_dir=str(tmp_path),
        artifact_store="s3://b/p",
        artifact_store_secret_key="very-secret",
        artifact_store_access_key="AKIA1",
    )
    shown = cfg.public_dict()
    assert shown["artifact_store_secret_key"] == "***" and "very-secret" not in repr(cfg.store_settings())
    assert cfg.store_settings().url == "s3://b/p"
    assert (
        load_config(SchedulerConfig, "scheduler", env={}, state_dir=str(tmp_path)).store_settings().url
        == f"file://{tmp_path.resolve()}/store"
    )
    with pytest.raises(Exception, match="artifact_store"):
        load_config(SchedulerConfig, "scheduler", env={}, state_dir=str(tmp_path), artifact_store="relative/folder")


# The job's own checkpoint folder of the file:// store is in its sandbox; another job's is not (issue 22).
PROBE = textwrap.dedent("""
    import os
    own = os.environ["CRUCIBLE_CHECKPOINT_URL"][len("file://"):]
    os.makedirs(os.path.join(own, "step-000000000001"), exist_ok=True)
    open(os.path.join(own, "step-000000000001", "state.pt"), "wb").write(b"mine")
    print("own checkpoint saved as uid", os.getuid(), flush=True)
    other = os.environ.get("OTHER_JOB")
    if other:
        url = os.environ["CRUCIBLE_CHECKPOINT_URL"].replace(os.environ["CRUCIBLE_JOB_ID"], other)
        folder = url[len("file://"):]
        for what, action in (("list", lambda: os.listdir(folder)),
                             ("write", lambda: open(os.path.join(folder, "planted"), "wb").write(b"x"))):
            try:
                action()
                print(f"other job's checkpoints: {what} allowed", flush=True)
            except OSError as exc:
                print(f"other job's checkpoints: {what} denied ({type(exc).__name__})", flush=True)
""")


async def test_job_writes_its_own_checkpoints_and_no_other_jobs(tmp_path) -> None:
    state = tmp_path / "state"
    server, port = await start_scheduler(str(state))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            first = (await stub.CreateJob(pb.CreateJobRequest(spec=local_spec([sys.executable, "-c", PROBE])))).job
            done = await final(stub, first.job_id)
            assert done.state == S.JOB_STATE_SUCCEEDED, done.transitions[-1].reason
            folder = state / "store" / "jobs" / first.job_id / "checkpoints"
            st_ = folder.stat()
            assert (st_.st_uid, st_.st_mode & 0o777) == (os.geteuid(), 0o700)  # taken back when the attempt ended
            assert (folder / "step-000000000001" / "state.pt").read_bytes() == b"mine"
            second = (
                await stub.CreateJob(
                    pb.CreateJobRequest(spec=local_spec([sys.executable, "-c", PROBE], env={"OTHER_JOB": first.job_id}))
                )
            ).job
            done = await final(stub, second.job_id)
            assert done.state == S.JOB_STATE_SUCCEEDED, done.transitions[-1].reason
            text = "".join(c.text for c in [c async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=second.job_id))])
            assert int(text.split("own checkpoint saved as uid ", 1)[1].split()[0]) >= 200000  # a job uid of the range
            assert "list denied" in text and "write denied" in text and "allowed" not in text
            assert not (folder / "planted").exists()
    finally:
        await server.stop(0)


async def test_retention_removes_ended_jobs_files_at_start(tmp_path) -> None:
    state = str(tmp_path / "state")
    server, port = await start_scheduler(state)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            job = (
                await stub.CreateJob(
                    pb.CreateJobRequest(
                        spec=local_spec([sys.executable, "-c", "open('out.txt', 'w').write('kept until retention')"])
                    )
                )
            ).job
            assert (await final(stub, job.job_id)).state == S.JOB_STATE_SUCCEEDED
            listed = await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))
            assert [a.path for a in listed.artifacts] == ["out.txt"]
    finally:
        await server.stop(0)
    store = tmp_path / "state" / "store" / "jobs" / job.job_id
    assert (store / "artifacts" / "out.txt").exists()
    server, port = await start_scheduler(state, artifact_retention_days=1e-9)  # ended long enough ago
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            for _ in range(100):
                if not store.exists():
                    break
                await asyncio.sleep(0.1)
            assert not store.exists() and not (tmp_path / "state" / "jobs" / job.job_id / "work").exists()
            assert not (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts
            assert (await stub.GetJob(pb.GetJobRequest(job_id=job.job_id))).job.state == S.JOB_STATE_SUCCEEDED
    finally:
        await server.stop(0)


async def test_cli_submits_inputs_and_deletes_stored_artifacts(sched, capsys) -> None:
    from crucible.cli import main

    stub, tmp, port = sched
    words = f"file://{tmp}/data/words.txt"
    argv = [
        "jobs",
        "submit",
        "--address",
        f"127.0.0.1:{port}",
        "--provider",
        "local",
        "--follow",
        "--no-logs",
        "--input",
        f"in/words.txt={words}",
        "--input",
        "builtin:tinyshakespeare",
        "--",
        sys.executable,
        "-c",
        "import os; open('copy.txt', 'w').write(open('in/words.txt').read() + "
        "str(os.path.getsize('data/tinyshakespeare/input.txt')))",
    ]
    assert await asyncio.to_thread(main, argv) == 0, capsys.readouterr().err
    job_id = re.search(r"job (job-\S+) ", capsys.readouterr().out).group(1)
    got = b"".join([c.data async for c in stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id, path="copy.txt"))])
    assert got == b"hello input\n1115394"
    argv = ["jobs", "artifacts", "--address", f"127.0.0.1:{port}", job_id, "--delete"]
    assert await asyncio.to_thread(main, argv) == 0
    assert re.search(rf"deleted [1-9]\d* stored object\(s\) of {job_id}", capsys.readouterr().out)


class _RemoteWithFiles(ScriptedProvider):
    """A scripted remote provider whose runs leave one file, readable until the machine is released."""

    capabilities = ProviderCapabilities(artifacts=True)

    def __init__(self, name: str, script: list) -> None:
        super().__init__(name, script)
        self.released: set[str] = set()

    async def cancel(self, handle) -> None:
        await super().cancel(handle)
        self.released.add(handle.ref)

    async def list_artifacts(self, handle):
        return [] if handle.ref in self.released else [ArtifactInfo("out/model.bin", 6, 1.0)]

    async def open_artifact(self, handle, path, chunk_bytes=1 << 20):
        if handle.ref in self.released or path != "out/model.bin":
            raise ProviderError(self.name, ProviderErrorKind.NOT_FOUND, path)
        yield b"wei"
        yield b"ght"


async def test_remote_attempt_gets_presigned_code_and_inputs_and_its_files_outlive_the_machine(
    tmp_path, s3_server, s3_bucket
) -> None:
    import urllib.request

    rp = _RemoteWithFiles("runpod", [[RUNNING, OK]])
    store = AsyncJobStore(JobStore(tmp_path / "jobs.db", synchronous="NORMAL"))
    settings = EngineSettings(
        tmp_path,
        poll_interval_s=0.02,
        store=StoreSettings(
            f"s3://{s3_bucket}/crucible", endpoint_url=s3_server, access_key="testing", secret_key="testing", region="us-east-1"
        ),
        code_url_ttl_s=300,
    )
    engine = Engine(settings, store, ProviderRegistry((), instances={"runpod": rp}), FixedOffers([offer("runpod", "", 2.0)]))
    await engine.start()
    try:
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            info = tarfile.TarInfo("train.py")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"pass\n"))
        job = await engine.create(
            engine_spec(code_archive=archive.getvalue(), inputs=[job_pb2.JobInput(uri="builtin:tinyshakespeare")]), "", False
        )
        done = await finish(engine, job.job_id)
        assert done.state == st.SUCCEEDED, done.transitions[-1].reason
        launch = rp.launches[0]
        code = await asyncio.to_thread(lambda: urllib.request.urlopen(launch.code_url, timeout=10).read())
        assert launch.code_url.startswith(s3_server) and "Signature" in launch.code_url
        assert hashlib.sha256(code).hexdigest() == launch.code_sha256
        with tarfile.open(fileobj=io.BytesIO(code)) as tar:
            assert tar.extractfile("train.py").read() == b"pass\n"
        ((path, url),) = launch.input_urls
        assert path == "data/tinyshakespeare/input.txt"
        data = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
        assert data.startswith(b"First Citizen")
        assert launch.env["CRUCIBLE_CHECKPOINT_URL"] == f"s3://{s3_bucket}/crucible/jobs/{job.job_id}/checkpoints"
        assert "AWS_SECRET_ACCESS_KEY" not in launch.env  # no role and no opt-in: the scheduler's keys stay home
        # The machine is released; the file it left was pulled into the store before that.
        assert rp.released and await engine.artifacts(job.job_id, "") == [
            ("out/model.bin", 6, pytest.approx(mtime_of(engine, job.job_id), abs=5), False)
        ]
        got = [c async for c in engine.download(job.job_id, "out/model.bin", 2)]
        assert b"".join(c[1] for c in got) == b"ight" and got[-1][3] == hashlib.sha256(b"ight").hexdigest()
    finally:
        await engine.stop()


def mtime_of(engine: Engine, job_id: str) -> float:
    return engine.objects.stat(job_id, "artifacts", "out/model.bin").mtime


async def test_cli_follow_into_a_pipe_prints_each_state_and_log_line_once(sched, capsys) -> None:
    """`jobs submit --follow` into a file: the status line only when it changes (the job is updated many times in
    one state), every log line once, and the estimate without the transition's "created; " or a doubled "unknown"."""
    from crucible.cli import main

    _stub, _tmp, port = sched
    script = "import time\nfor i in range(5):\n    print(f'line {i}', flush=True); time.sleep(0.3)"
    argv = ["jobs", "submit", "--address", f"127.0.0.1:{port}", "--provider", "local", "--follow", "--"]
    assert await asyncio.to_thread(main, [*argv, sys.executable, "-c", script]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    for i in range(5):
        assert out.count(f"line {i}\n") == 1, out
    states = [line.split()[0] for line in out.splitlines() if line.endswith("cost so far unknown")]
    assert states and all(a != b for a, b in itertools.pairwise(states)), out
    assert "estimated cost: unknown (no cost service configured)\n" in out and "created;" not in out, out
