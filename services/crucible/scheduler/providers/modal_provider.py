"""Modal adapter: each attempt is a Modal Sandbox running the job's argv, with live stdout/stderr and its exit code.

The `modal` SDK (gRPC) is imported lazily; tests inject a fake module at the SDK boundary (tests/fakes/modal_sdk.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import sys
import threading
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
from crucible.scheduler.providers.credentials import SecretStore, summary
from crucible.scheduler.providers.http import LaunchPreview, Settings

log = logging.getLogger(__name__)

CODE_MOUNT = "/root/code"
MAX_TIMEOUT_S = 24 * 3600  # Modal's longest Sandbox timeout
READ_LIMIT = 1 << 20  # bytes returned by one read_logs call
DRAIN_TIMEOUT_S = 30.0  # how long status() waits for the last log bytes after the Sandbox ended
TIMEOUT_EXIT, TERMINATED_EXIT = 124, 137  # Modal's returncode for a Sandbox past its timeout / terminated


@dataclasses.dataclass
class _Pump:
    """Copies one Sandbox stream into a local file as it arrives (a thread: the SDK's stream reader blocks)."""

    path: Path
    thread: threading.Thread | None = None
    error: str = ""

    @property
    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()


class ModalProvider(Provider):
    """Modal Sandboxes. Settings: app_name (the App holding every attempt's Sandbox), image (default when the job has
    none), add_python (Python version added to registry images), default_timeout_s, volume_prefix (checkpoint Volumes,
    one per job). Credentials: MODAL_TOKEN_ID/MODAL_TOKEN_SECRET (env or secrets file) or the SDK's own ~/.modal.toml."""

    name = "modal"
    capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=False)

    def __init__(self, settings: Mapping[str, str] | None = None, *, secrets: SecretStore | None = None, sdk: Any = None) -> None:
        s = self.settings = Settings(self.name, settings or {})
        self.secrets = secrets if secrets is not None else SecretStore(path=s.str("secrets_file") or None)
        self.app = s.str("app_name", "crucible")
        self.image = s.str("image")
        self.add_python = s.str("add_python", f"{sys.version_info.major}.{sys.version_info.minor}")
        self.default_timeout_s = min(s.int("default_timeout_s", MAX_TIMEOUT_S, minimum=10), MAX_TIMEOUT_S)
        self.volume_prefix = s.str("volume_prefix", "crucible-ckpt")
        self._token_id = self.secrets.get(self.name, "token_id")
        self._token_secret = self.secrets.get(self.name, "token_secret")
        self._sdk = sdk
        self._client: Any = None
        self._pumps: dict[tuple[str, str], _Pump] = {}
        self._pumps_lock = threading.Lock()
        self._cancelled: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Mapping[str, str], *, secrets: SecretStore | None = None, sdk: Any = None) -> Provider:
        """Build the adapter; the modal SDK is imported on first use (or `sdk` injected, for tests)."""
        return cls(settings, secrets=secrets, sdk=sdk)

    def __repr__(self) -> str:
        return f"ModalProvider(credentials={'set' if self.credentials_present() else 'missing'})"

    def credentials_present(self) -> bool:
        """Whether a Modal token pair is configured here, or the SDK's own config file (~/.modal.toml) exists."""
        if self._token_id is not None and self._token_secret is not None:
            return True
        return Path(os.environ.get("MODAL_CONFIG_PATH", "~/.modal.toml")).expanduser().is_file()

    def credentials_hint(self) -> str:
        """Where credentials are looked for."""
        return (
            f"{self.secrets.hint(self.name, 'token_id')} and {self.secrets.hint(self.name, 'token_secret')}, "
            "or ~/.modal.toml (modal token set)"
        )

    def error(self, kind: K, message: str) -> ProviderError:
        """A ProviderError whose message is scrubbed of credentials (in any spelling) and then bounded."""
        return ProviderError(self.name, kind, summary(message, self.secrets.known_values(), 600))

    def sdk(self) -> Any:
        """The modal module (imported on first use) with a clear error when it is not installed."""
        if self._sdk is None:
            try:
                self._sdk = importlib.import_module("modal")
            except ImportError:
                raise self.error(K.INVALID, "the `modal` package is not installed: pip install modal") from None
        return self._sdk

    def _sdk_client(self) -> Any:
        if self._client is None and self._token_id is not None and self._token_secret is not None:
            self._client = self.sdk().Client.from_credentials(self._token_id.reveal(), self._token_secret.reveal())
        return self._client

    def _sdk_error(self, exc: Exception, what: str) -> ProviderError:
        kind_name = type(exc).__name__
        if "Auth" in kind_name:
            kind = K.AUTH
        elif "NotFound" in kind_name:
            kind = K.NOT_FOUND
        elif "ResourceExhausted" in kind_name or "Quota" in kind_name:
            kind = K.QUOTA
        elif "Invalid" in kind_name or isinstance(exc, (ValueError, TypeError)):
            kind = K.INVALID
        else:
            kind = K.TRANSIENT  # connection and server errors of the gRPC transport
        return self.error(kind, f"{what}: {kind_name}: {exc}")

    def _gpu(self, spec: LaunchSpec) -> str | None:
        if not spec.offer.gpu_name and spec.offer.gpu_count <= 0:
            return None
        name = spec.offer.gpu_name or spec.offer.instance_type
        return f"{name}:{spec.offer.gpu_count}" if spec.offer.gpu_count > 1 else name

    def _timeout(self, spec: LaunchSpec) -> int:
        wanted = int(spec.max_duration_s + 0.999) if spec.max_duration_s > 0 else self.default_timeout_s
        if wanted > MAX_TIMEOUT_S:
            log.warning(
                "modal: %s attempt %s wants %ss; Modal stops a Sandbox after %ss",
                spec.job_id,
                spec.attempt,
                wanted,
                MAX_TIMEOUT_S,
            )
        return min(wanted, MAX_TIMEOUT_S)

    def _launch(self, spec: LaunchSpec) -> str:
        """Blocking part of submit (runs in a thread): look the App up, build the image, create the Sandbox."""
        modal = self.sdk()
        client = self._sdk_client()
        image_name = spec.container_image or self.image
        image = (
            modal.Image.from_registry(image_name, add_python=self.add_python)
            if image_name
            else modal.Image.debian_slim(python_version=self.add_python)
        )
        workdir = None
        if spec.code_dir is not None:
            image = image.add_local_dir(str(spec.code_dir), remote_path=CODE_MOUNT)
            workdir = CODE_MOUNT
        volumes = {}
        if spec.checkpoint_dir:
            volume_name = f"{self.volume_prefix}-{remote.job_slug(spec.job_id)}"[:60]
            volumes[spec.checkpoint_dir] = modal.Volume.from_name(volume_name, create_if_missing=True, client=client)
        app = modal.App.lookup(self.app, create_if_missing=True, client=client)
        sandbox = modal.Sandbox.create(
            *spec.command,
            app=app,
            name=remote.run_name(spec),
            image=image,
            env=remote.job_env(spec),
            timeout=self._timeout(spec),
            workdir=workdir,
            gpu=self._gpu(spec),
            volumes=volumes,
            client=client,
        )
        return str(sandbox.object_id)

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """The SDK calls submit() makes (Modal's transport is gRPC, so these are calls, not HTTP requests)."""
        problems = [] if spec.command else ["command must not be empty"]
        env: dict[str, str] = {}
        try:
            env = remote.job_env(spec)
        except ValueError as exc:
            problems.append(str(exc))
        image_name = spec.container_image or self.image
        image: dict[str, Any] = (
            {"from_registry": image_name, "add_python": self.add_python}
            if image_name
            else {"debian_slim": {"python_version": self.add_python}}
        )
        if spec.code_dir is not None:
            image["add_local_dir"] = {"local_path": str(spec.code_dir), "remote_path": CODE_MOUNT}
        volumes = (
            {spec.checkpoint_dir: f"Volume.from_name({self.volume_prefix}-{remote.job_slug(spec.job_id)})"[:80]}
            if spec.checkpoint_dir
            else {}
        )
        call = {
            "args": list(spec.command),
            "app": f"App.lookup({self.app!r}, create_if_missing=True)",
            "name": remote.run_name(spec),
            "image": image,
            "env": env,
            "timeout": self._timeout(spec),
            "workdir": CODE_MOUNT if spec.code_dir is not None else None,
            "gpu": self._gpu(spec),
            "volumes": volumes,
        }
        token = "***" if self._token_id is not None and self._token_secret is not None else "<~/.modal.toml>"
        request = {
            "method": "modal.Sandbox.create",
            "url": "grpc: api.modal.com (modal SDK)",
            "headers": {"token": token},
            "json": call,
        }
        return LaunchPreview(self.name, (request,), tuple(problems))

    def _data(self, spec: LaunchSpec) -> dict[str, Any]:
        return {"app": self.app, "name": remote.run_name(spec), "log_dir": str(Path(spec.work_dir) / "modal-logs")}

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """Sandbox.create(*argv, app=..., name=crucible-<job>-<attempt>, ...); the handle is the Sandbox id (sb-...)."""
        if not spec.command:
            raise self.error(K.INVALID, "command must not be empty")
        try:
            remote.job_env(spec)
        except ValueError as exc:
            raise self.error(K.INVALID, str(exc)) from None
        self.sdk()
        try:
            sandbox_id = await asyncio.to_thread(self._launch, spec)
        except ProviderError:
            raise
        except Exception as exc:
            if "AlreadyExists" in type(exc).__name__:  # the attempt's Sandbox runs already (a retried submit): adopt it
                found = await self.find(spec)
                if found is not None:
                    return found
            raise self._sdk_error(exc, "Sandbox.create") from None
        if not sandbox_id.startswith("sb-"):
            raise self.error(K.MALFORMED_RESPONSE, f"Sandbox.create returned id {sandbox_id!r}")
        handle = RunHandle(self.name, sandbox_id, self._data(spec))
        self._start_pumps(handle)
        return handle

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """Sandbox.from_name(app, crucible-<job>-<attempt>), finished ones included (re-attachment after a crash)."""

        def lookup() -> str | None:
            try:
                sandbox = self.sdk().Sandbox.from_name(
                    self.app, remote.run_name(spec), include_terminated=True, client=self._sdk_client()
                )
            except Exception as exc:
                if "NotFound" in type(exc).__name__:
                    return None
                raise self._sdk_error(exc, "Sandbox.from_name") from None
            return str(sandbox.object_id)

        sandbox_id = await asyncio.to_thread(lookup)
        return RunHandle(self.name, sandbox_id, self._data(spec)) if sandbox_id else None

    def _sandbox(self, handle: RunHandle) -> Any:
        return self.sdk().Sandbox.from_id(handle.ref, client=self._sdk_client())

    # ---------------------------------------------------------------------------------------------- live output

    def _log_path(self, handle: RunHandle, stream: str) -> Path:
        folder = Path(str(handle.data.get("log_dir") or "modal-logs"))
        return folder / f"{handle.data.get('name') or handle.ref}.{stream}.log"

    def _start_pumps(self, handle: RunHandle) -> dict[str, _Pump]:
        """One copying thread per stream of the Sandbox, started once per process (again after a restart: the
        Sandbox's streams are read from their beginning and only what the local files lack is appended)."""
        pumps = {}
        with self._pumps_lock:
            for stream in ("stdout", "stderr"):
                key = (handle.ref, stream)
                if key not in self._pumps:
                    pump = _Pump(self._log_path(handle, stream))
                    pump.thread = threading.Thread(
                        target=self._copy, args=(handle, stream, pump), daemon=True, name=f"modal-{stream}-{handle.ref}"
                    )
                    self._pumps[key] = pump
                    pump.thread.start()
                pumps[stream] = self._pumps[key]
        return pumps

    def _copy(self, handle: RunHandle, stream: str, pump: _Pump) -> None:
        try:
            pump.path.parent.mkdir(parents=True, exist_ok=True)
            reader = getattr(self._sandbox(handle), stream)
            # After a restart the stream is read again from its beginning: the bytes the file already holds are
            # skipped and only the rest appended, so a reader never sees the file shrink (a truncating rewrite made a
            # concurrent read at an earlier offset come back empty, which ends a log drain early).
            have = pump.path.stat().st_size if pump.path.exists() else 0
            seen = 0
            with open(pump.path, "ab") as out:
                for chunk in reader:
                    data = chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
                    start, seen = max(0, have - seen), seen + len(data)
                    if start < len(data):
                        out.write(data[start:])
                        out.flush()
        except Exception as exc:
            pump.error = self.secrets.scrub(f"{type(exc).__name__}: {exc}")[:300]
            log.warning("modal: %s of %s stopped: %s", stream, handle.ref, pump.error)

    def _drain(self, handle: RunHandle) -> str:
        """Wait (bounded) until both streams reached their end; '' when they did, else why not."""
        problems = []
        for stream, pump in self._start_pumps(handle).items():
            if pump.thread is not None:
                pump.thread.join(DRAIN_TIMEOUT_S)
            if not pump.done:
                problems.append(f"{stream} still streaming after {DRAIN_TIMEOUT_S:.0f}s")
            elif pump.error:
                problems.append(f"{stream} stream failed ({pump.error})")
        return "; ".join(problems)

    # ---------------------------------------------------------------------------------------------- polling

    def _poll(self, handle: RunHandle) -> RunStatus:
        code = self._sandbox(handle).poll()
        if code is None:
            self._start_pumps(handle)
            return RunStatus(RunState.RUNNING)
        incomplete = self._drain(handle)  # the last output lines reach the log files before the end is reported
        note = f" (logs may be incomplete: {incomplete})" if incomplete else ""
        if handle.ref in self._cancelled:
            return RunStatus(RunState.CANCELLED, exit_code=code, message="terminated by the scheduler" + note)
        if code == TIMEOUT_EXIT:
            return RunStatus(RunState.FAILED, exit_code=code, message="stopped at the Sandbox timeout (max_duration_s)" + note)
        if code == 0:
            return RunStatus(RunState.SUCCEEDED, exit_code=0, message=note.strip())
        why = "terminated (killed, out of memory, or stopped outside the scheduler)" if code == TERMINATED_EXIT else ""
        return RunStatus(RunState.FAILED, exit_code=code, message=(why + note).strip())

    async def status(self, handle: RunHandle) -> RunStatus:
        """Sandbox.from_id(id).poll(): None -> RUNNING; an exit code -> SUCCEEDED/FAILED (124: past its timeout)."""
        try:
            return await asyncio.to_thread(self._poll, handle)
        except ProviderError:
            raise
        except Exception as exc:
            raise self._sdk_error(exc, "poll") from None

    async def cancel(self, handle: RunHandle) -> None:
        """Sandbox.terminate(); a Sandbox Modal no longer knows counts as stopped."""
        self._cancelled.add(handle.ref)
        try:
            await asyncio.to_thread(lambda: self._sandbox(handle).terminate())
        except Exception as exc:
            err = self._sdk_error(exc, "terminate")
            if err.kind is not K.NOT_FOUND:
                raise err from None

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """Live: the bytes the Sandbox wrote to `stream` since `offset` (copied as they arrive into a local file)."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, got {stream!r}")
        path = self._start_pumps(handle)[stream].path

        def read() -> bytes:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    return f.read(READ_LIMIT)
            except FileNotFoundError:
                return b""

        data = await asyncio.to_thread(read)
        return LogChunk(stream, offset, data, offset + len(data))
