"""A job's files in the object store, seen from the engine: the code archive, fresh working folders, outputs uploaded
after each attempt, the folder a local job user may write checkpoints to, and artifacts served after the machine is gone.

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

from crucible.scheduler import artifacts as files
from crucible.scheduler.storage import JobObjectStore, StoreError, check_relative

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


def publish_code(store: JobObjectStore, job_id: str, work: Path, manifest: dict[str, list[int]]) -> tuple[str, int]:
    """Put the packed code at the job's code/code.tar.gz; returns (sha256, size) of the archive."""
    with tempfile.NamedTemporaryFile(dir=work.parent, prefix=".code-", suffix=".tar.gz") as tmp:
        write_code_archive(work, manifest, tmp)
        tmp.flush()
        tmp.seek(0)
        digest, size = hashlib.sha256(), 0
        while block := tmp.read(1 << 20):
            digest.update(block)
            size += len(block)
        store.put_file(job_id, "code", CODE_OBJECT, Path(tmp.name))
    return digest.hexdigest(), size


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
    """What upload_outputs did: files uploaded now, bytes, and files left out (with why)."""

    uploaded: int = 0
    bytes: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)


def upload_outputs(
    store: JobObjectStore, job_id: str, work: Path, manifest: dict[str, list[int]], done: dict[str, list[float]], max_bytes: int
) -> UploadResult:
    """Upload the files the attempt left in `work` (artifacts.scan: no links, no unchanged code) to artifacts/.

    `done` ({path: [size, mtime]} of earlier uploads) is updated; unchanged files are not sent again. At most
    `max_bytes` and MAX_OUTPUT_FILES in all: the rest (largest first) is skipped and named in the result."""
    found = files.scan(work, manifest)
    result = UploadResult()
    budget = max_bytes - sum(int(v[0]) for v in done.values())
    for rel, (size, mtime) in sorted(found.items(), key=lambda kv: kv[1][0]):  # smallest first: most files fit
        if done.get(rel) == [size, mtime]:
            continue
        if size > budget or len(done) >= MAX_OUTPUT_FILES:
            result.skipped.append(f"{rel} ({size} bytes)")
            continue
        opened = files.open_file(work, rel)
        if opened is None:
            continue
        fd, _st = opened
        try:
            with os.fdopen(fd, "rb") as src, tempfile.NamedTemporaryFile(dir=work.parent) as tmp:
                shutil.copyfileobj(src, tmp, 1 << 20)
                tmp.flush()
                store.put_file(job_id, "artifacts", rel, Path(tmp.name))
        except ValueError:
            result.skipped.append(f"{rel} (name not storable)")
            continue
        budget -= size
        done[rel] = [size, mtime]
        result.uploaded += 1
        result.bytes += size
    return result


async def pull_remote_outputs(
    store: JobObjectStore,
    job_id: str,
    provider: Any,
    handle: Any,
    scratch: Path,
    done: dict[str, list[float]],
    max_bytes: int,
    to_thread: Callable[..., Any],
) -> UploadResult:
    """Copy a remote attempt's artifacts (provider.list_artifacts/open_artifact) into the store before release."""
    result = UploadResult()
    budget = max_bytes - sum(int(v[0]) for v in done.values())
    scratch.mkdir(parents=True, exist_ok=True)
    for a in sorted(await provider.list_artifacts(handle), key=lambda a: a.size_bytes):
        if done.get(a.path) == [a.size_bytes, a.modified_unix_s]:
            continue
        try:
            check_relative(a.path)
        except ValueError:
            result.skipped.append(f"{a.path} (unsafe name)")
            continue
        if a.size_bytes > budget or len(done) >= MAX_OUTPUT_FILES:
            result.skipped.append(f"{a.path} ({a.size_bytes} bytes)")
            continue
        fd, name = tempfile.mkstemp(dir=scratch)
        try:
            written = 0
            with os.fdopen(fd, "wb") as out:
                stream: AsyncIterator[bytes] = provider.open_artifact(handle, a.path, 1 << 20)
                async for block in stream:
                    written += len(block)
                    if written > budget:
                        break
                    await to_thread(out.write, block)
            if written > budget:
                result.skipped.append(f"{a.path} (grew past the limit)")
                continue
            await to_thread(store.put_file, job_id, "artifacts", a.path, Path(name))
        finally:
            os.unlink(name)
        budget -= written
        done[a.path] = [a.size_bytes, a.modified_unix_s]
        result.uploaded += 1
        result.bytes += written
    return result


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


# ---- the local job user's checkpoint folder (file:// stores) --------------------------------------------------------


def lend_to_job_user(store: JobObjectStore, job_id: str, uid: int, gid: int) -> None:
    """Let a local job running as `uid` write its own checkpoints/ and artifacts/ folders of a file:// store.

    The store root, jobs/ and the job's folder become 0711 (others may pass through to a folder whose name they
    know, never list one), the job's checkpoints/ and artifacts/ folders and files are given to the job user, mode
    0700/0600. reclaim_from_job_user takes them back when the attempt ends."""
    if store.scheme != "file":
        return
    job_root = Path(store.path(job_id, "checkpoints")).parent
    for folder in (Path(store.root), Path(store.root) / "jobs", job_root):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, os.geteuid(), os.getegid())
        os.chmod(folder, 0o711)
    for kind in ("checkpoints", "artifacts"):
        _chown_tree(Path(store.path(job_id, kind)), uid, gid)


def reclaim_from_job_user(store: JobObjectStore, job_id: str) -> None:
    """Give the job's store folders back to the scheduler's user (0700): an ended job's files are no job's to change."""
    if store.scheme != "file":
        return
    for kind in ("checkpoints", "artifacts"):
        folder = Path(store.path(job_id, kind))
        if folder.is_dir():
            _chown_tree(folder, os.geteuid(), os.getegid())


def _chown_tree(folder: Path, uid: int, gid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, uid, gid, follow_symlinks=False)
    os.chmod(folder, 0o700)
    for dirpath, dirs, names in os.walk(folder):
        for name in dirs + names:
            full = os.path.join(dirpath, name)
            os.chown(full, uid, gid, follow_symlinks=False)
            if not os.path.islink(full):
                os.chmod(full, 0o700 if name in dirs else 0o600)


__all__ = [
    "CHECKPOINTS_PREFIX",
    "CODE_OBJECT",
    "UploadResult",
    "fresh_work",
    "lend_to_job_user",
    "listing",
    "locate",
    "pack_code",
    "publish_code",
    "pull_remote_outputs",
    "reclaim_from_job_user",
    "upload_outputs",
]
