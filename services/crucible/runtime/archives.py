"""Untrusted tar and zip archives, read with every header bounded before tarfile or zipfile sees it, and unpacked safely.

Shared by the scheduler (JobSpec.code_archive) and the console (code uploads); blocking: call it in a thread.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from crucible.runtime.errors import echo

#: Bytes of one tar block (header or padding unit).
BLOCK = 512
#: Tar member types taken: regular files (three spellings), folders, symbolic and hard links.
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_SPECIAL_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)
#: Extension headers: pax (per member, global, Solaris) and GNU long name and long link name.
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_GNU_LONG_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
#: One pax record: "<length> <keyword>=<value>\n"; the length field may have at most 20 digits (far past any size).
_PAX_LENGTH = re.compile(rb"[0-9]{1,20} ")
#: A run of digits longer than this in a pax header is refused: Python 3.11.7's tarfile scans pax headers with a regular
#: expression that is quadratic in such runs (CVE-2024-6232); real headers hold numbers of at most about 30 digits.
MAX_PAX_DIGITS = 64
_LONG_DIGITS = re.compile(rb"[0-9]{%d}" % (MAX_PAX_DIGITS + 1))

#: The first bytes of a compressed tar stream (gzip, bzip2, xz): such data is read as tar even if, by chance, its
#: last 64 KiB hold a zip end-record signature.
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
#: Zip compression methods zipfile can read.
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)

Kind = Literal["file", "dir", "symlink", "hardlink"]


class ArchiveError(ValueError):
    """The archive is refused; the message says why in one sentence, naming the member (shortened) where there is one.

    `reason` is "ARCHIVE_INVALID" (not a readable archive), "ARCHIVE_UNSAFE" (a member is refused) or
    "ARCHIVE_TOO_LARGE" (past a count or size limit)."""

    def __init__(self, message: str, reason: str = "ARCHIVE_UNSAFE") -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may hold. Names are counted in UTF-8 bytes, after the archive's own name extensions."""

    max_members: int = 20000
    max_bytes: int = 1 << 30  # unpacked, from the headers, before any member's data is decompressed
    max_path_bytes: int = 4096  # a whole member name (PATH_MAX), also a link's target
    max_component_bytes: int = 255  # one part of a name (NAME_MAX)
    max_pax_header_bytes: int = 64 << 10  # one pax extended header
    max_extension_headers: int = 4  # pax / GNU headers in a row before a member


@dataclasses.dataclass(frozen=True)
class Member:
    """One entry of an archive as it will be unpacked: `path` is '/'-separated, relative, without '.' parts ('' is
    the root folder itself); `target` is a link's target (for a hard link, another member's path)."""

    index: int
    name: str  # as written in the archive
    path: str
    kind: Kind
    size: int
    target: str = ""


@dataclasses.dataclass(frozen=True)
class Listing:
    """What `scan` found: the format, the members in order, and the one top folder every member lies under when
    there is one (else ''): `unpack` then unpacks that folder's contents instead of the folder."""

    format: Literal["tar", "zip"]
    members: list[Member]
    top: str


def shown(name: str) -> str:
    """A member name for a message: repr'd, cut past 64 characters with its full length said (errors.echo)."""
    return echo(name)


def _member_error(index: int, name: str, why: str, reason: str = "ARCHIVE_UNSAFE") -> ArchiveError:
    """'member 3 ('a/b') <why>', or without the index when it is negative (a name that is not from an archive)."""
    return ArchiveError(f"member {index} ({shown(name)}) {why}" if index >= 0 else f"{shown(name)} {why}", reason)


