"""Issue 22, class 2 (probes 1 and 2): nothing the scheduler does as root follows a link a job made.

The test acts as the job user: it plants symlinks and hard links to a root-only file and folder in every folder the
scheduler later touches (the working folder, its checkpoints, the store's checkpoints/, artifacts/ and inputs), then
the output upload, ListArtifacts, DownloadArtifact, the store lending/reclaiming and DeleteJobArtifacts run; none may
read, write, hand over or delete through them. Before the fix the upload wrote a job-chosen file into the root-only
folder and DownloadArtifact served the root-only file from the store.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.scheduler.engine.progress_recorder import newest_checkpoint
from crucible.scheduler.objects import nofollow, transfer
from crucible.scheduler.objects.objectstore import JobObjectStore, StoreError, StoreSettings
from tests.scheduler.reliability.test_hardening import Scheduler, finished, local

SECRET = b"TOP SECRET: root only"

JOB = textwrap.dedent("""
    import os, pathlib, time
    deadline = time.time() + 60
    while not os.path.exists("go") and time.time() < deadline:
        time.sleep(0.05)
    os.makedirs("outdir", exist_ok=True)
    pathlib.Path("outdir/pwned.txt").write_text("written by the job")
    pathlib.Path("fine.txt").write_text("mine")
""")


class Targets:
    """A root-only file and a root-only folder outside every job folder."""

    def __init__(self, base: Path) -> None:
        self.folder = base / "root-only"
        self.folder.mkdir(mode=0o700)
        (self.folder / "keep.txt").write_bytes(SECRET)
        self.file = base / "root-only.txt"
        self.file.write_bytes(SECRET)
        os.chmod(self.file, 0o600)

    def intact(self) -> None:
        assert sorted(os.listdir(self.folder)) == ["keep.txt"], "something was written into the root-only folder"
        assert (self.folder / "keep.txt").read_bytes() == SECRET
        assert self.file.read_bytes() == SECRET
        st = self.file.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600), "the root-only file was handed over"


def plant(folder: Path, targets: Targets, *, names: tuple[str, str, str]) -> None:
    """A file link, a folder link and a hard link (as the job would make them) under `folder`."""
    file_link, folder_link, hard = names
    for rel in names:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / file_link).symlink_to(targets.file)
    (folder / folder_link).symlink_to(targets.folder)
    os.link(targets.file, folder / hard)


async def _download(stub, job_id: str, path: str) -> bytes:
    chunks = [c async for c in stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id, path=path), timeout=60)]
    return b"".join(c.data for c in chunks)


async def _running(stub, job_id: str) -> None:
    for _ in range(1200):
        job = (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job
        if job.state == job_pb2.JOB_STATE_RUNNING:
            return
        assert job.state not in (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED), job.transitions[-1].reason
        await asyncio.sleep(0.05)
    raise AssertionError("the job never ran")


async def test_links_planted_in_every_job_folder_are_never_followed(tmp_path: Path) -> None:
    targets = Targets(tmp_path)
    state = tmp_path / "state"
    async with Scheduler(state) as stub:
        job = (await stub.CreateJob(pb.CreateJobRequest(spec=local([sys.executable, "-c", JOB])))).job
        await _running(stub, job.job_id)
        work = state / "jobs" / job.job_id / "work"
        store = state / "store" / "jobs" / job.job_id
        plant(work, targets, names=("leak.txt", "linkdir", "hard.txt"))
        plant(work, targets, names=("checkpoints/ckpt.pt", "checkpoints/old", "checkpoints/hard.pt"))
        plant(store / "artifacts", targets, names=("leak2.txt", "outdir", "hard2.txt"))
        plant(store / "checkpoints", targets, names=("step-1/state.pt", "step-2", "step-3/state.pt"))
        (store / "artifacts" / "fine.txt").symlink_to(targets.file)  # the upload's own target name
        (work / "go").touch()
        done = await finished(stub, job.job_id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.transitions[-1].reason
        targets.intact()  # probe 1: the upload wrote through artifacts/outdir -> the root-only folder

        listed = {a.path for a in (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts}
        assert listed == {"fine.txt", "go", "outdir/pwned.txt"}, listed
        for path in sorted(listed):
            assert SECRET not in await _download(stub, job.job_id, path)
        assert await _download(stub, job.job_id, "fine.txt") == b"mine"
        assert (store / "artifacts" / "fine.txt").read_bytes() == b"mine"  # the link was replaced, not written through

        for path in (
            "leak.txt",
            "hard.txt",
            "linkdir/keep.txt",
            "checkpoints/ckpt.pt",
            "checkpoints/hard.pt",
            "checkpoints/old/keep.txt",
            "leak2.txt",
            "hard2.txt",
            "outdir/keep.txt",
            "checkpoints/step-1/state.pt",
            "checkpoints/step-2/keep.txt",
            "checkpoints/step-3/state.pt",
        ):  # probe 2: DownloadArtifact served the root-only file through the store's links
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _download(stub, job.job_id, path)
            assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (path, info.value)

        await stub.DeleteJobArtifacts(pb.DeleteJobArtifactsRequest(job_id=job.job_id))
        assert not store.exists() and not work.exists()
        targets.intact()


def _store(tmp_path: Path) -> JobObjectStore:
    return JobObjectStore(StoreSettings(f"file://{tmp_path / 'store'}"))


def test_store_folders_handed_to_the_job_uid_and_back_hand_over_nothing_through_a_link(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing owners needs root")
    targets = Targets(tmp_path)
    store = _store(tmp_path)
    store.put_bytes("job-1", "checkpoints", "step-1/state.pt", b"weights")
    folder = Path(store.path("job-1", "checkpoints"))
    plant(folder, targets, names=("leak.pt", "linked", "hard.pt"))
    job_fd = nofollow.open_dir(folder.parent)
    try:  # lent to the job's uid for an attempt
        nofollow.chown_tree(job_fd, "checkpoints", 65534, 65534, dir_mode=0o700, file_mode=0o600)
    finally:
        os.close(job_fd)
    assert (folder / "step-1" / "state.pt").stat().st_uid == 65534  # the job's own files are lent
    assert (targets.folder / "keep.txt").stat().st_uid == 0
    targets.intact()  # a hard link to the root-only file was chowned to the job user
    (folder / "step-1" / "new.pt").write_bytes(b"made by the job")
    os.chown(folder / "step-1" / "new.pt", 65534, 65534)
    transfer.reclaim_from_job_user(store, "job-1")  # taken back when the attempt ends
    assert {p.stat().st_uid for p in (folder, folder / "step-1" / "state.pt", folder / "step-1" / "new.pt")} == {0}
    targets.intact()


def test_the_store_reads_writes_and_deletes_nothing_through_a_link(tmp_path: Path) -> None:
    targets = Targets(tmp_path)
    store = _store(tmp_path)
    store.put_bytes("job-1", "artifacts", "mine.txt", b"mine")
    plant(Path(store.path("job-1", "artifacts")), targets, names=("leak.txt", "linked", "hard.txt"))
    assert [o.path for o in store.list("job-1", "artifacts")] == ["mine.txt"]
    for rel in ("leak.txt", "hard.txt", "linked/keep.txt"):
        assert store.stat("job-1", "artifacts", rel) is None
        with pytest.raises((StoreError, FileNotFoundError)):
            store.read_range("job-1", "artifacts", rel, 0, 100)
    with pytest.raises(StoreError):
        store.put_bytes("job-1", "artifacts", "linked/pwned.txt", b"x")
    targets.intact()

    # Inputs copied into a working folder: a link there is replaced by the input, never written through.
    store.put_bytes("job-1", "inputs", "data.txt", b"input")
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").symlink_to(targets.file)
    store.download_tree("job-1", "inputs", work, max_bytes=1 << 20)
    assert not (work / "data.txt").is_symlink() and (work / "data.txt").read_bytes() == b"input"
    store.put_bytes("job-1", "inputs", "linked/new.txt", b"input")
    (work / "linked").symlink_to(targets.folder)
    with pytest.raises(StoreError):
        store.download_tree("job-1", "inputs", work, max_bytes=1 << 20)
    targets.intact()

    assert store.delete_job("job-1") == 3
    assert not Path(store.path("job-1", "artifacts")).exists()
    targets.intact()


def test_the_latest_checkpoint_is_never_looked_up_through_a_link(tmp_path: Path) -> None:
    targets = Targets(tmp_path)
    work = tmp_path / "work"
    (work / "ckpt").mkdir(parents=True)
    (work / "ckpt" / "step-1.pt").write_bytes(b"weights")
    assert newest_checkpoint(work, "ckpt") == "ckpt/step-1.pt"
    (work / "ckpt" / "step-9.pt").symlink_to(targets.file)  # newer, but a link
    assert newest_checkpoint(work, "ckpt") == "ckpt/step-1.pt"
    (work / "linked").symlink_to(targets.folder)
    assert newest_checkpoint(work, "linked") is None
    hidden = tmp_path / "root-only-2" / "sub"  # a root-only folder with a file whose name must not come out
    hidden.mkdir(parents=True)
    (hidden / "secret-name.pt").write_bytes(SECRET)
    os.chmod(hidden.parent, 0o700)
    (work / "through").symlink_to(hidden.parent)
    assert newest_checkpoint(work, "through/sub") is None
    targets.intact()
