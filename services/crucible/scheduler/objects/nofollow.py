"""File access that never follows a link: every path is opened one component at a time with O_NOFOLLOW under the
directory descriptor of the one before, so neither a symlink nor a hard link that a job made is ever read or written.

The scheduler runs as root and touches folders a job could write (its working folder, its store prefix): each call
here refuses symlinks, hard-linked files (st_nlink > 1), FIFOs, sockets and devices. Every call blocks: use a thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: Temporary files of an atomic write start with this (hidden); `sweep_temp` removes them after a crash.
TEMP_PREFIX = ".crucible-tmp-"
#: Folder depth a walk descends to; deeper folders are left out (a job could nest folders without end).
MAX_DEPTH = 64
BLOCK = 1 << 20


class UnsafePath(Exception):
    """A path names a link, a hard-linked file or a special file where only regular files and folders are accepted.

    `kind` says which: "link", "hard link" or "special" (also a name that is no plain file name)."""

    def __init__(self, message: str, kind: str = "link") -> None:
        super().__init__(message)
        self.kind = kind


def _refuse(exc: OSError, what: str) -> Exception:
    if exc.errno == errno.ELOOP:
        return UnsafePath(f"{what} is a link; links are never followed")
    return exc


def open_dir(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """A descriptor of the folder `path` (its last component must not be a link); FileNotFoundError when absent."""
    try:
        return os.open(path, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _refuse(exc, os.fspath(path)) from None


def open_dirs(base_fd: int, parts: Sequence[str], *, create: bool = False, mode: int = 0o700) -> int:
    """A new descriptor of base/parts[0]/parts[1]/..., each opened with O_NOFOLLOW; missing folders are made when
    `create`. UnsafePath for a link or a non-folder on the way. The caller closes the result (not `base_fd`)."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            _check_name(part)
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except NotADirectoryError:
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise UnsafePath(f"{part!r} is a link; links are never followed") from None
                raise
            except OSError as exc:
                raise _refuse(exc, repr(part)) from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_name(part: str) -> None:
    if not part or part in (".", "..") or "/" in part or "\x00" in part:
        raise UnsafePath(f"{part!r} is not a plain file name", "special")


def regular(st: os.stat_result) -> bool:
    """A regular file with one name: a hard link (st_nlink > 1) may be a file from outside the folder."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def open_file(base_fd: int, parts: Sequence[str]) -> tuple[int, os.stat_result]:
    """(fd, stat) of the regular, single-link file base/parts..., opened for reading without following any link.
    FileNotFoundError when absent; UnsafePath for a link, a hard link, a folder or a special file."""
    if not parts:
        raise UnsafePath("an empty path names no file")
    parent = open_dirs(base_fd, parts[:-1])
    try:
        _check_name(parts[-1])
        try:
            fd = os.open(parts[-1], FILE_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _refuse(exc, repr(parts[-1])) from None
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not regular(st):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", parts[-1])
        if stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{parts[-1]!r} has other hard links", "hard link")
        raise UnsafePath(f"{parts[-1]!r} is not a regular file", "special")
    os.set_blocking(fd, True)
    return fd, st


def entries(
    dir_fd: int, prefix: str = "", depth: int = 0, *, prune: Callable[[str], bool] | None = None
) -> Iterator[tuple[int, str, str, os.stat_result]]:
    """(parent fd, relative path, name, lstat) of everything under the folder `dir_fd`, folders before their
    contents (a folder whose relative path `prune` accepts is reported, not entered); links are reported, never
    followed, and a folder swapped for a link meanwhile is skipped. The parent fd is valid only until the next item."""
    if depth > MAX_DEPTH:
        return
    with os.scandir(dir_fd) as it:
        items = [(e.name, e.stat(follow_symlinks=False)) for e in it]
    for name, st in sorted(items):
        rel = f"{prefix}{name}"
        yield dir_fd, rel, name, st
        if stat.S_ISDIR(st.st_mode) and not (prune is not None and prune(rel)):
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # gone, or replaced by a link: nothing to follow
            try:
                yield from entries(sub, rel + "/", depth + 1, prune=prune)
            finally:
                os.close(sub)


def files(dir_fd: int) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of the regular single-link files under the folder `dir_fd` (temporary files left out)."""
    for _parent, rel, name, st in entries(dir_fd):
        if regular(st) and not is_temp(name):
            yield rel, st


def is_temp(name: str) -> bool:
    """A temporary name of an atomic write (this module's, or the older `<name>.tmp-<12 hex>` of the store)."""
    if name.startswith(TEMP_PREFIX):
        return True
    head, sep, tail = name.rpartition(".tmp-")
    return bool(sep and head and len(tail) == 12 and all(c in "0123456789abcdef" for c in tail))


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """[(start, end)] of the parts of a file that hold data (SEEK_DATA/SEEK_HOLE): holes of a sparse file are left out.
    The whole file when the file system cannot say."""
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from here on
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return [(0, size)] if size else []
    return out