# ---- names --------------------------------------------------------------------------------------------------------


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def clean_path(index: int, name: str, limits: ArchiveLimits) -> str:
    """The member's relative path without '.' or empty parts; ArchiveError for an absolute path, '..', a backslash,
    a NUL, or a name past the limits."""
    if len(name) > limits.max_path_bytes or _utf8_len(name) > limits.max_path_bytes:
        raise _member_error(index, name, f"has a name longer than {limits.max_path_bytes} bytes")
    if "\x00" in name or "\\" in name:
        raise _member_error(index, name, "has a NUL byte or a backslash in its name")
    if name.startswith("/"):
        raise _member_error(index, name, "has an absolute path: it would land outside the folder it is unpacked to")
    parts = _joined(name).split("/")
    for part in parts:
        if part == "..":
            raise _member_error(index, name, "would land outside the folder it is unpacked to ('..')")
        if _utf8_len(part) > limits.max_component_bytes:
            raise _member_error(index, name, f"has a name part longer than {limits.max_component_bytes} bytes")
    return "/".join(parts)


def check_layout(members: list[Member]) -> None:
    """ArchiveError for two members that cannot both be unpacked: the same path twice (two folders excepted), or a
    member under a path that another member makes a file or a link (`a` then `a/b`, in either order)."""
    kinds: dict[str, str] = {"": "dir"}
    for m in members:
        if not m.path:
            if m.kind != "dir":
                raise _member_error(m.index, m.name, "is a file in place of the root folder")
            continue
        cut = len(m.path)
        while (cut := m.path.rfind("/", 0, cut)) > 0:  # parents, deepest first, until one already known
            parent = m.path[:cut]
            known = kinds.get(parent)
            if known is None:
                kinds[parent] = "dir"
                continue
            if known != "dir":
                raise _member_error(m.index, m.name, f"lies under {shown(parent)}, which an earlier member made a {known}")
            break
        kind = "dir" if m.kind == "dir" else "file" if m.kind == "file" else "link"
        known = kinds.get(m.path)
        if known is not None and not (known == "dir" and kind == "dir"):
            what = "a folder" if known == "dir" else f"a {known}"
            raise _member_error(m.index, m.name, f"collides with an earlier member: {shown(m.path)} is already {what}")
        kinds[m.path] = kind


def _top_folder(members: list[Member]) -> str:
    """The one folder every member lies under, when there is one and nothing else at the top, and the archive has
    no explicit root member ('./', which packers that keep a folder's layout write); else ''."""
    tops = set()
    for m in members:
        if not m.path:
            return ""
        head, sep, _ = m.path.partition("/")
        if not sep and m.kind != "dir":
            return ""
        tops.add(head)
        if len(tops) > 1:
            return ""
    return next(iter(tops)) if tops else ""


# ---- tar ----------------------------------------------------------------------------------------------------------


def _open_stream(data: bytes) -> io.BufferedIOBase:
    """A file object reading the tar stream out of `data` (gzip, bzip2, xz or none), decompressing as it is read."""
    raw = io.BytesIO(data)
    gz, bzip2, xz = _COMPRESSED_MAGIC
    if data.startswith(gz):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if data.startswith(bzip2):
        return bz2.BZ2File(raw, mode="rb")
    if data.startswith(xz):
        return lzma.LZMAFile(raw, mode="rb")
    return raw


def _read(stream: io.BufferedIOBase, size: int) -> bytes:
    out = stream.read(size)
    if len(out) != size:
        raise ArchiveError("is truncated: the archive ends inside a member", "ARCHIVE_INVALID")
    return out


