"""Serving a job's files from its working directory: only regular files physically inside it, never through a link.

All file work here is blocking and meant for a thread (the engine calls it through asyncio.to_thread); a later object
store backend can sit behind the same three calls: `check_path`, `scan` and `open_file`/`read_chunk`.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from crucible.runtime.errors import InvalidArgument, NotFound
from crucible.scheduler.engine.jobspec import relative_path_ok
from crucible.scheduler.objects import nofollow

MAX_PATH_BYTES = 1024  # longer request paths are INVALID_ARGUMENT before any file system call
MAX_NAME_BYTES = 255  # one path component (NAME_MAX on Linux)


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
    return nofollow.regular(st)


def scan(root: Path, manifest: dict[str, list[int]]) -> dict[str, tuple[int, float]]:
    """{relative path: (size, mtime)} of the servable files under `root` that are not unchanged uploaded code.

    Links are never followed: the walk opens each folder with O_NOFOLLOW under its parent's descriptor, so a folder
    swapped for a link while it runs is skipped, not entered; linked and hard-linked files are left out.
    """
    found: dict[str, tuple[int, float]] = {}
    try:
        fd = nofollow.open_dir(root)
    except (OSError, nofollow.UnsafePath):
        return found
    try:
        for rel, st in nofollow.files(fd):
            if manifest.get(rel) == [st.st_size, st.st_mtime_ns]:
                continue  # uploaded code, unchanged
            found[rel] = (st.st_size, st.st_mtime)
    finally:
        os.close(fd)
    return found


def open_file(root: Path, path: str) -> tuple[int, os.stat_result] | None:
    """(fd, stat) of `path` under `root`, opened component by component with O_NOFOLLOW so no link is ever followed
    and no race can swap one in; None when nothing is there. INVALID_ARGUMENT for a link, a special file or a hard link.
    The caller closes the fd."""
    parts = check_path(path)
    try:
        fd = nofollow.open_dir(root)
    except FileNotFoundError:
        return None
    except nofollow.UnsafePath:
        raise InvalidArgument.field(
            "path", "the job's folder is a link; nothing in it is served", reason="PATH_OUTSIDE_JOB"
        ) from None
    try:
        return nofollow.open_file(fd, parts)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        raise NotFound(f"artifact {path!r} is a folder", reason="ARTIFACT_NOT_FOUND") from None
    except nofollow.UnsafePath as exc:
        if exc.kind == "link":
            raise InvalidArgument.field(
                "path", "is a link; only regular files inside the job's folder are served", reason="PATH_OUTSIDE_JOB"
            ) from None
        what = "has other hard links" if exc.kind == "hard link" else "is not a regular file"
        raise InvalidArgument.field(
            "path", f"{what}; only regular files inside the job's folder are served", reason="ARTIFACT_NOT_REGULAR"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InvalidArgument.field("path", "is too long", reason="PATH_TOO_LONG") from None
        raise
    finally:
        os.close(fd)


def read_chunk(fd: int, offset: int, size: int, digest: hashlib._Hash | None = None) -> bytes:
    """`size` bytes at `offset` (fewer at the end), fed to `digest` when given; reads nothing before `offset`."""
    data = os.pread(fd, size, offset)
    if digest is not None:
        digest.update(data)
    return data
