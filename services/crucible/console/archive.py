"""Code uploads of the console: check an uploaded zip/tar.gz, or pack an uploaded folder into a tar.gz `code_archive`.

Paths are checked before anything is written (no absolute paths, no '..', no links); sizes are bounded first.
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import tarfile
import zipfile
from collections.abc import Sequence
from typing import Any

MAX_MEMBERS = 2000


class ArchiveError(ValueError):
    """The upload cannot be a job's code; the message says why in one sentence."""


def _check_name(name: str) -> str:
    if not name or len(name) > 1000 or "\x00" in name or "\\" in name:
        raise ArchiveError(f"bad file name {name[:80]!r}")
    clean = posixpath.normpath(name)
    if clean.startswith(("/", "../")) or clean == "..":
        raise ArchiveError(f"file {name[:80]!r} would land outside the job's folder")
    return clean


def check_archive(data: bytes) -> None:
    """Accept a .zip or .tar.gz whose members stay inside the folder it is unpacked to (blocking: run in a thread)."""
    buffer = io.BytesIO(data)
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(buffer) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as err:
            raise ArchiveError(f"not a readable zip file ({err})") from None
    elif data[:2] == b"\x1f\x8b":
        names = []
        try:
            with tarfile.open(fileobj=buffer, mode="r:gz") as archive:
                for member in archive:
                    if member.issym() or member.islnk() or member.isdev():
                        raise ArchiveError(f"{member.name[:80]!r} is a link or device file")
                    names.append(member.name)
                    if len(names) > MAX_MEMBERS:
                        break
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ArchiveError(f"not a readable tar.gz file ({err})") from None
    else:
        raise ArchiveError("must be a .zip or .tar.gz file")
    if len(names) > MAX_MEMBERS:
        raise ArchiveError(f"more than {MAX_MEMBERS} files")
    for name in names:
        _check_name(name)


def _common_root(names: Sequence[str]) -> str:
    """The folder the browser put every path under ('nanogpt/' for a picked folder 'nanogpt'), or ''."""
    firsts = {n.split("/", 1)[0] for n in names}
    return next(iter(firsts)) + "/" if len(firsts) == 1 and all("/" in n for n in names) else ""


def _pack(items: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


async def pack_folder(files: Sequence[Any], limit: int) -> bytes:
    """Pack a browser folder upload (UploadFiles named by their relative paths) into a tar.gz of at most `limit` bytes."""
    if len(files) > MAX_MEMBERS:
        raise ArchiveError(f"more than {MAX_MEMBERS} files")
    names = [_check_name(f.filename or "") for f in files]
    total = sum(f.size or 0 for f in files)
    if total > limit:
        raise ArchiveError(f"the folder holds {total:,} bytes, more than the limit of {limit:,}")
    root = _common_root(names)
    items: list[tuple[str, bytes]] = []
    read = 0
    for name, upload in zip(names, files, strict=True):
        data = await upload.read(limit + 1 - read)
        read += len(data)
        if read > limit:
            raise ArchiveError(f"the folder holds more than the limit of {limit:,} bytes")
        items.append((name[len(root) :] if root else name, data))
    packed = await asyncio.to_thread(_pack, items)
    if len(packed) > limit:
        raise ArchiveError(f"the packed folder is {len(packed):,} bytes, more than the limit of {limit:,}")
    return packed
