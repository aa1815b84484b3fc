"""Issue 12, scheduler side: the probes an outsider ran against a fresh scheduler, as tests that failed before the fix.

Class 1: code_dir allow-list, limits and special files, archives unpacked safely, the SDK packing by default.
Class 2: artifacts only as regular single-link files inside the job folder; long paths; downloads from an offset.
Class 3: logs kept in full up to a documented cap, then a field and a marker line. Class 6 is in
test_hardening_scheduler_secrets.py. Class 8: +Inf resources, billing until the real end of a run.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import sys
import tarfile
import zipfile
from pathlib import Path

import grpc
import pytest

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.channel import ChannelConfig
from crucible.clients.scheduler import SchedulerClient
from crucible.runtime.config import load_config
from crucible.runtime.convert import unix_seconds
from crucible.runtime.errors import InvalidArgument, parse_status_details
from crucible.scheduler import convert
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.engine import jobspec
from crucible.scheduler.providers.base import RunState, RunStatus
from crucible.scheduler.server import create_server
from tests.scheduler.engine.test_engine import FixedOffers, ScriptedProvider, make_engine, offer
from tests.scheduler.engine.test_engine import spec as gpu_spec

S = job_pb2.JobState


class Scheduler:
    """An in-process scheduler on port 0 and a stub; `jobs_dir` is where job folders go."""

    def __init__(self, state: Path, **overrides) -> None:
        cfg = load_config(
            SchedulerConfig,
            "scheduler",
            env={},
            port=0,
            state_dir=str(state),
            poll_interval_s=0.05,
            metrics_enabled=False,
            providers=("local", "dryrun"),
            **overrides,
        )
        self.server, self.port = create_server(cfg)
        self.jobs_dir = state / "jobs"

    async def __aenter__(self) -> pb_grpc.SchedulerServiceStub:
        await self.server.start()
        await self.server.wait_ready(30)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return pb_grpc.SchedulerServiceStub(self.channel)

    async def __aexit__(self, *exc) -> None:
        await self.channel.close()
        await self.server.stop(0)


def dryrun(**kw) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        command=["python", "train.py"], provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT, providers=["dryrun"], **kw
    )


def local(command: list[str], **kw) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(command=command, provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT, providers=["local"], **kw)


async def refused(call, field: str) -> str:
    """The call fails with INVALID_ARGUMENT naming `field`; returns the ErrorInfo reason."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    error_info, violations = parse_status_details(info.value)
    assert field in [v[0] for v in violations], (violations, info.value.details())
    return error_info.reason if error_info is not None else ""


