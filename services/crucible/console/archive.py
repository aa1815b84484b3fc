"""Code uploads of the console: check an uploaded zip/tar.gz, or pack an uploaded folder into a tar.gz `code_archive`.

Paths are checked before anything is written (no absolute paths, no '..', no links); sizes are bounded first.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Sequence
from typing import Any

from crucible.runtime import archives

MAX_MEMBERS = 2000


class ArchiveError(ValueError):
    """The upload cannot be a job's code; the message says why in one sentence."""


#: What an uploaded archive may hold; its headers are bounded before tarfile or zipfile reads them (see
#: crucible.runtime.archives: names at most 4096 bytes and 255 per part, pax headers at most 64 KiB).
LIMITS = archives.ArchiveLimits(max_members=MAX_MEMBERS)


def _check_name(name: str) -> str:
    if not name or "\x00" in name or "\\" in name:
        raise ArchiveError(f"bad file name {archives.shown(name)}")
    try:
        clean = archives.clean_path(-1, name, LIMITS)
    except archives.ArchiveError as err:
        raise ArchiveError(f"file {err}") from None
    if not clean:
        raise ArchiveError(f"bad file name {archives.shown(name)}")
    return clean


def check_archive(data: bytes) -> None:
    """Accept a .zip or .tar(.gz) whose members stay inside the folder it is unpacked to: bounded headers, no links
    leading out, no special files, no colliding or over-long names (blocking: run in a thread)."""
    if not (data[:4] in (b"PK\x03\x04", b"PK\x05\x06") or data[:2] == b"\x1f\x8b"):
        raise ArchiveError("must be a .zip or .tar.gz file")
    try:
        listing = archives.scan(data, LIMITS)
    except archives.ArchiveError as err:
        raise ArchiveError(f"the archive {err}") from None
    for member in listing.members:
        if member.kind in ("symlink", "hardlink"):
            raise ArchiveError(f"{archives.shown(member.name)} is a link")


def _common_root(names: Sequence[str]) -> str:
    """The folder the browser put every path under ('nanogpt/' for a picked folder 'nanogpt'), or ''."""
    firsts = {n.split("/", 1)[0] for n in names}
    return next(iter(firsts)) + "/" if len(firsts) == 1 and all("/" in n for n in names) else ""


def _pack(items: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        # An explicit root member: the scheduler then keeps the layout as it is (no one-top-folder unwrapping).
        root = tarfile.TarInfo(".")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(root)
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
    try:  # the same path twice, or a file that another path puts a folder under
        archives.check_layout([archives.Member(i, n, n, "file", 0) for i, n in enumerate(names)])
    except archives.ArchiveError as err:
        raise ArchiveError(f"the folder's file {err}") from None
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
