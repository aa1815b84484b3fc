"""The `local` provider: each attempt is a real subprocess on this host, supervised by a small wrapper process.

The wrapper runs the command in its own process group and working directory, writes stdout/stderr to files, enforces
the time limit and records the exit status in `exit.json`, so a restarted scheduler can re-attach or read the outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from crucible.scheduler import artifacts
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

log = logging.getLogger(__name__)

WRAPPER = Path(__file__).with_name("local_wrapper.py")
# Host variables a local job inherits (everything else, API keys and CRUCIBLE_* settings included, is withheld).
DEFAULT_INHERIT = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)
READ_LIMIT = 1 << 20


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live, non-zombie process in clock ticks since boot (/proc/<pid>/stat field 22); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
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


@dataclasses.dataclass(frozen=True)
class JobUser:
    """The unprivileged account local jobs run as (the scheduler runs as root)."""

    name: str
    uid: int
    gid: int


def resolve_job_user(setting: str, python: str, state_dir: str) -> JobUser | None:
    """Whom local jobs run as: None means the scheduler's own user. ValueError when `setting` cannot be honoured.

    Empty `setting`: 'nobody' when the scheduler is root and nobody can run `python` and reach the jobs folder
    (checked by running it), else the scheduler's user with a warning. An explicit user is checked the same way and
    refused if it fails; 'root'/0 explicitly keeps jobs as root. Making the state and jobs folders traversable
    (0711) by others is part of the set-up; the database stays 0600.
    """
    root = os.geteuid() == 0
    if not setting and not root:
        return None
    wanted = setting or "nobody"
    try:
        entry = pwd.getpwuid(int(wanted)) if wanted.isdigit() else pwd.getpwnam(wanted)
    except (KeyError, ValueError):
        if not setting:
            log.warning("local jobs run as root: there is no 'nobody' user; set job_user")
            return None
        raise ValueError(f"job_user {wanted!r}: no such user") from None
    if entry.pw_uid == os.geteuid():
        return None
    if not root:
        raise ValueError(f"job_user {wanted!r} needs the scheduler to run as root (it runs as uid {os.geteuid()})")
    jobs = Path(state_dir) / "jobs" if state_dir else None
    if jobs is not None:
        jobs.mkdir(parents=True, exist_ok=True)
        for folder in (jobs.parent, jobs):
            os.chmod(folder, 0o711)  # others may pass through to their own job folder, not list or read
    # Automatic: the user must be able to run our Python (jobs usually do) and reach the jobs folder. Explicit: only
    # reach it (the operator chose the user; a command it cannot run fails with a clear start error).
    target = str(jobs) if jobs is not None else "/"
    probe = (
        [python, "-c", "import os, sys; os.chdir(sys.argv[1])", target]
        if not setting
        else ["/bin/sh", "-c", 'cd "$1"', "sh", target]
    )
    try:
        result = subprocess.run(
            probe,
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=[],
            cwd="/",
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin"},
        )
        why = (
            ""
            if result.returncode == 0
            else (result.stderr.decode(errors="replace").strip()[-300:] or f"exit status {result.returncode}")
        )
    except (OSError, subprocess.SubprocessError) as exc:
        why = str(exc)
    if why:
        text = f"user {entry.pw_name} cannot run {python} or reach {jobs}: {why}"
        if setting:
            raise ValueError(f"job_user: {text}")
        log.warning(
            "local jobs run as root and can read everything the scheduler can (its secrets file included): "
            "%s; set job_user to an account that can, or run the scheduler as a non-root user",
            text,
        )
        return None
    return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _read_from(path: Path, offset: int) -> bytes:
    """Up to READ_LIMIT bytes of a log file from `offset` (none when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            return os.pread(f.fileno(), READ_LIMIT, offset)
    except FileNotFoundError:
        return b""


def _give_to(folder: Path, user: JobUser) -> None:
    """Make the job's working directory the job user's (it writes checkpoints and artifacts there)."""
    os.chown(folder, user.uid, user.gid)
    for dirpath, dirs, names in os.walk(folder):
        for name in dirs + names:
            os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)


