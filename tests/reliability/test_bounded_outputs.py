"""Issue 22, class 5 (probe 8, outputs): a job's outputs cost the store what the job really wrote, copied once.

Before the fix a 600 MiB sparse file (0 bytes on disk) became 600 MiB in the store and 1.2 GB at the peak (a staging
copy beside the job, then the store's temporary file), counted by its length against --artifact-max-bytes, and a kill -9
during an upload left hidden temporary files in the store and the state folder for good.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from crucible.scheduler import joboutputs
from crucible.scheduler.storage import JobObjectStore, StoreSettings
from tests.reliability.test_hardening_scheduler import Scheduler

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
    result = joboutputs.upload_outputs(store, "job-1", work, {}, done, 3 * MIB)
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
    again = joboutputs.upload_outputs(store, "job-1", work, {}, done, 3 * MIB)
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
