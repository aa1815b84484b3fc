"""Colab adapter (manual): writes a notebook the user runs in Colab; the state comes from a status file reported by hand.

Consumer Colab has no API: until a status is reported, status() answers UNKNOWN and the scheduler keeps waiting.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import (
    LaunchSpec,
    LogChunk,
    Provider,
    ProviderCapabilities,
    ProviderError,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.http import Settings

_REPORTABLE = {s.value: s for s in RunState if s is not RunState.UNKNOWN}
LOG_CHUNK_BYTES = 1 << 20


def _cell(kind: str, source: str) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "metadata": {}, "source": source.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


class ColabProvider(Provider):
    """A notebook per attempt under <work_dir>/colab (or setting notebook_dir). The user opens it in Colab, runs all
    cells, and drops the downloaded <run>.status.json (and logs) into the same folder, or the core calls report()."""

    name = "colab"
    capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=False, manual=True)

    def __init__(self, settings: Mapping[str, str] | None = None, *, secrets: SecretStore | None = None) -> None:
        self.settings = Settings(self.name, settings or {})
        self.notebook_dir = self.settings.str("notebook_dir")

    @classmethod
    def from_settings(cls, settings: Mapping[str, str], *, secrets: SecretStore | None = None) -> Provider:
        """Build the adapter; Colab needs no credentials (the user runs the notebook in their own account)."""
        return cls(settings, secrets=secrets)

    def credentials_present(self) -> bool:
        """Always true: nothing to configure."""
        return True

    def credentials_hint(self) -> str:
        """No credentials: the user runs the notebook."""
        return "none (manual provider: the user runs the notebook)"

    def folder(self, spec: LaunchSpec) -> Path:
        """Where the attempt's notebook, status file and logs live."""
        return Path(self.notebook_dir).expanduser() if self.notebook_dir else spec.work_dir / "colab"

    def notebook(self, spec: LaunchSpec, status_name: str) -> dict[str, Any]:
        """The .ipynb (nbformat 4) that sets the env, runs the command, tees logs and writes the status file."""
        if not spec.command:
            raise ProviderError(self.name, K.INVALID, "command must not be empty")
        try:
            env = remote.job_env(spec)
        except ValueError as exc:
            raise ProviderError(self.name, K.INVALID, str(exc)) from None
        gpu = spec.offer.gpu_name or spec.offer.instance_type or "GPU"
        name = remote.run_name(spec)
        intro = (
            f"# Crucible job `{spec.job_id}`, attempt {spec.attempt}\n\n"
            f"1. Runtime > Change runtime type > **{gpu}**.\n"
            "2. Put the job's code in the working folder (upload it or `git clone` it in the first cell).\n"
            "3. Runtime > Run all. The last cell downloads "
            f"`{status_name}`, `{name}.stdout.log` and `{name}.stderr.log`.\n"
            "4. Move those files into the scheduler's folder for this attempt (printed by `crucible jobs get`).\n\n"
            "Until the status file arrives, the scheduler shows this attempt as UNKNOWN."
        )
        setup = (
            "import json, os\n"
            f"os.environ.update(json.loads({json.dumps(json.dumps(env))}))\n"
            f"WORKDIR = {json.dumps(str(spec.code_dir.name) if spec.code_dir else '.')}\n"
        )
        if spec.checkpoint_dir.startswith("/content/drive"):
            setup += "from google.colab import drive\ndrive.mount('/content/drive')\n"
        if spec.checkpoint_dir:
            setup += f"os.makedirs({json.dumps(spec.checkpoint_dir)}, exist_ok=True)\n"
        run = (
            "import subprocess, sys, time\n"
            f"ARGV = {json.dumps(list(spec.command))}\n"
            f"NAME = {json.dumps(name)}\n"
            f"STATUS = {json.dumps(status_name)}\n"
            f"MAX_S = {float(spec.max_duration_s) or None!r}\n"
            "def report(state, exit_code=None, message=''):\n"
            "    with open(STATUS, 'w') as f:\n"
            "        json.dump({'state': state, 'exit_code': exit_code, 'message': message,"
            " 'reported_unix_s': time.time()}, f)\n"
            "report('running')\n"
            "with open(NAME + '.stdout.log', 'wb') as out, open(NAME + '.stderr.log', 'wb') as err:\n"
            "    proc = subprocess.Popen(ARGV, cwd=WORKDIR, stdout=subprocess.PIPE, stderr=err)\n"
            "    for line in proc.stdout:\n"
            "        out.write(line); out.flush()\n"
            "        sys.stdout.write(line.decode(errors='replace'))\n"
            "    try:\n"
            "        rc = proc.wait(timeout=MAX_S)\n"
            "    except subprocess.TimeoutExpired:\n"
            "        proc.kill(); rc = proc.wait()\n"
            "report('succeeded' if rc == 0 else 'failed', rc)\n"
            "print('exit code', rc)\n"
        )
        download = (
            "try:\n"
            "    from google.colab import files\n"
            "except ImportError:\n"
            "    files = None\n"
            "if files is not None:\n"
            "    for path in (STATUS, NAME + '.stdout.log', NAME + '.stderr.log'):\n"
            "        files.download(path)\n"
        )
        return {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {
                "accelerator": "GPU",
                "colab": {"name": f"{name}.ipynb", "gpuType": gpu},
                "kernelspec": {"name": "python3", "display_name": "Python 3"},
                "language_info": {"name": "python"},
                "crucible": {"job_id": spec.job_id, "attempt": spec.attempt},
            },
            "cells": [_cell("markdown", intro), _cell("code", setup), _cell("code", run), _cell("code", download)],
        }

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """Write <run>.ipynb; the handle points at the status file the user reports into."""
        folder = self.folder(spec)
        name = remote.run_name(spec)
        status_name = f"{name}.status.json"
        document = self.notebook(spec, status_name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(folder / f"{name}.ipynb", json.dumps(document, indent=1))
        except OSError as exc:
            raise ProviderError(self.name, K.INVALID, f"cannot write the notebook into {folder}: {exc.strerror}") from None
        return RunHandle(
            self.name,
            name,
            {"folder": str(folder), "notebook": str(folder / f"{name}.ipynb"), "status_file": str(folder / status_name)},
        )

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """The attempt's notebook, if it was written (re-attachment after a crash)."""
        folder, name = self.folder(spec), remote.run_name(spec)
        if not (folder / f"{name}.ipynb").exists():
            return None
        return RunHandle(
            self.name,
            name,
            {
                "folder": str(folder),
                "notebook": str(folder / f"{name}.ipynb"),
                "status_file": str(folder / f"{name}.status.json"),
            },
        )

    @staticmethod
    def _status_path(handle: RunHandle) -> Path:
        return Path(handle.data["status_file"])

    async def status(self, handle: RunHandle) -> RunStatus:
        """The reported state; UNKNOWN until a status file exists (a malformed one is MALFORMED_RESPONSE)."""
        path = self._status_path(handle)
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return RunStatus(
                RunState.UNKNOWN, message=f"waiting for the user to run {handle.data.get('notebook')} and report into {path}"
            )
        except OSError as exc:
            raise ProviderError(self.name, K.TRANSIENT, f"cannot read {path}: {exc.strerror}") from None
        try:
            report = json.loads(raw)
            state = _REPORTABLE[report["state"]]
            exit_code = report.get("exit_code")
            if exit_code is not None and not isinstance(exit_code, int):
                raise TypeError("exit_code")
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(
                self.name,
                K.MALFORMED_RESPONSE,
                f'status file {path} must be {{"state": one of {sorted(_REPORTABLE)}, '
                f'"exit_code": int|null}} ({type(exc).__name__})',
            ) from None
        return RunStatus(state, exit_code=exit_code, message=str(report.get("message", ""))[:500])

    def report(self, handle: RunHandle, state: RunState, exit_code: int | None = None, message: str = "") -> None:
        """Record a state reported by hand (CLI or API) exactly as the notebook would."""
        if state is RunState.UNKNOWN:
            raise ValueError("state: UNKNOWN cannot be reported")
        if exit_code is not None and not isinstance(exit_code, int):
            raise ValueError("exit_code: must be an integer or None")
        import time

        _write_atomic(
            self._status_path(handle),
            json.dumps({"state": state.value, "exit_code": exit_code, "message": message, "reported_unix_s": time.time()}),
        )

    async def cancel(self, handle: RunHandle) -> None:
        """Marks the attempt cancelled unless a terminal state was reported; the user must stop the runtime."""
        current = await self.status(handle) if self._status_path(handle).exists() else None
        if current is None or not current.state.terminal:
            self.report(handle, RunState.CANCELLED, message="cancelled in the scheduler; stop the Colab runtime by hand")

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """Bytes of <run>.<stream>.log once the user has put it into the folder; empty before."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, got {stream!r}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        path = Path(handle.data["folder"]) / f"{handle.ref}.{stream}.log"
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(LOG_CHUNK_BYTES)
        except FileNotFoundError:
            data = b""
        return LogChunk(stream, offset, data, offset + len(data))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