def _skip(stream: io.BufferedIOBase, size: int) -> None:
    while size > 0:
        got = len(stream.read(min(size, 1 << 20)))
        if not got:
            raise ArchiveError("is truncated: the archive ends inside a member", "ARCHIVE_INVALID")
        size -= got


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def parse_pax(buf: bytes, index: int) -> dict[str, str]:
    """The records of one pax header, parsed in linear time; ArchiveError unless every record is well formed (length
    field of at most 20 digits that matches, 'keyword=value', newline) and no digit run is long (CVE-2024-6232)."""
    if _LONG_DIGITS.search(buf):
        raise ArchiveError(
            f"member {index} has a pax header with a number of more than {MAX_PAX_DIGITS} digits", "ARCHIVE_UNSAFE"
        )
    records: dict[str, str] = {}
    pos = 0
    while pos < len(buf):
        if buf[pos] == 0 and not buf[pos:].strip(b"\x00"):  # the padding after the last record
            break
        match = _PAX_LENGTH.match(buf, pos)
        if match is None:
            raise ArchiveError(f"member {index} has a malformed pax header", "ARCHIVE_INVALID")
        length = int(match.group()[:-1])
        record = buf[pos : pos + length]
        if length <= match.end() - pos or pos + length > len(buf) or not record.endswith(b"\n"):
            raise ArchiveError(f"member {index} has a malformed pax header record", "ARCHIVE_INVALID")
        keyword, eq, value = record[match.end() - pos : -1].partition(b"=")
        if not eq or not keyword:
            raise ArchiveError(f"member {index} has a pax header record without 'keyword='", "ARCHIVE_INVALID")
        records[keyword.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _merge(pending: dict[str, str], records: dict[str, str], index: int) -> None:
    """Add one extension header's records to the member's; two headers setting one key differently are refused (tarfile
    would keep the outer one, GNU tar the inner: such an archive unpacks differently depending on the reader)."""
    for key, value in records.items():
        if pending.setdefault(key, value) != value:
            raise ArchiveError(f"member {index} has extension headers that disagree about {key!r}", "ARCHIVE_UNSAFE")


def _tar_members(data: bytes, limits: ArchiveLimits) -> Iterator[tuple[int, str, bytes, int, str]]:
    """(index, name, type, size, link target) of each tar member, every header and extension bounded before it is
    read and each member's data skipped, never kept; stops at the first zero block, like tarfile."""
    stream = _open_stream(data)
    index = 0
    pending: dict[str, str] = {}
    extensions = 0
    try:
        while True:
            block = stream.read(BLOCK)
            if not block:
                return  # no end-of-archive blocks: tarfile accepts that too
            if len(block) < BLOCK:
                raise ArchiveError("is truncated: the archive ends inside a header", "ARCHIVE_INVALID")
            if block.count(0) == BLOCK:
                return  # the end-of-archive marker: tarfile stops here too
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise ArchiveError(f"is not a readable tar archive (member {index}: {exc})", "ARCHIVE_INVALID") from None
            if info.size < 0:
                raise ArchiveError(f"member {index} has a negative size", "ARCHIVE_INVALID")
            if info.type in _PAX_TYPES or info.type in _GNU_LONG_TYPES:
                extensions += 1
                if extensions > limits.max_extension_headers:
                    raise ArchiveError(
                        f"member {index} has more than {limits.max_extension_headers} extension headers", "ARCHIVE_UNSAFE"
                    )
                if info.type in _GNU_LONG_TYPES:
                    if info.size > limits.max_path_bytes + 1:
                        what = "name" if info.type == tarfile.GNUTYPE_LONGNAME else "link target"
                        raise ArchiveError(
                            f"member {index} has a {what} of {info.size} bytes, more than {limits.max_path_bytes}",
                            "ARCHIVE_UNSAFE",
                        )
                    text = _read(stream, _padded(info.size))[: info.size].split(b"\x00", 1)[0]
                    key = "path" if info.type == tarfile.GNUTYPE_LONGNAME else "linkpath"
                    _merge(pending, {key: text.decode("utf-8", "surrogateescape")}, index)
                    continue
                if info.size > limits.max_pax_header_bytes:
                    raise ArchiveError(
                        f"member {index} has a pax header of {info.size} bytes, more than {limits.max_pax_header_bytes}",
                        "ARCHIVE_UNSAFE",
                    )
                records = parse_pax(_read(stream, _padded(info.size))[: info.size], index)
                if any(k.startswith("GNU.sparse") for k in records):
                    raise ArchiveError(f"member {index} is a sparse file, which code archives may not hold", "ARCHIVE_UNSAFE")
                if info.type == tarfile.XGLTYPE:
                    if {"path", "linkpath", "size"} & records.keys():
                        raise ArchiveError(
                            f"member {index} has a global pax header that sets a name or size for every member", "ARCHIVE_UNSAFE"
                        )
                    continue
                _merge(pending, records, index)
                continue
            extensions = 0
            name = pending.get("path", info.name)
            target = pending.get("linkpath", info.linkname)
            size = info.size
            if "size" in pending:
                if not pending["size"].isdigit():
                    raise ArchiveError(f"member {index} has a malformed pax size", "ARCHIVE_INVALID")
                size = int(pending["size"])
            pending = {}
            if _utf8_len(target) > limits.max_path_bytes:
                raise _member_error(index, name, f"has a link target longer than {limits.max_path_bytes} bytes")
            yield index, name, info.type, size, target
            if info.type in _FILE_TYPES:
                _skip(stream, _padded(size))  # the caller has checked the size against the limits by now
            index += 1
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(f"is not a readable archive ({type(exc).__name__})", "ARCHIVE_INVALID") from None


def _scan_tar(data: bytes, limits: ArchiveLimits) -> list[Member]:
    members: list[Member] = []
    total = 0
    files: set[str] = set()
    for index, name, type_, size, target in _tar_members(data, limits):
        if index >= limits.max_members:
            raise ArchiveError(f"has more than {limits.max_members} members", "ARCHIVE_TOO_LARGE")
        path = clean_path(index, name, limits)
        kind: Kind
        if type_ in _FILE_TYPES:
            kind = "file"
            total += size
            if total > limits.max_bytes:
                raise ArchiveError(f"unpacks to more than {limits.max_bytes} bytes", "ARCHIVE_TOO_LARGE")
        elif type_ == tarfile.DIRTYPE:
            kind = "dir"
        elif type_ == tarfile.SYMTYPE:
            kind = "symlink"
            if not target or target.startswith("/") or "\x00" in target:
                raise _member_error(index, name, "is a link with an absolute or empty target")
        elif type_ == tarfile.LNKTYPE:
            kind = "hardlink"
            target = clean_path(index, target, limits)
            if target not in files:
                raise _member_error(index, name, "is a hard link to something that is not an earlier file of the archive")
        elif type_ in _SPECIAL_TYPES:
            raise _member_error(index, name, "is a special file (device or FIFO)")
        else:
            raise _member_error(index, name, f"has a member type ({type_!r}) code archives may not hold")
        if kind == "file":
            files.add(path)
        members.append(Member(index, name, path, kind, size if kind == "file" else 0, target))
    return members


# ---- zip ----------------------------------------------------------------------------------------------------------


def _scan_zip(data: bytes, limits: ArchiveLimits) -> list[Member]:
    # The entry count and directory size from the end record first: ZipFile() would build every entry before that.
    # zipfile's private end-record reader: typeshed leaves private names out of its zipfile stub.
    end = zipfile._EndRecData(io.BytesIO(data))  # type: ignore[attr-defined]
    if not end:
        raise ArchiveError("is not a readable zip archive (no end record)", "ARCHIVE_INVALID")
    if end[zipfile._ECD_ENTRIES_TOTAL] > limits.max_members:  # type: ignore[attr-defined]
        raise ArchiveError(f"has more than {limits.max_members} members", "ARCHIVE_TOO_LARGE")
    if end[zipfile._ECD_SIZE] > len(data):  # type: ignore[attr-defined]
        raise ArchiveError("is not a readable zip archive (its directory is larger than the file)", "ARCHIVE_INVALID")
    members: list[Member] = []
    total = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, NotImplementedError, EOFError, OSError, struct.error) as exc:
        raise ArchiveError(f"is not a readable zip archive ({type(exc).__name__}: {exc})"[:200], "ARCHIVE_INVALID") from None
    if len(infos) > limits.max_members:
        raise ArchiveError(f"has more than {limits.max_members} members", "ARCHIVE_TOO_LARGE")
    for index, info in enumerate(infos):
        name = info.filename
        path = clean_path(index, name, limits)
        unix = stat.S_IFMT(info.external_attr >> 16)  # 0 when the writer recorded no Unix type
        if unix in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            raise _member_error(index, name, "is a special file (device, FIFO or socket)")
        if info.is_dir():
            members.append(Member(index, name, path, "dir", 0))
            continue
        if info.flag_bits & 0x1:
            raise _member_error(index, name, "is encrypted")
        if info.compress_type not in _ZIP_METHODS:
            raise _member_error(index, name, f"uses a compression method ({info.compress_type}) zipfile cannot read")
        total += info.file_size
        if total > limits.max_bytes:
            raise ArchiveError(f"unpacks to more than {limits.max_bytes} bytes", "ARCHIVE_TOO_LARGE")
        # zipfile writes a link member as a regular file holding the target's name: it is a file here too.
        members.append(Member(index, name, path, "file", info.file_size))
    return members


