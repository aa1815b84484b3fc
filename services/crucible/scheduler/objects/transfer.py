"""A job's files in the object store, seen from the engine: the code archive, fresh working folders, outputs uploaded
after each attempt, the store folders taken back from a local job's uid, and artifacts served after the machine is gone.

Every function here blocks (file system or store I/O): the engine calls them through asyncio.to_thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from crucible.runtime.errors import CrucibleError
from crucible.scheduler.objects import nofollow
from crucible.scheduler.objects import workdir as files
from crucible.scheduler.objects.objectstore import JobObjectStore, StoreError, UnsafeObject, check_relative

log = logging.getLogger(__name__)

CODE_OBJECT = "code.tar.gz"
#: ListArtifacts shows the store's checkpoints/ objects under this folder (the SDK's step-N/ layout).
CHECKPOINTS_PREFIX = "checkpoints/"
MAX_OUTPUT_FILES = 10_000


def pack_code(work: Path, manifest: dict[str, list[int]]) -> bytes:
    """A .tar.gz of the job's code: its folders and the manifest's regular files (sorted, mode 0644/0755, no links)."""
    buf = io.BytesIO()
    write_code_archive(work, manifest, buf)
    return buf.getvalue()


def write_code_archive(work: Path, manifest: dict[str, list[int]], buf: Any) -> None:
    """pack_code into the binary file object `buf` (streamed: a large code folder is never held in memory)."""
    folders = sorted({Path(dirpath).relative_to(work).as_posix() for dirpath, _d, _n in os.walk(work)} - {"."})
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel in folders:  # empty folders of the code too: the program may expect them
            info = tarfile.TarInfo(rel)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for rel in sorted(manifest):
            path = work / rel
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.size = st.st_size
            info.mtime = int(st.st_mtime)
            info.mode = 0o755 if st.st_mode & 0o100 else 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)


class _HashingSink:
    """A write-only file object that hashes and counts what it passes on to a store writer."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self.out.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def publish_code(store: JobObjectStore, job_id: str, work: Path, manifest: dict[str, list[int]]) -> tuple[str, int]:
    """Put the packed code at the job's code/code.tar.gz, streamed into the store as it is packed (no staging copy;
    published only when whole); returns (sha256, size) of the archive."""
    with store.writer(job_id, "code", CODE_OBJECT) as out:
        sink = _HashingSink(out)
        write_code_archive(work, manifest, sink)
        out.commit()
    return sink.digest.hexdigest(), sink.size


