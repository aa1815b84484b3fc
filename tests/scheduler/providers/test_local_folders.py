"""The local provider makes and hands over a job's folders without following links the job planted: a link at a
store folder, on the way to the checkpoint folder, or swapped in for a folder while the tree is handed over.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crucible.scheduler.objects import nofollow
from crucible.scheduler.providers import local

ROOT = os.geteuid() == 0
JOB_UID = 61234
needs_root = pytest.mark.skipif(not ROOT, reason="handing folders to another uid needs root (CI runs as root)")


def _outside(tmp_path: Path) -> Path:
    """A folder that is not the job's, with a file in it, owned by the scheduler."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file.txt").write_text("not the job's")
    return outside


@needs_root
def test_a_link_planted_as_a_store_folder_is_refused_and_its_target_keeps_its_owner(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    prefix = tmp_path / "store" / "jobs" / "j1"
    prefix.mkdir(parents=True)
    (prefix / "checkpoints").symlink_to(outside)  # left by an earlier attempt of the job
    with pytest.raises(nofollow.UnsafePath):
        local._job_folder(prefix / "checkpoints", JOB_UID)
    assert outside.stat().st_uid == os.geteuid() and (outside / "file.txt").stat().st_uid == os.geteuid()


def test_a_link_on_the_way_to_the_checkpoint_folder_creates_nothing_through_it(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    work = tmp_path / "job" / "work"
    work.mkdir(parents=True)
    (work / "ckpt").symlink_to(outside)
    with pytest.raises(nofollow.UnsafePath):
        local._job_folder(work, None, ("ckpt", "run1"))
    assert not (outside / "run1").exists()


@needs_root
def test_a_folder_swapped_for_a_link_while_the_tree_is_handed_over_gives_nothing_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job swaps work/sub for a link to a folder outside just before its file is handed over. By descriptor the
    scheduler still holds the real sub (renamed): the job's own file is handed over, the outside one keeps its owner."""
    outside = _outside(tmp_path)
    work = tmp_path / "job" / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "file.txt").write_text("the job's")
    swapped: list[bool] = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            os.rename(work / "sub", work / "sub.old")
            os.symlink(outside, work / "sub")

    real_chown, real_open = os.chown, os.open

    def chown(path, *args, **kwargs):  # a path-based hand-over resolves sub/file.txt after the swap
        if str(path).endswith(os.path.join("sub", "file.txt")):
            swap()
        return real_chown(path, *args, **kwargs)

    def open_(path, *args, **kwargs):  # a descriptor-based one opens file.txt under the folder it already holds
        if os.fspath(path) == "file.txt" and kwargs.get("dir_fd") is not None:
            swap()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "chown", chown)
    monkeypatch.setattr(os, "open", open_)
    local._job_folder(work, JOB_UID)
    monkeypatch.undo()
    assert swapped, "the swap never happened: the test no longer reaches the hand-over of sub/file.txt"
    assert (outside / "file.txt").stat().st_uid == os.geteuid()
    assert outside.stat().st_uid == os.geteuid()
    assert (work / "sub.old" / "file.txt").stat().st_uid == JOB_UID
    assert work.stat().st_uid == JOB_UID
