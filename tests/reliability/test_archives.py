"""Issue 22 class 6: untrusted code archives are read with every header bounded, so they cannot freeze or balloon the
scheduler or the console; colliding and over-long names are INVALID_ARGUMENT naming the member.

Before the fix a 200-byte archive whose pax header holds 50,000 digits held the interpreter for 14.5 s (Python 3.11.7's
tarfile, CVE-2024-6232: health checks failed meanwhile), a 256 MiB pax comment was read whole, a 64 MiB member name
was accepted, `a` then `a/b` or a 300-character name gave INTERNAL, and `tar czf code.tar.gz code` kept the top folder.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import sys
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.clients.channel import ChannelConfig
from crucible.clients.scheduler import SchedulerClient
from crucible.console import archive as console_archive
from crucible.runtime import archives
from crucible.runtime.errors import parse_status_details
from crucible.scheduler.engine import jobspec
from tests.scheduler.reliability.test_hardening import Scheduler, dryrun, finished, local

MIB = 1 << 20


def pax_digits(digits: int = 50_000) -> bytes:
    """The probe: a .tar.gz of about 200 bytes whose pax header record has a length field of `digits` digits."""
    payload = b"1" * digits + b" path=x\n"
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(payload)
    member = tarfile.TarInfo("train.py")
    raw = (
        header.tobuf(format=tarfile.USTAR_FORMAT)
        + payload
        + b"\0" * (-len(payload) % 512)
        + member.tobuf(format=tarfile.USTAR_FORMAT)
        + b"\0" * 1024
    )
    return gzip.compress(raw, mtime=0)


def pax_comment(size: int = 256 * MIB) -> bytes:
    """The probe: a .tar.gz of about 255 KB whose one pax header carries a `size`-byte comment."""
    info = tarfile.TarInfo("train.py")
    info.pax_headers = {"comment": "x" * size}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as t:
        t.addfile(info)
    return buf.getvalue()


def tar_of(members: list[tuple[str, str]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A .tar.gz of (name, kind) members: kind 'f' a one-byte file, 'd' a folder, 'l' a link to 'train.py'."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as t:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, "train.py"
                t.addfile(info)
            else:
                data = b"print('unwrapped ok')\n" if name.endswith("train.py") else b"x"
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_of(names: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in names:
            if name.endswith("/"):
                z.writestr(zipfile.ZipInfo(name), b"")
            else:
                z.writestr(name, b"print('unwrapped ok')\n" if name.endswith("train.py") else b"x")
    return buf.getvalue()


async def refused_archive(stub, data: bytes) -> tuple[str, str]:
    """CreateJob with `data` fails with INVALID_ARGUMENT on spec.code_archive: (reason, message)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateJob(pb.CreateJobRequest(spec=dryrun(code_archive=data)), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    error_info, violations = parse_status_details(info.value)
    assert "spec.code_archive" in [v[0] for v in violations], violations
    assert len(info.value.details()) < 1000, len(info.value.details())
    return (error_info.reason if error_info else ""), info.value.details()


async def test_50000_digit_pax_header_is_refused_at_once_while_health_answers(tmp_path: Path) -> None:
    data = pax_digits()
    assert len(data) < 400
    sched = Scheduler(tmp_path / "state")
    async with sched as stub:
        health = health_pb2_grpc.HealthStub(sched.channel)
        waits: list[float] = []
        refused: asyncio.Event = asyncio.Event()

        async def probe_health() -> None:
            while not refused.is_set():
                start = time.monotonic()
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                waits.append(time.monotonic() - start)
                await asyncio.sleep(0.01)

        prober = asyncio.create_task(probe_health())
        await asyncio.sleep(0.05)
        start = time.monotonic()
        reason, message = await refused_archive(stub, data)
        took = time.monotonic() - start
        refused.set()
        await prober
        assert took < 1.0, f"refused after {took:.2f} s"
        assert reason == "CODE_ARCHIVE_UNSAFE" and "pax header" in message, message
        assert waits and max(waits) < 0.5, waits
        # The console reads uploads with the same module: refused as fast.
        start = time.monotonic()
        with pytest.raises(console_archive.ArchiveError, match="pax header"):
            console_archive.check_archive(data)
        assert time.monotonic() - start < 1.0


async def test_256_mib_pax_comment_is_refused_without_reading_it(tmp_path: Path) -> None:
    data = pax_comment()
    assert len(data) < 400_000
    tracemalloc.start()
    try:
        start = time.monotonic()
        with pytest.raises(archives.ArchiveError, match="pax header of"):
            archives.scan(data)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 1.0
    assert peak < 16 * MIB, f"{peak / MIB:.0f} MiB allocated to refuse it"
    with pytest.raises(console_archive.ArchiveError):
        console_archive.check_archive(data)
    async with Scheduler(tmp_path / "state") as stub:
        start = time.monotonic()
        reason, _message = await refused_archive(stub, data)
        assert reason == "CODE_ARCHIVE_UNSAFE" and time.monotonic() - start < 1.0


async def test_64_mib_and_over_long_names_are_refused_naming_the_member(tmp_path: Path) -> None:
    component = "c" * 300
    deep = "/".join(["d" * 200] * 25)  # 5,024 bytes: every part fine, the whole path too long
    async with Scheduler(tmp_path / "state") as stub:
        for data, what in (
            (tar_of([("a" * (64 * MIB), "f")], tarfile.PAX_FORMAT), "pax header"),
            (tar_of([("a" * (64 * MIB), "f")], tarfile.GNU_FORMAT), "name of"),
            (tar_of([("ok.py", "f"), (component, "f")]), "name part longer than 255"),
            (tar_of([("ok.py", "f"), (deep, "f")]), "name longer than 4096"),
            (zip_of(["ok.py", component]), "name part longer than 255"),
            (zip_of(["ok.py", deep]), "name longer than 4096"),
        ):
            start = time.monotonic()
            reason, message = await refused_archive(stub, data)
            assert time.monotonic() - start < 2.0
            assert reason == "CODE_ARCHIVE_UNSAFE" and what in message, message
            if "member 1" in message:
                assert "'" + component[:20] in message or "'" + deep[:20] in message, message
        assert not list((tmp_path / "state" / "jobs").iterdir())


@pytest.mark.parametrize(
    ("members", "index"),
    [
        ([("a", "f"), ("a/b", "f")], 1),  # a file, then a member under it
        ([("a/b", "f"), ("a", "f")], 1),  # a folder (implied), then a file in its place
        ([("a", "f"), ("a", "f")], 1),  # the same file twice
        ([("a", "d"), ("a", "f")], 1),  # a folder, then a file of the same name
        ([("a", "f"), ("a", "d")], 1),  # a file, then a folder of the same name
        ([("train.py", "f"), ("l", "l"), ("l/x", "f")], 2),  # a member through a link
    ],
)
async def test_colliding_names_are_invalid_argument_naming_the_member(
    tmp_path: Path, members: list[tuple[str, str]], index: int
) -> None:
    async with Scheduler(tmp_path / "state") as stub:
        for data in (tar_of(members), zip_of([n + ("/" if k == "d" else "") for n, k in members if k != "l"])):
            if data[:2] == b"PK" and any(k == "l" for _n, k in members):
                continue  # zip has no links
            reason, message = await refused_archive(stub, data)
            assert reason == "CODE_ARCHIVE_UNSAFE" and f"member {index} " in message, message
        assert not list((tmp_path / "state" / "jobs").iterdir())
    with pytest.raises(console_archive.ArchiveError, match=f"member {index} "):
        console_archive.check_archive(tar_of(members))


async def test_an_archive_with_one_top_folder_is_unwrapped(tmp_path: Path) -> None:
    """`tar czf nanogpt.tar.gz nanogpt` (and `zip -r`): `python train.py` finds train.py; an archive with files at
    its top, or the SDK's packed folder holding one subfolder, keeps its layout."""
    sched = Scheduler(tmp_path / "state")
    async with sched as stub:
        for data in (
            tar_of([("nanogpt", "d"), ("nanogpt/train.py", "f"), ("nanogpt/data", "d"), ("nanogpt/data/a.txt", "f")]),
            tar_of([("./nanogpt/train.py", "f"), ("./nanogpt/data/a.txt", "f")]),
            zip_of(["nanogpt/", "nanogpt/train.py", "nanogpt/data/a.txt"]),
        ):
            spec = local([sys.executable, "train.py"], code_archive=data)
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec), timeout=60)).job
            done = await finished(stub, job.job_id)
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED, [t.reason for t in done.transitions]
            work = sched.jobs_dir / job.job_id / "work"
            assert (work / "data" / "a.txt").is_file() and not (work / "nanogpt").exists()
        kept = (
            await stub.CreateJob(pb.CreateJobRequest(spec=dryrun(code_archive=tar_of([("top.py", "f"), ("pkg/m.py", "f")]))))
        ).job
        assert (sched.jobs_dir / kept.job_id / "work" / "pkg" / "m.py").is_file()
        code = tmp_path / "code"
        (code / "src").mkdir(parents=True)
        (code / "src" / "m.py").write_text("x = 1\n")
        async with SchedulerClient(ChannelConfig((f"127.0.0.1:{sched.port}",))) as client:
            job = await client.create_job(
                {
                    "command": ["python", "src/m.py"],
                    "code_dir": str(code),
                    "provider_policy": "PROVIDER_POLICY_EXPLICIT",
                    "providers": ["dryrun"],
                }
            )
        assert (sched.jobs_dir / job.job_id / "work" / "src" / "m.py").is_file()