class LocalProvider(Provider):
    """Runs attempts as subprocesses of this host. Settings: `inherit_env` (comma list), `grace_s`, `python`,
    `job_user` (see resolve_job_user) and `state_dir` (the scheduler's, for the job user's access check)."""

    name = "local"
    capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=True, manual=False)

    def __init__(
        self,
        *,
        inherit_env: tuple[str, ...] = DEFAULT_INHERIT,
        grace_s: float = 10.0,
        python: str = "",
        job_user: JobUser | None = None,
    ) -> None:
        self.inherit_env = inherit_env
        self.grace_s = grace_s
        self.python = python or sys.executable
        self.job_user = job_user
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> LocalProvider:
        """Build from string settings; unknown keys are ignored."""
        inherit = tuple(s.strip() for s in settings.get("inherit_env", ",".join(DEFAULT_INHERIT)).split(",") if s.strip())
        try:
            grace = float(settings.get("grace_s", "10"))
        except ValueError:
            raise ValueError(f"local.grace_s: expected a number, got {settings.get('grace_s')!r}") from None
        python = settings.get("python", "") or sys.executable
        user = resolve_job_user(settings.get("job_user", ""), python, settings.get("state_dir", ""))
        log.info("local jobs run as %s", user.name if user else f"the scheduler's user (uid {os.geteuid()})")
        return cls(inherit_env=inherit, grace_s=grace, python=python, job_user=user)

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

    def _env(self, spec: LaunchSpec, cwd: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.inherit_env if k in os.environ}
        if self.job_user is not None:  # the scheduler's HOME is not the job's
            env.update({"HOME": str(cwd), "USER": self.job_user.name, "LOGNAME": self.job_user.name})
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
            if self.job_user is not None:
                os.chmod(spec.work_dir, 0o711)
                await asyncio.to_thread(_give_to, cwd, self.job_user)
        except OSError as exc:
            raise ProviderError(self.name, ProviderErrorKind.TRANSIENT, f"cannot prepare {folder}: {exc.strerror}") from None
        argv = [
            self.python,
            "-u",
            str(WRAPPER),
            "--attempt-dir",
            str(folder),
            "--cwd",
            str(cwd),
            "--max-duration-s",
            str(spec.max_duration_s),
            "--grace-s",
            str(self.grace_s),
            "--log-cap-bytes",
            str(max(0, spec.log_cap_bytes)),
        ]
        if self.job_user is not None:
            argv += ["--uid", str(self.job_user.uid), "--gid", str(self.job_user.gid)]
        argv += ["--", *spec.command]
        try:
            with open(folder / "wrapper.log", "ab") as wrapper_log:
                proc = subprocess.Popen(
                    argv,
                    env=self._env(spec, cwd),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=wrapper_log,
                    start_new_session=True,
                    close_fds=True,
                )
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
        extra: dict[str, Any] = {
            "end_time": float(ended["end_time"]) if ended.get("end_time") else None,
            "log_bytes_dropped": {k: int(v) for k, v in ended.get("log_bytes_dropped", {}).items()},
        }
        if ended.get("cancelled"):
            return RunStatus(RunState.CANCELLED, code, "stopped on request", **extra)
        if ended.get("timed_out"):
            return RunStatus(RunState.FAILED, code, "time limit reached", **extra)
        if code == 0:
            return RunStatus(RunState.SUCCEEDED, 0, **extra)
        if code < 0:
            return RunStatus(
                RunState.FAILED,
                code,
                f"killed by signal {signal.Signals(-code).name}"
                if -code in signal.Signals._value2member_map_
                else f"killed by signal {-code}",
                **extra,
            )
        if ended.get("start_error"):
            return RunStatus(RunState.FAILED, code, f"could not start the command: {ended['start_error']}", **extra)
        return RunStatus(RunState.FAILED, code, f"exit status {code}", **extra)

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
        data = await asyncio.to_thread(_read_from, path, offset)
        return LogChunk(stream, offset, data, offset + len(data))

    async def list_artifacts(self, handle: RunHandle) -> list[ArtifactInfo]:
        """Every servable file under the attempt's working directory (links and hard-linked files left out)."""
        found = await asyncio.to_thread(artifacts.scan, Path(handle.data["cwd"]), {})
        return [ArtifactInfo(p, size, mtime) for p, (size, mtime) in sorted(found.items())]

    async def open_artifact(self, handle: RunHandle, path: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The file's bytes in chunks, opened without following any link (see crucible.scheduler.artifacts)."""
        opened = await asyncio.to_thread(artifacts.open_file, Path(handle.data["cwd"]), path)
        if opened is None:
            raise ProviderError(self.name, ProviderErrorKind.NOT_FOUND, f"no artifact {path}")
        fd, _st = opened
        try:
            pos = 0
            while chunk := await asyncio.to_thread(artifacts.read_chunk, fd, pos, chunk_bytes):
                pos += len(chunk)
                yield chunk
        finally:
            os.close(fd)
