"""The `local` provider: each attempt is a real subprocess on this host, supervised by a small wrapper process.

The wrapper (the scheduler's user, outside the sandbox) runs the command in a bubblewrap sandbox (providers/sandbox.py)
in its working directory, writes stdout/stderr to files, enforces the time limit and records the exit status in
`exit.json`, so a restarted scheduler can re-attach or read the outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from crucible.scheduler.objects import nofollow, workdir
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
from crucible.scheduler.providers.registry import ProviderUnavailable
from crucible.scheduler.providers.sandbox import (
    DEFAULT_UID_RANGE,
    PythonEnv,
    Sandbox,
    SandboxError,
    build_sandbox,
    describe_python,
    file_url_folder,
    parse_uid_range,
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


def _read_from(path: Path, offset: int) -> bytes:
    """Up to READ_LIMIT bytes of a log file from `offset` (none when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            return os.pread(f.fileno(), READ_LIMIT, offset)
    except FileNotFoundError:
        return b""


def _job_folder(folder: Path, uid: int | None, parts: tuple[str, ...] = ()) -> None:
    """Make `folder` (and folder/parts...) without following a link, and when `uid` is given hand all of it to the
    job's uid by descriptor (nofollow.chown_tree): a job may have planted links in a folder it wrote in an earlier
    attempt, and the scheduler (root) must neither create, chown nor bind anything through them. The folder's parent
    is the scheduler's own; a link at the folder or on the way to parts raises nofollow.UnsafePath."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    parent = nofollow.open_dir(folder.parent)
    try:
        os.close(nofollow.open_dirs(parent, [folder.name, *parts], create=True))
        if uid is not None:
            nofollow.chown_tree(parent, folder.name, uid, uid)
    finally:
        os.close(parent)


def _json_list(text: str) -> tuple[str, ...]:
    """A setting holding a JSON list of strings (paths may contain commas); '' is empty."""
    if not text:
        return ()
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a JSON list of strings, got {text[:80]!r}")
    return tuple(value)


class LocalProvider(Provider):
    """Runs attempts as subprocesses of this host, each in a bubblewrap sandbox (providers/sandbox.py) unless built
    with `sandbox=None` (the --unsafe-local-jobs choice). Settings (strings): `inherit_env` (comma list), `grace_s`,
    `python` (the Python environment jobs run with; empty: the scheduler's), `uid_range`, `read_only` and `hidden`
    (JSON lists of paths), `store_dir` (a file:// store's folder: a job's own folders there are writable),
    `model_cache` (Crucible's prepared models, read-only; the job's CRUCIBLE_CACHE_DIR) and `unsafe`."""

    name = "local"
    capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=True, manual=False)

    def __init__(
        self,
        *,
        inherit_env: tuple[str, ...] = DEFAULT_INHERIT,
        grace_s: float = 10.0,
        python: PythonEnv | None = None,
        sandbox: Sandbox | None = None,
        store_dir: str = "",
        model_cache: str = "",
    ) -> None:
        self.inherit_env = inherit_env
        self.model_cache = model_cache
        self.grace_s = grace_s
        self.python = python or (sandbox.python if sandbox else None)
        self.sandbox = sandbox
        self.store_dir = store_dir
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._uids: dict[str, int] = {}  # handle ref -> uid of a running sandboxed attempt
        self._reserved: set[int] = set()  # uids of attempts being launched

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> LocalProvider:
        """Build from string settings; unknown keys are ignored. ProviderUnavailable when the sandbox cannot be had
        and `unsafe` is not set (the reason says why and what to do)."""
        inherit = tuple(s.strip() for s in settings.get("inherit_env", ",".join(DEFAULT_INHERIT)).split(",") if s.strip())
        try:
            grace = float(settings.get("grace_s", "10"))
        except ValueError:
            raise ValueError(f"local.grace_s: expected a number, got {settings.get('grace_s')!r}") from None
        python = settings.get("python", "") or sys.executable
        unsafe = settings.get("unsafe", "").lower() in ("1", "true", "yes")
        store_dir = settings.get("store_dir", "")
        # Models prepared by `crucible models prepare` (public weights): read-only in the sandbox, CRUCIBLE_CACHE_DIR.
        model_cache = settings.get("model_cache", "")
        model_cache = model_cache if model_cache and os.path.isdir(os.path.join(model_cache, "models")) else ""
        try:
            if unsafe:
                env = describe_python(python)
                log.warning(
                    "local jobs run WITHOUT a sandbox as the scheduler's user (uid %d; --unsafe-local-jobs): they can "
                    "read and change everything the scheduler can, its state, store and secrets included",
                    os.geteuid(),
                )
                return cls(inherit_env=inherit, grace_s=grace, python=env, store_dir=store_dir, model_cache=model_cache)
            sandbox = build_sandbox(
                python,
                uid_range=parse_uid_range(settings.get("uid_range", "") or "-".join(map(str, DEFAULT_UID_RANGE))),
                read_only=(
                    *_json_list(settings.get("read_only", "")),
                    *([os.path.join(model_cache, "models")] if model_cache else []),
                ),
                hidden=(*_json_list(settings.get("hidden", "")), *([store_dir] if store_dir else [])),
            )
        except (SandboxError, ValueError) as exc:
            if unsafe:
                raise ProviderUnavailable(f"local jobs cannot run: {exc}") from None
            raise ProviderUnavailable(
                f"local jobs need a sandbox and none can be had here: {exc}. Start the scheduler with "
                "--unsafe-local-jobs to run them without one, as the scheduler's own user"
            ) from None
        log.info(
            "local jobs run sandboxed (bubblewrap %s) as a fresh uid of %d-%d with Python %s",
            sandbox.bwrap,
            *sandbox.uid_range,
            sandbox.python.executable,
        )
        return cls(inherit_env=inherit, grace_s=grace, sandbox=sandbox, store_dir=store_dir, model_cache=model_cache)

    def credentials_present(self) -> bool:
        """Local runs need no credentials."""
        return True

    def credentials_hint(self) -> str:
        """Nothing to configure; says whether jobs are sandboxed."""
        return "none needed" if self.sandbox else "none needed; jobs run unsandboxed (--unsafe-local-jobs)"

    @staticmethod
    def attempt_dir(spec: LaunchSpec) -> Path:
        """Where the wrapper keeps one attempt's logs, pid and exit files."""
        return spec.work_dir / "attempts" / str(spec.attempt)

    def _env(self, spec: LaunchSpec) -> dict[str, str]:
        """The job's environment: inherited host variables, the Python environment's PATH and VIRTUAL_ENV, then
        (sandboxed) a HOME and TMPDIR inside the sandbox, then the job's own variables."""
        env = {k: os.environ[k] for k in self.inherit_env if k in os.environ}
        if self.python is not None:
            env.update(self.python.job_env(env.get("PATH", "")))
        if self.sandbox is not None:  # the scheduler's HOME and TMPDIR are not in the job's view
            env.update({"HOME": "/tmp", "TMPDIR": "/tmp", "USER": "job", "LOGNAME": "job"})
        if self.model_cache:
            env["CRUCIBLE_CACHE_DIR"] = self.model_cache
        env.update(spec.env)
        return env

    def _store_folders(self, spec: LaunchSpec) -> list[Path]:
        """The job's own folders of a file:// store (CRUCIBLE_CHECKPOINT_URL, CRUCIBLE_ARTIFACT_URL), shown writable."""
        if not self.store_dir:
            return []
        found = []
        for name in ("CRUCIBLE_CHECKPOINT_URL", "CRUCIBLE_ARTIFACT_URL"):
            folder = file_url_folder(spec.env.get(name, ""), [os.path.join(self.store_dir, "jobs", spec.job_id)])
            if folder is not None:
                found.append(folder)
        return found

    def _prepare(self, spec: LaunchSpec, folder: Path, cwd: Path, uid: int | None) -> list[Path]:
        """Create the attempt's folders (in a thread); sandboxed as root, give the job's folders to its uid."""
        folder.mkdir(parents=True, exist_ok=True)
        owner = uid if uid is not None and self.sandbox is not None and self.sandbox.as_root else None
        checkpoints = (
            tuple(part for part in Path(spec.checkpoint_dir).parts if part not in ("", ".")) if spec.checkpoint_dir else ()
        )
        writable = self._store_folders(spec)
        for path, parts in ((cwd, checkpoints), *((path, ()) for path in writable)):
            try:
                _job_folder(path, owner, parts)
            except nofollow.UnsafePath as exc:  # planted by the job: never bound, created through or handed over
                raise ProviderError(self.name, ProviderErrorKind.INVALID, f"the job's folder {path}: {exc}") from None
        return writable

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """Start the wrapper in a new session; returns once the process exists and its identity is recorded."""
        folder = self.attempt_dir(spec)
        cwd = spec.code_dir or (spec.work_dir / "work")
        if not spec.command:
            raise ProviderError(self.name, ProviderErrorKind.INVALID, "empty command")
        uid = None
        while self.sandbox is not None and uid is None:
            try:
                uid = await asyncio.to_thread(self.sandbox.pick_uid, [*self._uids.values(), *self._reserved])
            except SandboxError as exc:  # every uid of the range in use
                raise ProviderError(self.name, ProviderErrorKind.CAPACITY, str(exc)) from None
            uid = None if uid in self._reserved else uid  # (picked by a launch running at the same time)
        if uid is not None:
            self._reserved.add(uid)
        try:
            return await self._start(spec, folder, cwd, uid)
        finally:
            self._reserved.discard(uid)

    async def _start(self, spec: LaunchSpec, folder: Path, cwd: Path, uid: int | None) -> RunHandle:
        try:
            writable = await asyncio.to_thread(self._prepare, spec, folder, cwd, uid)
        except OSError as exc:
            raise ProviderError(self.name, ProviderErrorKind.TRANSIENT, f"cannot prepare {folder}: {exc.strerror}") from None
        argv = [
            sys.executable,
            "-I",  # the job's PYTHON* variables do not reach the wrapper
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
        command = list(spec.command)
        if self.sandbox is not None and uid is not None:
            argv.append("--sandboxed")
            command = self.sandbox.command(command, uid=uid, cwd=cwd, writable=writable)
        argv += ["--", *command]
        try:
            with open(folder / "wrapper.log", "ab") as wrapper_log:
                proc = subprocess.Popen(
                    argv,
                    env=self._env(spec),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=wrapper_log,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise ProviderError(self.name, ProviderErrorKind.TRANSIENT, f"cannot start the wrapper: {exc.strerror}") from None
        ticks = process_start_ticks(proc.pid)
        data: dict[str, Any] = {"pid": proc.pid, "start_ticks": ticks, "attempt_dir": str(folder), "cwd": str(cwd)}
        if uid is not None:
            data["uid"] = uid
            self._uids[str(proc.pid)] = uid
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
        if data.get("uid") is not None:
            self._uids[str(data["pid"])] = int(data["uid"])
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
            if handle.data.get("uid") is not None:  # (re-attached after a restart: its uid stays taken)
                self._uids[handle.ref] = int(handle.data["uid"])
            return RunStatus(RunState.RUNNING)
        self._uids.pop(handle.ref, None)
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
        found = await asyncio.to_thread(workdir.scan, Path(handle.data["cwd"]), {})
        return [ArtifactInfo(p, size, mtime) for p, (size, mtime) in sorted(found.items())]

    async def open_artifact(self, handle: RunHandle, path: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The file's bytes in chunks, opened without following any link (see crucible.scheduler.objects.workdir)."""
        opened = await asyncio.to_thread(workdir.open_file, Path(handle.data["cwd"]), path)
        if opened is None:
            raise ProviderError(self.name, ProviderErrorKind.NOT_FOUND, f"no artifact {path}")
        fd, _st = opened
        try:
            pos = 0
            while chunk := await asyncio.to_thread(workdir.read_chunk, fd, pos, chunk_bytes):
                pos += len(chunk)
                yield chunk
        finally:
            os.close(fd)
