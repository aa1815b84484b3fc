"""Issue 22, class 5 (probe 8, outputs): a job's outputs cost the store what the job really wrote, copied once.

Before the fix a 600 MiB sparse file (0 bytes on disk) became 600 MiB in the store and 1.2 GB at the peak (a staging
copy beside the job, then the store's temporary file), counted by its length against --artifact-max-bytes, and a kill -9
during an upload left hidden temporary files in the store and the state folder for good.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

import pytest

from crucible.scheduler.objects import transfer
from crucible.scheduler.objects.objectstore import JobObjectStore, StoreSettings
from crucible.scheduler.providers.base import ArtifactInfo
from tests.scheduler.reliability.test_hardening import Scheduler

MIB = 1 << 20
SPARSE = 600 * MIB


def _disk(path: Path) -> int:
    """Bytes on disk under `path` (what `du` counts)."""
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        total += sum(os.lstat(os.path.join(dirpath, n)).st_blocks * 512 for n in names)
    return total


@pytest.fixture
def no_staging_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads must stream from the job's file into the store: a staging copy beside the job doubles the peak."""

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("an upload made a staging copy")

    for name in ("NamedTemporaryFile", "TemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)


def test_a_sparse_output_stays_sparse_and_costs_its_real_bytes(tmp_path: Path, no_staging_copy: None) -> None:
    work = tmp_path / "jobs" / "job-1" / "work"
    work.mkdir(parents=True)
    with open(work / "sparse.bin", "wb") as f:  # 600 MiB long, 4 KiB on disk
        f.seek(SPARSE - 4)
        f.write(b"tail")
    (work / "dense.bin").write_bytes(os.urandom(MIB))
    store = JobObjectStore(StoreSettings(f"file://{tmp_path / 'store'}"))
    done: dict[str, list[float]] = {}

    # The cap counts what the store holds: 3 MiB is room enough for both (the sparse file was refused as 600 MiB).
    result = transfer.upload_outputs(store, "job-1", work, {}, done, 3 * MIB)
    assert result.skipped == [] and result.uploaded == 2, result
    assert result.bytes < 2 * MIB
    stored = Path(store.path("job-1", "artifacts", "sparse.bin"))
    assert stored.stat().st_size == SPARSE and stored.stat().st_blocks * 512 < MIB
    assert store.read_range("job-1", "artifacts", "sparse.bin", SPARSE - 4, 4) == b"tail"
    assert store.read_range("job-1", "artifacts", "sparse.bin", 0, 8) == bytes(8)
    assert _disk(tmp_path / "store") < 3 * MIB  # no blow-up: the store holds what the job wrote
    assert _disk(tmp_path / "jobs") < 3 * MIB  # and nothing was staged beside the job

    # A file that really fills its length still counts in full against the cap.
    (work / "big.bin").write_bytes(os.urandom(2 * MIB))
    again = transfer.upload_outputs(store, "job-1", work, {}, done, 3 * MIB)
    assert again.uploaded == 0 and again.skipped and again.skipped[0].startswith("big.bin")


async def test_temporary_files_of_an_interrupted_upload_are_swept_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = state / "store" / "jobs" / "job-1"
    job = state / "jobs" / "job-1"
    leftovers = [
        store / "artifacts" / ".crucible-tmp-0123456789abcdef0123456789abcdef",  # this version's temporary name
        store / "artifacts" / "sub" / "model.pt.tmp-0123456789ab",  # the temporary name of earlier versions
        store / "code" / "code.tar.gz.tmp-abcdef012345",
        job / ".code-x1y2z3.tar.gz",  # CreateJob's packing, cut short
        job / "pull" / "tmpab12cd34",  # an older version's staging copy of a remote output
    ]
    kept = [
        store / "artifacts" / "model.pt",
        store / "artifacts" / "notes.tmp-file",
        store / "checkpoints" / "step-1" / "state.pt.tmp-0123456789ab",  # a running job may be writing it
        job / "work" / "out.tmp-0123456789ab",
    ]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(64 * 1024))

    async with Scheduler(state):
        pass
    assert [p for p in leftovers if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []


@pytest.fixture(params=["file", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> JobObjectStore:
    if request.param == "file":
        return JobObjectStore(StoreSettings(f"file://{tmp_path / 'store'}"))
    endpoint, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    return JobObjectStore(
        StoreSettings(f"s3://{bucket}/crucible", endpoint_url=endpoint, access_key="testing", secret_key="testing")
    )


class RemoteMachine:
    """A rented machine's outputs as a provider adapter lists and streams them."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    async def list_artifacts(self, handle: object) -> list[ArtifactInfo]:
        return [ArtifactInfo(path, len(data), 1.0) for path, data in self.files.items()]

    async def open_artifact(self, handle: object, path: str, chunk: int):
        data = self.files[path]
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]


async def test_remote_outputs_stream_into_the_store_whole_or_not_at_all(any_store: JobObjectStore, no_staging_copy: None) -> None:
    machine = RemoteMachine({"small.txt": b"abc", "model.bin": os.urandom(3 * MIB), "huge.bin": os.urandom(5 * MIB)})
    done: dict[str, list[float]] = {}
    result = await transfer.pull_remote_outputs(any_store, "job-1", machine, None, done, 4 * MIB, asyncio.to_thread)
    assert result.uploaded == 2 and result.skipped == [f"huge.bin ({5 * MIB} bytes)"], result
    assert any_store.read_range("job-1", "artifacts", "small.txt", 0, 10) == b"abc"
    assert any_store.read_range("job-1", "artifacts", "model.bin", 0, 3 * MIB) == machine.files["model.bin"]
    # An object abandoned half-way is never published, and leaves nothing behind in the listing.
    out = any_store.writer("job-1", "artifacts", "partial.bin")
    out.write(b"half")
    out.abort()
    assert any_store.stat("job-1", "artifacts", "partial.bin") is None
    assert [o.path for o in any_store.list("job-1", "artifacts")] == ["model.bin", "small.txt"]


def test_s3_counts_a_sparse_output_at_its_full_length(any_store: JobObjectStore, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with open(work / "sparse.bin", "wb") as f:
        f.truncate(64 * MIB)
    result = transfer.upload_outputs(any_store, "job-1", work, {}, {}, 3 * MIB)
    if any_store.scheme == "s3":  # S3 has no holes: the object would hold every byte
        assert result.uploaded == 0 and result.skipped[0].startswith("sparse.bin")
    else:
        assert result.uploaded == 1 and result.bytes == 0


def test_the_code_archive_streams_into_the_store(any_store: JobObjectStore, tmp_path: Path, no_staging_copy: None) -> None:
    work = tmp_path / "jobs" / "job-1" / "work"
    work.mkdir(parents=True)
    (work / "train.py").write_text("print('hi')\n")
    sha, size = transfer.publish_code(any_store, "job-1", work, transfer.code_manifest(work))
    data = b"".join(any_store.iter_chunks("job-1", "code", transfer.CODE_OBJECT))
    assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
    assert os.listdir(work.parent) == ["work"]  # nothing staged beside the job