# ---- the entry points ---------------------------------------------------------------------------------------------


def is_zip(data: bytes) -> bool:
    """Whether `data` is read as a zip archive: it starts like one, or is not a compressed tar and has a zip end
    record (a zip with a prefix, such as a self-extracting one)."""
    if data.startswith(_COMPRESSED_MAGIC):
        return False
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06") or zipfile.is_zipfile(io.BytesIO(data))


def scan(data: bytes, limits: ArchiveLimits | None = None) -> Listing:
    """Every member of a .tar(.gz/.bz2/.xz) or .zip archive, checked: bounded headers and names, sizes and counts
    within `limits`, no absolute paths, '..', special files, links leading out or colliding names. Blocking."""
    limits = limits or ArchiveLimits()
    if is_zip(data):
        members, fmt = _scan_zip(data, limits), "zip"
    else:
        members, fmt = _scan_tar(data, limits), "tar"
    check_layout(members)
    return Listing(fmt, members, _top_folder(members))  # type: ignore[arg-type]


def _joined(name: str) -> str:
    """A member name without '.' and empty parts (names scan() accepted)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _strip(path: str, top: str) -> str:
    return path[len(top) + 1 :] if top and path.startswith(top + "/") else ("" if path == top else path)


def unpack(data: bytes, dest: Path, limits: ArchiveLimits | None = None, *, unwrap: bool = True) -> Listing:
    """Check the archive (`scan`), then unpack it into `dest`: tar with tarfile's 'data' filter (links stay inside,
    no special files, sane permissions), zip member by member. With `unwrap`, an archive whose members all lie under
    one top folder (`tar czf nanogpt.tar.gz nanogpt`) has that folder's contents unpacked into `dest`. Blocking."""
    listing = scan(data, limits)
    top = listing.top if unwrap else ""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if listing.format == "zip":
            _unpack_zip(data, dest, top)
        else:
            _unpack_tar(data, dest, listing, top)
    except tarfile.FilterError as exc:
        raise ArchiveError(f"has a member the 'data' filter refuses: {exc}"[:300], "ARCHIVE_UNSAFE") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:  # e.g. a CRC error
        raise ArchiveError(f"cannot be unpacked: {type(exc).__name__}: {exc}"[:300], "ARCHIVE_INVALID") from None
    return listing


def _unpack_tar(data: bytes, dest: Path, listing: Listing, top: str) -> None:
    def renamed(members: Iterator[tarfile.TarInfo]) -> Iterator[tarfile.TarInfo]:
        for info in members:
            if top:
                info.name = _strip(_joined(info.name), top)
                if not info.name:
                    continue  # the top folder itself
                if info.islnk():
                    info.linkname = _strip(_joined(info.linkname), top)
            yield info

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        archive.extractall(dest, members=renamed(iter(archive)), filter="data")


def _unpack_zip(data: bytes, dest: Path, top: str) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            path = _strip(_joined(info.filename), top)
            if not path:
                continue
            target = dest / path
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            mode = (info.external_attr >> 16) & 0o755
            # Sizes are capped by the headers scan() checked: zipfile reads no more than file_size bytes per member.
            with archive.open(info) as src, open(target, "xb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(target, (mode | 0o600) if mode & 0o100 else 0o644)