def copy_sparse(src: int, dst: int, size: int) -> int:
    """Copy the first `size` bytes of `src` to the new file `dst`, data extents only: holes stay holes. Returns the data
    bytes written (what the copy really holds)."""
    written = 0
    for start, end in data_extents(src, size):
        pos = start
        while pos < end:
            block = os.pread(src, min(BLOCK, end - pos), pos)
            if not block:
                break  # the file shrank meanwhile: the rest reads as a hole
            os.pwrite(dst, block, pos)
            pos += len(block)
            written += len(block)
    os.ftruncate(dst, size)
    return written


class AtomicWriter:
    """Create or replace base/parts... atomically: bytes go to a hidden temporary file in the same folder (made with
    O_EXCL|O_NOFOLLOW), renamed over the name by `commit` (a link there is replaced, never followed). Missing folders
    are made (0700); a link on the way is UnsafePath. `abort` (or leaving the `with` block by an error) removes it."""

    def __init__(self, base_fd: int, parts: Sequence[str], *, mode: int = 0o600) -> None:
        if not parts:
            raise UnsafePath("an empty path names no file")
        _check_name(parts[-1])
        self.name = parts[-1]
        self.parent = open_dirs(base_fd, parts[:-1], create=True)
        self.tmp = f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            self.fd = os.open(
                self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.parent
            )
        except BaseException:
            os.close(self.parent)
            raise
        self.done = False

    def write(self, data: bytes) -> None:
        """Append `data`."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self) -> None:
        """Make the written bytes the file's content (fsync, then rename over the name)."""
        os.fsync(self.fd)
        os.close(self.fd)
        try:
            os.replace(self.tmp, self.name, src_dir_fd=self.parent, dst_dir_fd=self.parent)
        except BaseException:
            self._unlink()
            raise
        finally:
            self.done = True
            os.close(self.parent)

    def abort(self) -> None:
        """Drop the temporary file; the name keeps what it had."""
        if self.done:
            return
        self.done = True
        os.close(self.fd)
        self._unlink()
        os.close(self.parent)

    def _unlink(self) -> None:
        try:
            os.unlink(self.tmp, dir_fd=self.parent)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def write_atomic(base_fd: int, parts: Sequence[str], write: Callable[[int], None], *, mode: int = 0o600) -> None:
    """AtomicWriter in one call: `write(fd)` fills the temporary file, which then replaces base/parts..."""
    with AtomicWriter(base_fd, parts, mode=mode) as out:
        write(out.fd)
        out.commit()


def remove_tree(base_fd: int, name: str) -> None:
    """Remove base/name and everything under it; links inside are removed, never followed (shutil.rmtree works on
    descriptors on Linux); a link at base/name is removed itself."""
    _check_name(name)
    try:
        st = os.stat(name, dir_fd=base_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux always can
            raise UnsafePath("this platform cannot remove a folder without following links")
        shutil.rmtree(name, dir_fd=base_fd)
    else:
        os.unlink(name, dir_fd=base_fd)


def chown_tree(
    parent: int,
    name: str,
    uid: int,
    gid: int,
    *,
    dir_mode: int | None = None,
    file_mode: int | None = None,
    create: bool = False,
) -> None:
    """Give the folder parent/name and everything in it to uid:gid (modes set when given), by descriptor: each item is
    opened with O_NOFOLLOW and checked again with fstat before fchown/fchmod, so a link is never followed and no file
    reached through a link or a hard link (st_nlink > 1) is ever handed over; links, hard-linked and special files
    keep their owner and mode. Nothing when the folder is absent (made, 0700, when `create`)."""
    try:
        top = open_dirs(parent, [name], create=create)
    except FileNotFoundError:
        return
    try:
        _give(top, uid, gid, dir_mode)
        for dir_fd, _rel, entry, st in entries(top):
            if stat.S_ISDIR(st.st_mode):
                flags, mode = DIR_FLAGS, dir_mode
            elif regular(st):
                flags, mode = FILE_FLAGS, file_mode
            else:
                continue
            try:
                fd = os.open(entry, flags, dir_fd=dir_fd)
            except OSError:
                continue  # gone, or swapped for a link meanwhile
            try:
                now = os.fstat(fd)
                if stat.S_ISDIR(now.st_mode) or regular(now):
                    _give(fd, uid, gid, mode)
            finally:
                os.close(fd)
    finally:
        os.close(top)


def _give(fd: int, uid: int, gid: int, mode: int | None) -> None:
    os.fchown(fd, uid, gid)
    if mode is not None:
        os.fchmod(fd, mode)


def sweep_temp(dir_fd: int, *, prune: Callable[[str], bool] | None = None) -> tuple[int, int]:
    """Remove the temporary files of interrupted atomic writes under the folder `dir_fd` (not inside folders that
    `prune` accepts): (files, bytes on disk) removed."""
    count = size = 0
    for parent, _rel, name, st in entries(dir_fd, prune=prune):  # each folder is listed whole before its items come
        if is_temp(name) and not stat.S_ISDIR(st.st_mode):
            try:
                os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                continue
            count += 1
            size += st.st_blocks * 512
    return count, size


__all__ = [
    "TEMP_PREFIX",
    "AtomicWriter",
    "UnsafePath",
    "chown_tree",
    "copy_sparse",
    "data_extents",
    "entries",
    "files",
    "is_temp",
    "open_dir",
    "open_dirs",
    "open_file",
    "regular",
    "remove_tree",
    "sweep_temp",
    "write_atomic",
]