def code_manifest(work: Path) -> dict[str, list[int]]:
    """{relative path: [size, mtime_ns]} of the regular files under `work` (the code as unpacked)."""
    out = {}
    for dirpath, _dirs, names in os.walk(work):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                out[Path(dirpath, name).relative_to(work).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out


def fresh_work(store: JobObjectStore, job_id: str, work: Path, sha256: str, max_bytes: int) -> dict[str, list[int]]:
    """Replace `work` by an empty folder holding only the job's code from the store (checked against `sha256`).

    A relaunch (preemption, failover, restart) runs here: files the last attempt left are gone from the folder, and
    were uploaded to the store's artifacts/ when it ended. Returns the new code manifest."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if not sha256:
        return {}
    if store.stat(job_id, "code", CODE_OBJECT) is None:
        raise StoreError(f"the code archive of job {job_id} is missing from the store")
    with tempfile.TemporaryFile() as tmp:
        digest = hashlib.sha256()
        for block in store.iter_chunks(job_id, "code", CODE_OBJECT):
            digest.update(block)
            tmp.write(block)
        if digest.hexdigest() != sha256:
            raise StoreError(f"the code archive of job {job_id} does not match its SHA-256 {sha256}")
        tmp.seek(0)
        with tarfile.open(fileobj=tmp, mode="r:gz") as tar:
            total = sum(m.size for m in tar.getmembers() if m.isreg())
            if total > max_bytes:
                raise StoreError(f"the code archive of job {job_id} unpacks to {total} bytes, over {max_bytes}")
            tar.extractall(work, filter="data")
    return code_manifest(work)


@dataclasses.dataclass
class UploadResult:
    """What upload_outputs did: files uploaded now, bytes the store holds for them, and files left out (with why)."""

    uploaded: int = 0
    bytes: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)


def _stored(entry: list[float]) -> int:
    """Bytes one upload of `done` takes in the store ([size, mtime, stored bytes]; older entries: the size)."""
    return int(entry[2] if len(entry) > 2 else entry[0])


def stored_bytes(done: dict[str, list[float]]) -> int:
    """Bytes the uploads in `done` take in the store."""
    return sum(_stored(v) for v in done.values())


def _cost(store: JobObjectStore, st: os.stat_result) -> int:
    """What a file will take in the store: its data on disk for a file:// store (holes of a sparse file stay holes
    there), its whole length for S3 (which has no holes)."""
    if store.scheme == "file":
        return min(st.st_size, st.st_blocks * 512)
    return st.st_size


def upload_outputs(
    store: JobObjectStore, job_id: str, work: Path, manifest: dict[str, list[int]], done: dict[str, list[float]], max_bytes: int
) -> UploadResult:
    """Upload the files the attempt left in `work` (artifacts.scan: no links, no unchanged code) to artifacts/.

    Each file is opened component by component without following a link (a hard-linked or special file is left out)
    and copied once, straight into the store (no staging copy). `done` ({path: [size, mtime, stored bytes]} of
    earlier uploads) is updated; unchanged files are not sent again. At most `max_bytes` in the store (counted by
    what the store really holds: a sparse file's holes cost nothing on a file:// store) and MAX_OUTPUT_FILES files;
    the rest (largest first) is skipped and named in the result."""
    found = files.scan(work, manifest)
    result = UploadResult()
    budget = max_bytes - stored_bytes(done)
    for rel, (size, mtime) in sorted(found.items(), key=lambda kv: kv[1][0]):  # smallest first: most files fit
        if done.get(rel, [])[:2] == [size, mtime]:
            continue
        if rel not in done and len(done) >= MAX_OUTPUT_FILES:
            result.skipped.append(f"{rel} (over {MAX_OUTPUT_FILES} files)")
            continue
        try:
            opened = files.open_file(work, rel)
        except CrucibleError as exc:  # became a link or a hard link since the scan
            result.skipped.append(f"{rel} ({exc.message})")
            continue
        if opened is None:
            continue
        fd, st = opened
        try:
            cost = _cost(store, st)
            previous = _stored(done[rel]) if rel in done else 0  # replaced by this upload
            if cost > budget + previous:
                result.skipped.append(f"{rel} ({size} bytes, {cost} in the store)")
                continue
            stored = store.put_fd(job_id, "artifacts", rel, fd, st.st_size)
        except ValueError:
            result.skipped.append(f"{rel} (name not storable)")
            continue
        except UnsafeObject as exc:
            result.skipped.append(f"{rel} (not stored: {exc})")
            continue
        finally:
            os.close(fd)
        budget -= stored - previous
        done[rel] = [st.st_size, st.st_mtime, stored]
        result.uploaded += 1
        result.bytes += stored
    return result


async def pull_remote_outputs(
    store: JobObjectStore,
    job_id: str,
    provider: Any,
    handle: Any,
    done: dict[str, list[float]],
    max_bytes: int,
    to_thread: Callable[..., Any],
) -> UploadResult:
    """Copy a remote attempt's artifacts (provider.list_artifacts/open_artifact) into the store before release,
    streamed straight into the store's object (no staging copy), bounded by the bytes really received."""
    result = UploadResult()
    budget = max_bytes - stored_bytes(done)
    for a in sorted(await provider.list_artifacts(handle), key=lambda a: a.size_bytes):
        if done.get(a.path, [])[:2] == [a.size_bytes, a.modified_unix_s]:
            continue
        try:
            check_relative(a.path)
        except ValueError:
            result.skipped.append(f"{a.path} (unsafe name)")
            continue
        if a.size_bytes > budget or (a.path not in done and len(done) >= MAX_OUTPUT_FILES):
            result.skipped.append(f"{a.path} ({a.size_bytes} bytes)")
            continue
        try:
            out = await to_thread(store.writer, job_id, "artifacts", a.path)
        except UnsafeObject as exc:
            result.skipped.append(f"{a.path} (not stored: {exc})")
            continue
        written = 0
        try:
            stream: AsyncIterator[bytes] = provider.open_artifact(handle, a.path, 1 << 20)
            async for block in stream:
                written += len(block)
                if written > budget:
                    break
                await to_thread(out.write, block)
            if written > budget:
                result.skipped.append(f"{a.path} (grew past the limit)")
                continue
            await to_thread(out.commit)
        finally:
            await to_thread(out.abort)
        budget -= written
        done[a.path] = [a.size_bytes, a.modified_unix_s, written]
        result.uploaded += 1
        result.bytes += written
    return result


def sweep_state_temp(jobs_dir: Path) -> tuple[int, int]:
    """Remove what an upload or code packing interrupted by a crash (kill -9) left in the job folders: the hidden
    `.code-*.tar.gz` of CreateJob and the `pull/` scratch of older versions. (files, bytes on disk) removed; links are
    removed, never followed. Call it at start, before any job is driven."""
    count = size = 0
    try:
        jobs_fd = nofollow.open_dir(jobs_dir)
    except (OSError, nofollow.UnsafePath):
        return 0, 0
    try:
        with os.scandir(jobs_fd) as it:
            names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        for name in names:
            try:
                job_fd = nofollow.open_dir(name, dir_fd=jobs_fd)
            except (OSError, nofollow.UnsafePath):
                continue
            try:
                with os.scandir(job_fd) as it:
                    items = [(e.name, e.stat(follow_symlinks=False)) for e in it]
                for entry, st in items:
                    if entry == "pull" or (entry.startswith(".code-") and entry.endswith(".tar.gz")) or nofollow.is_temp(entry):
                        size += st.st_blocks * 512 if not stat.S_ISDIR(st.st_mode) else _tree_bytes(job_fd, entry)
                        count += 1
                        nofollow.remove_tree(job_fd, entry)
            finally:
                os.close(job_fd)
    finally:
        os.close(jobs_fd)
    return count, size


def _tree_bytes(parent: int, name: str) -> int:
    try:
        fd = nofollow.open_dir(name, dir_fd=parent)
    except (OSError, nofollow.UnsafePath):
        return 0
    try:
        return sum(st.st_blocks * 512 for _p, _r, _n, st in nofollow.entries(fd))
    finally:
        os.close(fd)


def listing(store: JobObjectStore, job_id: str) -> dict[str, tuple[int, float, bool]]:
    """{path: (size, mtime, is_checkpoint)} of the job's stored outputs and checkpoints (under "checkpoints/")."""
    out: dict[str, tuple[int, float, bool]] = {}
    for o in store.list(job_id, "artifacts"):
        out[o.path] = (o.size, o.mtime, False)
    for o in store.list(job_id, "checkpoints"):
        out[CHECKPOINTS_PREFIX + o.path] = (o.size, o.mtime, True)
    return out


def locate(store: JobObjectStore, job_id: str, path: str) -> tuple[str, str, int, float] | None:
    """(kind, relative path, size, mtime) of the stored object a ListArtifacts path names, or None."""
    candidates = [("artifacts", path)]
    if path.startswith(CHECKPOINTS_PREFIX):
        candidates.append(("checkpoints", path[len(CHECKPOINTS_PREFIX) :]))
    for kind, rel in candidates:
        try:
            found = store.stat(job_id, kind, rel)
        except ValueError:
            continue
        if found is not None:
            return kind, rel, found.size, found.mtime
    return None


# ---- a local job's own store folders (file:// stores) ------------------------------------------------------------------


def reclaim_from_job_user(store: JobObjectStore, job_id: str) -> None:
    """Give the job's file:// store folders back to the scheduler's user (folders 0700, files 0600) when an attempt
    ends: the local provider lends them to the job's uid for the attempt, and an ended job's files are no job's to
    change. By descriptor (nofollow.chown_tree): links, hard-linked and special files are left as they are."""
    if store.scheme != "file":
        return
    try:
        root = nofollow.open_dir(store.root)
    except FileNotFoundError:
        return
    try:
        try:
            job = nofollow.open_dirs(root, ["jobs", job_id])
        except FileNotFoundError:
            return
        try:
            for kind in ("checkpoints", "artifacts"):
                nofollow.chown_tree(job, kind, os.geteuid(), os.getegid(), dir_mode=0o700, file_mode=0o600)
        finally:
            os.close(job)
    finally:
        os.close(root)


__all__ = [
    "CHECKPOINTS_PREFIX",
    "CODE_OBJECT",
    "UploadResult",
    "fresh_work",
    "listing",
    "locate",
    "pack_code",
    "publish_code",
    "pull_remote_outputs",
    "reclaim_from_job_user",
    "stored_bytes",
    "sweep_state_temp",
    "upload_outputs",
]
