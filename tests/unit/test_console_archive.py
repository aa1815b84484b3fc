"""The console's code uploads: archive checks (zip/tar.gz, no escaping paths, no links) and folder packing (bounded)."""

from __future__ import annotations

import asyncio
import io
import tarfile
import zipfile

import pytest

from crucible.console.archive import ArchiveError, check_archive, pack_folder


class Upload:
    """What Starlette hands over for one file of a multipart form: a name, a size and read()."""

    def __init__(self, filename: str, data: bytes) -> None:
        self.filename, self.size, self._data = filename, len(data), data

    async def read(self, n: int = -1) -> bytes:
        return self._data if n < 0 else self._data[:n]


def _zip(names: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in names.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tar(add) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        add(t)
    return buf.getvalue()


def _file(t: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def test_archives_accepted_and_refused() -> None:
    check_archive(_zip({"train.py": b"print(1)", "pkg/util.py": b""}))
    check_archive(_tar(lambda t: _file(t, "train.py")))
    with pytest.raises(ArchiveError, match=".zip or .tar.gz"):
        check_archive(b"#!/bin/sh\necho hi\n")
    with pytest.raises(ArchiveError, match="outside"):
        check_archive(_zip({"../evil.py": b""}))
    with pytest.raises(ArchiveError, match="outside"):
        check_archive(_tar(lambda t: _file(t, "/etc/cron.d/x")))

    def link(t: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("data")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc"
        t.addfile(info)

    with pytest.raises(ArchiveError, match="link"):
        check_archive(_tar(link))
    with pytest.raises(ArchiveError, match="readable"):
        check_archive(b"\x1f\x8b" + b"garbage" * 10)


def test_folder_packed_without_its_top_folder() -> None:
    packed = asyncio.run(pack_folder([Upload("nanogpt/train.py", b"print(1)"), Upload("nanogpt/data/a.txt", b"abc")], 1 << 20))
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as t:
        assert sorted(t.getnames()) == [".", "data/a.txt", "train.py"]  # "." : keep this layout, no unwrapping
        assert t.extractfile("data/a.txt").read() == b"abc"
    check_archive(packed)


def test_folder_bounded_and_paths_checked() -> None:
    with pytest.raises(ArchiveError, match="more than the limit"):
        asyncio.run(pack_folder([Upload("f/a", b"x" * 600), Upload("f/b", b"x" * 600)], 1024))
    with pytest.raises(ArchiveError, match="outside"):
        asyncio.run(pack_folder([Upload("../../etc/passwd", b"x")], 1024))
    with pytest.raises(ArchiveError, match="bad file name"):
        asyncio.run(pack_folder([Upload("a\\b", b"x")], 1024))
