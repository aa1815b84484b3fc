"""Console downloads are relayed from the scheduler's DownloadArtifact stream: no temp copy, first byte early.

A real scheduler runs a local job that writes a 400 MiB artifact; the console (its own process, TMPDIR watched)
must start answering before the scheduler has read the file, keep nothing on disk, and stop when the browser goes.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crucible.clients.mesh import Mesh
from crucible.console.cli import ConsoleProcess
from crucible.mesh import MeshLauncher
from tests.conftest import free_port_block

pytestmark = pytest.mark.slow

SIZE = 400 * 2**20
WRITE_BIG = (
    "import hashlib\n"
    "h = hashlib.sha256()\n"
    "with open('big.bin', 'wb') as f:\n"
    f"    for i in range({SIZE // 2**20}):\n"
    "        block = (i.to_bytes(4, 'big') * 262144)\n"
    "        h.update(block)\n"
    "        f.write(block)\n"
    "print(h.hexdigest(), flush=True)\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rchar(pid: int) -> int:
    """Bytes the process has read through read-like system calls so far (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/PID/io")


def _peak_rss(pid: int) -> int:
    """The most resident memory the process has used so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _open_on(pid: int, name: str) -> bool:
    """Whether the process holds a file named `name` open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if fd.readlink().name == name:
                return True
        except OSError:
            continue
    return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("console-download")
    base = free_port_block(5)
    mesh = MeshLauncher(
        ["scheduler"],
        ports={"scheduler": base + 3},
        log_dir=work / "logs",
        env={"CRUCIBLE_SCHEDULER_STATE_DIR": str(work / "scheduler")},
        extra_args={"scheduler": ["--poll-interval-s", "0.3"]},
    )
    console_tmp = work / "console-tmp"
    console_tmp.mkdir()
    mesh.start()
    console = ConsoleProcess(
        "127.0.0.1",
        _free_port(),
        {"scheduler": mesh.address("scheduler")},
        work / "logs",
        env={"TMPDIR": str(console_tmp), "TEMP": str(console_tmp), "TMP": str(console_tmp)},
    )
    try:
        asyncio.run(mesh.wait_ready(timeout=120))
        console.start()
        asyncio.run(console.wait_ready(timeout=60))
        yield {"url": console.url.rstrip("/"), "mesh": mesh, "base": base, "console_tmp": console_tmp, "console": console}
    finally:
        console.stop()
        mesh.stop()


@pytest.fixture(scope="module")
def big(stack: dict[str, Any]) -> tuple[str, str]:
    """A finished local job whose working folder holds big.bin; returns (job id, the sha256 the job printed)."""

    async def run() -> tuple[str, str]:
        async with Mesh.local(stack["base"]) as mesh:
            job = await mesh.scheduler.create_job(
                {
                    "command": [sys.executable, "-c", WRITE_BIG],
                    "provider_policy": "PROVIDER_POLICY_EXPLICIT",
                    "providers": ["local"],
                }
            )
            async for snapshot in mesh.scheduler.watch_job(job.job_id, timeout=300):
                state = snapshot.state
            assert state == "succeeded", state
            text = "".join([c.text async for c in mesh.scheduler.logs(job.job_id, timeout=60) if c.stream == "stdout"])
            return job.job_id, text.strip().splitlines()[-1]

    return asyncio.run(run())


def test_download_is_relayed_without_a_temp_copy(stack: dict[str, Any], big: tuple[str, str]) -> None:
    job_id, expected = big
    scheduler_pid = stack["mesh"].processes["scheduler"].pid
    url = f"{stack['url']}/api/jobs/{job_id}/download?path=big.bin"
    read_before = _rchar(scheduler_pid)
    started = time.monotonic()
    with httpx.Client(timeout=120) as http, http.stream("GET", url) as response:
        assert response.status_code == 200, response.read()[:500]
        assert int(response.headers["content-length"]) == SIZE
        assert response.headers["content-disposition"] == 'attachment; filename="big.bin"'
        chunks = response.iter_raw(2**20)
        first = next(chunks)
        first_byte_s = time.monotonic() - started
        time.sleep(1.0)  # the browser reads slowly: the relay must wait for it, not read ahead to the end
        read_while_paused = _rchar(scheduler_pid) - read_before
        on_disk = _files_under(stack["console_tmp"])
        digest = hashlib.sha256(first)
        total = len(first)
        for chunk in chunks:
            digest.update(chunk)
            total += len(chunk)
    whole_s = time.monotonic() - started
    assert stack["console"].process is not None
    peak = _peak_rss(stack["console"].process.pid)
    print(
        f"first byte after {first_byte_s:.3f} s, whole {SIZE >> 20} MiB after {whole_s:.2f} s; "
        f"scheduler read {read_while_paused >> 20} MiB while the reader paused; console peak RSS {peak >> 20} MiB"
    )
    assert not on_disk, f"the console wrote a temp copy: {on_disk}"
    assert read_while_paused < SIZE // 4, f"the scheduler read {read_while_paused} bytes before the browser asked for them"
    assert total == SIZE and digest.hexdigest() == expected
    assert peak < SIZE // 2, f"the console held {peak} bytes: the relay buffers instead of streaming"


def test_download_stops_when_the_browser_goes(stack: dict[str, Any], big: tuple[str, str]) -> None:
    job_id = big[0]
    scheduler_pid = stack["mesh"].processes["scheduler"].pid
    url = f"{stack['url']}/api/jobs/{job_id}/download?path=big.bin"
    with httpx.Client(timeout=120) as http, http.stream("GET", url) as response:
        assert response.status_code == 200
        next(response.iter_raw(2**20))
        assert _open_on(scheduler_pid, "big.bin")
    deadline = time.monotonic() + 15
    while _open_on(scheduler_pid, "big.bin") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _open_on(scheduler_pid, "big.bin"), "the scheduler kept sending after the browser went away"
    missing = httpx.get(f"{stack['url']}/api/jobs/{job_id}/download?path=nosuch.bin", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