async def finished(stub, job_id: str) -> job_pb2.Job:
    job = None
    async for reply in stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=120):
        job = reply.job
    return job


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _zip(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in names:
            z.writestr(name, "x")
    return buf.getvalue()


def _corrupt_zip() -> bytes:
    """A zip whose headers are fine and whose deflated data is not: it fails only while unpacking."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.py", "x" * 1000)
    data = bytearray(buf.getvalue())
    data[30 + len("a.py") + 5] ^= 0xFF
    return bytes(data)


# --- class 1: code_dir and code_archive ----------------------------------------------------------------------------


async def test_code_dir_is_refused_without_an_allow_list_and_nothing_is_copied(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "id_rsa").write_text("PRIVATE KEY")
    async with Scheduler(tmp_path / "state") as stub:
        for spec in (dryrun(code_dir=str(secrets)), dryrun(code_dir="/proc/self"), dryrun(code_dir="/etc")):
            reason = await refused(stub.CreateJob(pb.CreateJobRequest(spec=spec)), "spec.code_dir")
            assert reason == "CODE_DIR_NOT_ALLOWED"
            # validate_only refuses the same way (the check comes before any provider work).
            await refused(stub.CreateJob(pb.CreateJobRequest(spec=spec, validate_only=True)), "spec.code_dir")
        assert not list((tmp_path / "state" / "jobs").iterdir())


async def test_code_dir_inside_the_roots_only_regular_files_and_within_limits(tmp_path: Path) -> None:
    root = tmp_path / "code"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "train.py").write_text("print('hi')\n")
    (root / "ok" / "same.py").symlink_to("train.py")  # a link that stays inside is kept as a link
    (root / "out").mkdir()
    (root / "out" / "passwd").symlink_to("/etc/passwd")
    (root / "escape").symlink_to(tmp_path)  # a code_dir that resolves outside the root
    (root / "sock").mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock" / "s"))
        (root / "fifo").mkdir()
        os.mkfifo(root / "fifo" / "f")
        (root / "many").mkdir()
        for i in range(6):
            (root / "many" / f"{i}.py").write_text("x")
        (root / "big").mkdir()
        (root / "big" / "w.bin").write_bytes(b"\0" * 5000)
        async with Scheduler(tmp_path / "state", code_roots=(str(root),), code_max_files=5, code_max_bytes=4096) as stub:
            for name, reason in (
                ("out", "CODE_DIR_LINK_OUTSIDE"),
                ("escape", "CODE_DIR_NOT_ALLOWED"),
                ("sock", "CODE_DIR_SPECIAL_FILE"),
                ("fifo", "CODE_DIR_SPECIAL_FILE"),
                ("many", "CODE_TOO_LARGE"),
                ("big", "CODE_TOO_LARGE"),
            ):
                got = await refused(stub.CreateJob(pb.CreateJobRequest(spec=dryrun(code_dir=str(root / name)))), "spec.code_dir")
                assert got == reason, name
            assert not list((tmp_path / "state" / "jobs").iterdir())
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=dryrun(code_dir=str(root / "ok"))))).job
            work = tmp_path / "state" / "jobs" / job.job_id / "work"
            assert (work / "train.py").read_text() == "print('hi')\n"
            assert (work / "same.py").is_symlink() and os.readlink(work / "same.py") == "train.py"


def test_pseudo_file_systems_are_refused_even_inside_a_root() -> None:
    limits = jobspec.CodeLimits(roots=(Path("/"),))
    for path in ("/proc/self", "/sys/kernel"):
        with pytest.raises(InvalidArgument) as info:
            jobspec.resolve_code_dir(path, limits)
        assert info.value.reason == "CODE_DIR_SPECIAL_FILE"


async def test_archives_are_bounded_and_unpacked_safely(tmp_path: Path) -> None:
    def reg(name: str, size: int) -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(name)
        info.size = size
        return info, b"x" * size

    def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info, b""

    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    cases = {
        "too big": tar_gz([reg("a.bin", 3000), reg("b.bin", 3000)]),
        "too many": tar_gz([reg(f"{i}.py", 1) for i in range(7)]),
        "link out": tar_gz([link("l", "/etc/passwd", tarfile.SYMTYPE)]),
        "hard link out": tar_gz([link("h", "../../etc/passwd", tarfile.LNKTYPE)]),
        "fifo": tar_gz([(fifo, b"")]),
        "absolute": tar_gz([reg("/tmp/evil.py", 1)]),
        "garbage": b"\x1f\x8b" + os.urandom(200),
        "zip too many": _zip([f"{i}.py" for i in range(7)]),
        "zip escaping": _zip(["../evil.py"]),
        "zip corrupt": _corrupt_zip(),
    }
    async with Scheduler(tmp_path / "state", code_max_files=5, code_max_bytes=4096) as stub:
        for name, data in cases.items():
            got = await refused(stub.CreateJob(pb.CreateJobRequest(spec=dryrun(code_archive=data))), "spec.code_archive")
            assert got in ("CODE_TOO_LARGE", "CODE_ARCHIVE_UNSAFE", "CODE_ARCHIVE_INVALID"), name
        assert not list((tmp_path / "state" / "jobs").iterdir())
        for data in (_zip(["a.py", "pkg/b.py"]), tar_gz([reg("a.py", 10)])):  # ordinary archives still work
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=dryrun(code_archive=data)))).job
            assert (tmp_path / "state" / "jobs" / job.job_id / "work" / "a.py").is_file()


async def test_sdk_packs_code_dir_so_a_scheduler_without_roots_runs_it(tmp_path: Path) -> None:
    code = tmp_path / "mycode"
    (code / "pkg").mkdir(parents=True)
    (code / "train.py").write_text("import pkg.m; print(pkg.m.X)\n")
    (code / "pkg" / "__init__.py").write_text("")
    (code / "pkg" / "m.py").write_text("X = 'packed ok'\n")
    (code / ".git").mkdir()
    (code / ".git" / "config").write_text("not shipped")
    sched = Scheduler(tmp_path / "state")  # no code_roots: a path would be refused, the packed folder is not
    async with sched as stub, SchedulerClient(ChannelConfig((f"127.0.0.1:{sched.port}",))) as client:
        job = await client.create_job(
            {
                "command": [sys.executable, "train.py"],
                "code_dir": str(code),
                "provider_policy": "PROVIDER_POLICY_EXPLICIT",
                "providers": ["local"],
            }
        )
        assert job.code_archive_sha256
        job = await finished(stub, job.job_id)
        assert job.state == S.JOB_STATE_SUCCEEDED
        text = "".join([c.text async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job.job_id))])
        assert "packed ok" in text
        assert not (sched.jobs_dir / job.job_id / "work" / ".git").exists()
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the path itself is what the server refuses
            await client.create_job(
                {
                    "command": ["python"],
                    "code_dir": str(code),
                    "provider_policy": "PROVIDER_POLICY_EXPLICIT",
                    "providers": ["dryrun"],
                },
                pack_code=False,
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- class 2: artifacts --------------------------------------------------------------------------------------------


async def test_artifacts_are_only_single_link_regular_files_inside_the_job(tmp_path: Path) -> None:
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("TOP SECRET")
    async with Scheduler(tmp_path / "state") as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(spec=dryrun()))).job
        work = tmp_path / "state" / "jobs" / job.job_id / "work"
        work.mkdir(parents=True, exist_ok=True)
        os.link(outside, work / "hardlink.txt")
        (work / "symlink.txt").symlink_to(outside)
        (work / "fine.txt").write_text("mine")
        listed = await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))
        assert [a.path for a in listed.artifacts] == ["fine.txt"]
        for path in ("hardlink.txt", "symlink.txt"):
            await refused(_download(stub, job.job_id, path), "path")
        got = await _download(stub, job.job_id, "fine.txt")
        assert b"".join(c.data for c in got) == b"mine"
        await refused(_download(stub, job.job_id, "a" * 5000), "path")
        await refused(_download(stub, job.job_id, "/".join(["b" * 300] * 3)), "path")
        await refused(stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id, prefix="p" * 5000)), "prefix")


async def _download(stub, job_id: str, path: str, offset: int = 0) -> list[pb.DownloadArtifactResponse]:
    return [
        c async for c in stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id, path=path, offset=offset), timeout=60)
    ]


async def test_download_from_an_offset_reads_nothing_before_it(tmp_path: Path) -> None:
    async with Scheduler(tmp_path / "state") as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(spec=dryrun()))).job
        work = tmp_path / "state" / "jobs" / job.job_id / "work"
        work.mkdir(parents=True, exist_ok=True)
        size = 1 << 30  # sparse: hashing what comes before the offset would read a GiB on the event loop
        with open(work / "sparse.bin", "wb") as f:
            f.seek(size - 10)
            f.write(b"0123456789")
        got = await _download(stub, job.job_id, "sparse.bin", offset=size - 10)
        assert b"".join(c.data for c in got) == b"0123456789"
        assert got[-1].total_size_bytes == size
        assert got[-1].sha256 == hashlib.sha256(b"0123456789").hexdigest()  # the bytes sent, not the whole file


# --- class 3: logs -------------------------------------------------------------------------------------------------

PRINT_MIB = "import sys\nfor _ in range({n}):\n    sys.stdout.write('x' * 1023 + '\\n')\n"


async def _log_bytes(stub, job_id: str) -> int:
    total = 0
    async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job_id, streams=[pb.LOG_STREAM_STDOUT]), timeout=120):
        total += c.next_offset - c.offset
    return total


async def test_40_mb_of_output_is_kept_and_streamed_in_full(tmp_path: Path) -> None:
    n = 40 * 1000  # 40,960,000 bytes, printed as fast as Python can
    async with Scheduler(tmp_path / "state") as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(spec=local([sys.executable, "-c", PRINT_MIB.format(n=n)])))).job
        job = await finished(stub, job.job_id)
        assert job.state == S.JOB_STATE_SUCCEEDED
        assert await _log_bytes(stub, job.job_id) == n * 1024  # before the fix: 16,777,216
        assert not job.logs_truncated and job.log_bytes_dropped == 0


async def test_past_the_cap_the_job_says_so_with_a_field_and_a_marker(tmp_path: Path) -> None:
    cap = 1 << 20
    async with Scheduler(tmp_path / "state", log_cap_bytes=cap) as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(spec=local([sys.executable, "-c", PRINT_MIB.format(n=3 * 1024)])))).job
        job = await finished(stub, job.job_id)
        assert job.state == S.JOB_STATE_SUCCEEDED
        assert job.logs_truncated and job.log_bytes_dropped == 2 * cap
        text = "".join(
            [c.text async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job.job_id, streams=[pb.LOG_STREAM_STDOUT]))]
        )
        assert text[:cap] == ("x" * 1023 + "\n") * 1024
        assert "reached the per-job log cap of 1048576 bytes" in text[cap:]


# --- class 8 -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e300])
async def test_non_finite_or_absurd_resources_are_invalid_argument(tmp_path: Path, value: float) -> None:
    async with Scheduler(tmp_path / "state") as stub:
        for field in ("min_memory_gib", "min_gpu_memory_gib"):
            spec = dryrun(resources={"gpu_count": 1, field: value})
            await refused(stub.CreateJob(pb.CreateJobRequest(spec=spec)), f"spec.resources.{field}")


async def test_a_run_that_ended_while_the_scheduler_was_down_is_billed_until_its_end(tmp_path: Path) -> None:
    now = [1_000_000.0]
    ended_at = now[0] + 30

    class Clock:
        def __call__(self) -> float:
            return now[0]

    running = RunStatus(RunState.RUNNING)
    provider = ScriptedProvider("lambda", [[running, running, RunStatus(RunState.SUCCEEDED, 0, end_time=ended_at)]])
    offers = FixedOffers([offer("lambda", "us-east-1", 3.6)])
    engine = await make_engine(tmp_path, [provider], offers)
    engine.clock = Clock()
    engine.settings.usage_interval_s = 1e9  # only the final record: the one a restarted scheduler makes
    try:
        job = await engine.create(gpu_spec(), "", False)
        for _ in range(200):  # running: let the clock jump far past the run's real end, as after a long outage
            await asyncio.sleep(0.02)
            if engine._live[job.job_id].rec.job.state == S.JOB_STATE_RUNNING:
                now[0] += 3600
                break
        for _ in range(500):
            await asyncio.sleep(0.02)
            job = convert.job_message(await engine.get(job.job_id))  # as GetJob answers it
            if job.state == S.JOB_STATE_SUCCEEDED:
                break
        assert job.state == S.JOB_STATE_SUCCEEDED
        a = job.attempts[-1]
        assert unix_seconds(a.end_time) == pytest.approx(ended_at)
        billed_s = unix_seconds(a.end_time) - unix_seconds(a.start_time)
        assert offers.spent[job.job_id] == pytest.approx(3.6 * billed_s / 3600)
        assert billed_s <= 30.0 + 1e-6
    finally:
        await engine.stop()


def test_state_dir_from_the_environment_is_the_folder_the_readme_names(tmp_path: Path) -> None:
    cfg = load_config(SchedulerConfig, "scheduler", env={"CRUCIBLE_STATE_DIR": str(tmp_path)})
    assert cfg.resolved_state_dir() == tmp_path and cfg.resolved_database() == tmp_path / "scheduler.db"
    readme = (Path(__file__).resolve().parents[3] / "services" / "crucible" / "scheduler" / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `--state-dir`"))
    assert "`$CRUCIBLE_STATE_DIR` (the folder itself" in row and "$CRUCIBLE_STATE_DIR/scheduler" not in readme
