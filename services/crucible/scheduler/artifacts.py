"""Serving a job's files from its working directory: only regular files physically inside it, never through a link.

All file work here is blocking and meant for a thread (the engine calls it through asyncio.to_thread); a later object
store backend can sit behind the same three calls: `check_path`, `scan` and `open_file`/`read_chunk`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from crucible.runtime.errors import InvalidArgument, NotFound
from crucible.scheduler.jobspec import relative_path_ok

MAX_PATH_BYTES = 1024  # longer request paths are INVALID_ARGUMENT before any file system call
MAX_NAME_BYTES = 255  # one path component (NAME_MAX on Linux)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def check_path(path: str) -> list[str]:
    """The components of a requested artifact path, or INVALID_ARGUMENT (field `path`) when it cannot name one."""
    if not path:
        raise InvalidArgument.field("path", "is required")
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidArgument.field("path", f"at most {MAX_PATH_BYTES} bytes (got {len(encoded)})", reason="PATH_TOO_LONG")
    if not relative_path_ok(path):
        raise InvalidArgument.field("path", "must be relative to the job's directory, without '..'", reason="PATH_OUTSIDE_JOB")
    parts = path.split("/")
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise InvalidArgument.field("path", f"each component at most {MAX_NAME_BYTES} bytes", reason="PATH_TOO_LONG")
    return parts


def servable(st: os.stat_result) -> bool:
    """A regular file with one name: a hard link (st_nlink > 1) may be a file from outside the job's folder."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def scan(root: Path, manifest: dict[str, list[int]]) -> dict[str, tuple[int, float]]:
    """{relative path: (size, mtime)} of the servable files under `root` that are not unchanged uploaded code.

    Links are never followed (os.walk does not descend into linked folders; linked files are left out).
    """
    found: dict[str, tuple[int, float]] = {}
    if not root.is_dir() or root.is_symlink():
        return found
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not servable(st):
                continue
            rel = Path(full).relative_to(root).as_posix()
            if manifest.get(rel) == [st.st_size, st.st_mtime_ns]:
                continue  # uploaded code, unchanged
            found[rel] = (st.st_size, st.st_mtime)
    return found


def open_file(root: Path, path: str) -> tuple[int, os.stat_result] | None:
    """(fd, stat) of `path` under `root`, opened component by component with O_NOFOLLOW so no link is ever followed
    and no race can swap one in; None when nothing is there. INVALID_ARGUMENT for a link, a special file or a hard link.
    The caller closes the fd."""
    parts = check_path(path)
    try:
        fd = os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        return None
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        leaf = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    except (FileNotFoundError, NotADirectoryError):
        os.close(fd)
        return None
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.ELOOP:  # a link where O_NOFOLLOW forbids one
            raise InvalidArgument.field(
                "path", "is a link; only regular files inside the job's folder are served", reason="PATH_OUTSIDE_JOB"
            ) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InvalidArgument.field("path", "is too long", reason="PATH_TOO_LONG") from None
        raise
    os.close(fd)
    st = os.fstat(leaf)
    if stat.S_ISDIR(st.st_mode):
        os.close(leaf)
        raise NotFound(f"artifact {path!r} is a folder", reason="ARTIFACT_NOT_FOUND")
    if not servable(st):
        os.close(leaf)
        what = "has other hard links" if stat.S_ISREG(st.st_mode) else "is not a regular file"
        raise InvalidArgument.field(
            "path", f"{what}; only regular files inside the job's folder are served", reason="ARTIFACT_NOT_REGULAR"
        )
    os.set_blocking(leaf, True)
    return leaf, st


def read_chunk(fd: int, offset: int, size: int, digest: hashlib._Hash | None = None) -> bytes:
    """`size` bytes at `offset` (fewer at the end), fed to `digest` when given; reads nothing before `offset`."""
    data = os.pread(fd, size, offset)
    if digest is not None:
        digest.update(data)
    return data
