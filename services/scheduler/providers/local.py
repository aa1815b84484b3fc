"""The `local` provider: each attempt is a real subprocess on this host, supervised by a small wrapper process.

The wrapper runs the command in its own process group and working directory, writes stdout/stderr to files, enforces
the time limit and records the exit status in `exit.json`, so a restarted scheduler can re-attach or read the outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from crucible.scheduler.providers.base import (
    ArtifactInfo,
    LaunchSpec,
    LogChunk,
    Provider,
    ProviderCapabilities,
    ProviderError,
    ProviderErrorKind,
    RunHandle,
    RunState,
    RunStatus,
)

WRAPPER = Path(__file__).with_name("local_wrapper.py")
# Host variables a local job inherits (everything else, API keys and CRUCIBLE_* settings included, is withheld).
DEFAULT_INHERIT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "TZ", "VIRTUAL_ENV", "PYTHONPATH",
                   "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
READ_LIMIT = 1 << 20


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live, non-zombie process in clock ticks since boot (/proc/<pid>/stat field 22); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def _alive(pid: int, start_ticks: int | None) -> bool:
    """The same process (pid not reused) is still running."""
    if Path("/proc").is_dir():
        ticks = process_start_ticks(pid)
        return ticks is not None and (start_ticks is None or ticks == start_ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalProvider(Provider):
    """Runs attempts as subprocesses of this host. Settings: `inherit_env` (comma list), `grace_s`, `python`."""

    name = "local"
    capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=True, manual=False)

    def __init__(self, *, inherit_env: tuple[str, ...] = DEFAULT_INHERIT, grace_s: float = 10.0, python: str = "") -> None:
        self.inherit_env = inherit_env
        self.grace_s = grace_s
        self.python = python or sys.executable
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> LocalProvider:
        """Build from string settings; unknown keys are ignored."""
        inherit = tuple(s.strip() for s in settings.get("inherit_env", ",".join(DEFAULT_INHERIT)).split(",") if s.strip())
        try:
            grace = float(settings.get("grace_s", "10"))
        except ValueError:
            raise ValueError(f"local.grace_s: expected a number, got {settings.get('grace_s')!r}") from None
        return cls(inherit_env=inherit, grace_s=grace, python=settings.get("python", ""))

    def credentials_present(self) -> bool:
        """Local runs need no credentials."""
        return True

    def credentials_hint(self) -> str:
        """Nothing to configure."""
        return "none needed"

    @staticmethod
    def attempt_dir(spec: LaunchSpec) -> Path:
        """Where the wrapper keeps one attempt's logs, pid and exit files."""
        return spec.work_dir / "attempts" / str(spec.attempt)

    def _env(self, spec: LaunchSpec) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.inherit_env if k in os.environ}
        env.update(spec.env)
        return env

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """Start the wrapper in a new session; returns once the process exists and its identity is recorded."""
        folder = self.attempt_dir(spec)
        cwd = spec.code_dir or (spec.work_dir / "work")
        if not spec.command:
            raise ProviderError(self.name, ProviderErrorKind.INVALID, "empty command")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            cwd.mkdir(parents=True, exist_ok=True)
            if spec.checkpoint_dir:
                (cwd / spec.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProviderError(self.name, ProviderErrorKind.TRANSIENT, f"cannot prepare {folder}: {exc.strerror}") from None
        argv = [self.python, "-u", str(WRAPPER), "--attempt-dir", str(folder), "--cwd", str(cwd),
                "--max-duration-s", str(spec.max_duration_s), "--grace-s", str(self.grace_s), "--", *spec.command]
        try:
            with open(folder / "wrapper.log", "ab") as wrapper_log:
                proc = subprocess.Popen(argv, env=self._env(spec), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=wrapper_log, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise ProviderError(self.name, ProviderErrorKind.TRANSIENT, f"cannot start the wrapper: {exc.strerror}") from None
        ticks = process_start_ticks(proc.pid)
        data = {"pid": proc.pid, "start_ticks": ticks, "attempt_dir": str(folder), "cwd": str(cwd)}
        tmp = folder / "wrapper.json.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, folder / "wrapper.json")
        self._children[str(proc.pid)] = proc
        return RunHandle(self.name, str(proc.pid), data)

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """The attempt's handle from its wrapper.json, when the wrapper was started before a scheduler crash."""
        path = self.attempt_dir(spec) / "wrapper.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return RunHandle(self.name, str(data["pid"]), data)

    @staticmethod
    def _exit(folder: Path) -> dict[str, Any] | None:
        try:
            return json.loads((folder / "exit.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # being written (it is replaced atomically, so this is rare); poll again

    async def status(self, handle: RunHandle) -> RunStatus:
        """From exit.json when the attempt ended, else whether the wrapper process (same pid and start time) lives."""
        child = self._children.get(handle.ref)
        if child is not None and child.poll() is not None:
            self._children.pop(handle.ref, None)  # reaped: no zombie left behind
        folder = Path(handle.data["attempt_dir"])
        ended = self._exit(folder)
        if ended is None and _alive(int(handle.data["pid"]), handle.data.get("start_ticks")):
            return RunStatus(RunState.RUNNING)
        if ended is None:
            await asyncio.sleep(0.05)
            ended = self._exit(folder)  # the wrapper may have exited right after writing it
        if ended is None:
            return RunStatus(RunState.PREEMPTED, message="the attempt's supervisor process vanished without an exit status")
        code = int(ended["exit_code"])
        if ended.get("cancelled"):
            return RunStatus(RunState.CANCELLED, code, "stopped on request")
        if ended.get("timed_out"):
            return RunStatus(RunState.FAILED, code, "time limit reached")
        if code == 0:
            return RunStatus(RunState.SUCCEEDED, 0)
        if code < 0:
            return RunStatus(RunState.FAILED, code, f"killed by signal {signal.Signals(-code).name}" if -code in
                             signal.Signals._value2member_map_ else f"killed by signal {-code}")
        if ended.get("start_error"):
            return RunStatus(RunState.FAILED, code, f"could not start the command: {ended['start_error']}")
        return RunStatus(RunState.FAILED, code, f"exit status {code}")

    async def cancel(self, handle: RunHandle) -> None:
        """SIGTERM the wrapper (it stops the command's group with a grace period); kill the group if the wrapper is gone."""
        folder = Path(handle.data["attempt_dir"])
        if self._exit(folder) is not None:
            return
        pid = int(handle.data["pid"])
        if _alive(pid, handle.data.get("start_ticks")):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            return
        try:
            child = json.loads((folder / "child.json").read_text())
            os.killpg(int(child["pgid"]), signal.SIGKILL)
        except (OSError, ValueError, KeyError, ProcessLookupError):
            pass

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """Up to 1 MiB of the attempt's stdout or stderr file from `offset`."""
        path = Path(handle.data["attempt_dir"]) / ("stderr" if stream == "stderr" else "stdout")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(READ_LIMIT)
        except FileNotFoundError:
            data = b""
        return LogChunk(stream, offset, data, offset + len(data))

    async def list_artifacts(self, handle: RunHandle) -> list[ArtifactInfo]:
        """Every regular file under the attempt's working directory."""
        root = Path(handle.data["cwd"])
        out = []
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                st = path.stat()
                out.append(ArtifactInfo(path.relative_to(root).as_posix(), st.st_size, st.st_mtime))
        return out

    async def open_artifact(self, handle: RunHandle, path: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The file's bytes in chunks (the caller has checked `path` stays inside the working directory)."""
        full = Path(handle.data["cwd"]) / path
        try:
            f = open(full, "rb")
        except FileNotFoundError:
            raise ProviderError(self.name, ProviderErrorKind.NOT_FOUND, f"no artifact {path}") from None
        with f:
            while chunk := f.read(chunk_bytes):
                yield chunk