def test_well_formed_pax_and_gnu_archives_still_unpack(tmp_path: Path) -> None:
    """The bounds leave real archives alone: long (but legal) names in pax and GNU form, links, a global header."""
    name = "/".join(["p" * 200] * 5) + "/train.py"  # about 1 KB: needs an extension header
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        data = tar_of([("train.py", "f"), (name, "f"), ("same.py", "l")], fmt)
        assert jobspec.check_archive(data) == "tar"
        out = tmp_path / str(fmt)
        archives.unpack(data, out)
        assert (out / name).is_file() and (out / "same.py").is_symlink()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "git commit abc"}) as t:
        info = tarfile.TarInfo("train.py")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    assert archives.scan(buf.getvalue()).members[0].path == "train.py"
    # A .tar.gz whose last bytes happen to hold a zip end record is still read as the tar it starts as.
    data = tar_of([("train.py", "f")]) + b"PK\x05\x06" + b"\0" * 18
    assert archives.scan(data).format == "tar" and jobspec.check_archive(data) == "tar"


def _raw_tar(blocks: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A .tar.gz written header by header (USTAR headers, any type), so an archive can hold what tarfile never writes."""
    out = b""
    for info, data in blocks:
        info.size = len(data)
        out += info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)
    return gzip.compress(out + b"\0" * 1024, mtime=0)


def _ext(kind: bytes, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo("././@PaxHeader" if kind != tarfile.GNUTYPE_LONGNAME else "././@LongLink")
    info.type = kind
    return info, payload


def _pax(**records: str) -> bytes:
    out = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + len(str(len(body)))
        length += len(str(length)) - len(str(len(body)))
        out += str(length).encode() + body
    return out


async def test_header_tricks_are_refused_naming_the_member(tmp_path: Path) -> None:
    """A hard link to a member that is not there (INTERNAL before: tarfile's KeyError), extension headers that
    disagree, a global header renaming every member, a chain of extension headers, and a sparse member."""
    member = tarfile.TarInfo("train.py")
    link = tarfile.TarInfo("copy.py")
    link.type, link.linkname = tarfile.LNKTYPE, "missing.py"
    cases = {
        "hard link": _raw_tar([(member, b"x"), (link, b"")]),
        "disagree": _raw_tar(
            [_ext(tarfile.GNUTYPE_LONGNAME, b"a.py\0"), _ext(tarfile.XHDTYPE, _pax(path="b.py")), (member, b"x")]
        ),
        "global path": _raw_tar([_ext(tarfile.XGLTYPE, _pax(path="same.py")), (member, b"x")]),
        "chain": _raw_tar([*([_ext(tarfile.XHDTYPE, _pax(comment="c"))] * 5), (member, b"x")]),
        "sparse": _raw_tar([_ext(tarfile.XHDTYPE, _pax(**{"GNU.sparse.size": "10"})), (member, b"x")]),
        "malformed pax": _raw_tar([_ext(tarfile.XHDTYPE, b"12 nokeyhere\n"), (member, b"x")]),
    }
    async with Scheduler(tmp_path / "state") as stub:
        for name, data in cases.items():
            reason, message = await refused_archive(stub, data)
            assert reason in ("CODE_ARCHIVE_UNSAFE", "CODE_ARCHIVE_INVALID"), (name, message)
            assert "member " in message, (name, message)
        assert not list((tmp_path / "state" / "jobs").iterdir())
