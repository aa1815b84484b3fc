"""Modal adapter: each attempt is a Function of a detached ephemeral App, spawned once and polled by FunctionCall id.

The `modal` SDK (gRPC) is imported lazily; tests inject a fake module at the SDK boundary.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib
import logging
import os
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import LaunchSpec
from crucible.scheduler.providers.base import LogChunk
from crucible.scheduler.providers.base import Provider
from crucible.scheduler.providers.base import ProviderCapabilities
from crucible.scheduler.providers.base import ProviderError
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.base import RunHandle
from crucible.scheduler.providers.base import RunState
from crucible.scheduler.providers.base import RunStatus
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.http import Settings

log = logging.getLogger(__name__)

CODE_MOUNT = "/root/code"
TAIL_BYTES = 64 * 1024


def _run_in_container(argv: list[str], env: dict[str, str], workdir: str, tail_bytes: int) -> dict[str, Any]:
    """Runs inside the Modal container: the command with its env; returns the exit code and the logs' last bytes.

    Only builtins and the standard library: it is pickled by value and must not import crucible.
    """
    import os
    import subprocess
    import tempfile

    full_env = dict(os.environ)
    full_env.update(env)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(argv, env=full_env, cwd=workdir or None, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                              check=False)
        tails = []
        for f in (out, err):
            size = f.seek(0, 2)
            f.seek(max(0, size - tail_bytes))
            tails.append((f.read(), size))
    return {"exit_code": proc.returncode, "stdout": tails[0][0], "stdout_size": tails[0][1], "stderr": tails[1][0],
            "stderr_size": tails[1][1]}


def _portable(fn: types.FunctionType) -> types.FunctionType:
    """A copy of `fn` that cloudpickle serialises by value (not importable by reference in the container)."""
    copy = types.FunctionType(fn.__code__, {"__builtins__": builtins}, "crucible_run", fn.__defaults__)
    copy.__module__ = "__main__"
    copy.__qualname__ = "crucible_run"
    return copy


class ModalProvider(Provider):
    """Modal functions. Settings: app_prefix, image (default when the job has none), add_python (Python version added
    to registry images), default_timeout_s, volume_prefix (checkpoint Volumes, one per job), environment.
    Credentials: MODAL_TOKEN_ID/MODAL_TOKEN_SECRET (env or secrets file) or the SDK's own ~/.modal.toml."""

    name = "modal"
    capabilities = ProviderCapabilities(spot=False, live_logs=False, artifacts=False)

    def __init__(self, settings: Mapping[str, str] | None = None, *, secrets: SecretStore | None = None,
                 sdk: Any = None) -> None:
        s = self.settings = Settings(self.name, settings or {})
        self.secrets = secrets if secrets is not None else SecretStore(path=s.str("secrets_file") or None)
        self.app_prefix = s.str("app_prefix", "crucible")
        self.image = s.str("image")
        self.add_python = s.str("add_python", f"{sys.version_info.major}.{sys.version_info.minor}")
        self.default_timeout_s = s.int("default_timeout_s", 24 * 3600, minimum=10)
        self.volume_prefix = s.str("volume_prefix", "crucible-ckpt")
        self._token_id = self.secrets.get(self.name, "token_id")
        self._token_secret = self.secrets.get(self.name, "token_secret")
        self._sdk = sdk
        self._client: Any = None
        self._results: dict[str, dict[str, Any]] = {}
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
        return (f"{self.secrets.hint(self.name, 'token_id')} and {self.secrets.hint(self.name, 'token_secret')}, "
                "or ~/.modal.toml (modal token set)")

    def error(self, kind: K, message: str) -> ProviderError:
        """A ProviderError with the message scrubbed of credentials."""
        return ProviderError(self.name, kind, self.secrets.scrub(message))

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

    def app_name(self, spec: LaunchSpec) -> str:
        """The ephemeral App of one attempt: <app_prefix>-<job>-<attempt>."""
        return self.app_prefix + remote.run_name(spec)[len("crucible"):]

    def _gpu(self, spec: LaunchSpec) -> str | None:
        if not spec.offer.gpu_name and spec.offer.gpu_count <= 0:
            return None
        name = spec.offer.gpu_name or spec.offer.instance_type
        return f"{name}:{spec.offer.gpu_count}" if spec.offer.gpu_count > 1 else name

    def _launch(self, spec: LaunchSpec) -> str:
        """Blocking part of submit (runs in a thread): build the App and Function, run it detached, spawn once."""
        modal = self.sdk()
        image_name = spec.container_image or self.image
        image = (modal.Image.from_registry(image_name, add_python=self.add_python) if image_name
                 else modal.Image.debian_slim(python_version=self.add_python))
        workdir = ""
        if spec.code_dir is not None:
            image = image.add_local_dir(str(spec.code_dir), remote_path=CODE_MOUNT)
            workdir = CODE_MOUNT
        volumes = {}
        if spec.checkpoint_dir:
            volume_name = f"{self.volume_prefix}-{remote.job_slug(spec.job_id)}"[:60]
            volumes[spec.checkpoint_dir] = modal.Volume.from_name(volume_name, create_if_missing=True)
        app = modal.App(self.app_name(spec))
        timeout = int(spec.max_duration_s + 0.999) if spec.max_duration_s > 0 else self.default_timeout_s
        function = app.function(image=image, gpu=self._gpu(spec), timeout=timeout, serialized=True, volumes=volumes,
                                retries=0)(_portable(_run_in_container))
        with app.run(client=self._sdk_client(), detach=True):
            call = function.spawn(list(spec.command), remote.job_env(spec), workdir, TAIL_BYTES)
        return str(call.object_id)

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """Spawn the attempt's function on a detached App; the handle is the FunctionCall id (fc-...)."""
        if not spec.command:
            raise self.error(K.INVALID, "command must not be empty")
        try:
            remote.job_env(spec)
        except ValueError as exc:
            raise self.error(K.INVALID, str(exc)) from None
        self.sdk()
        try:
            call_id = await asyncio.to_thread(self._launch, spec)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - SDK errors are classified by type
            raise self._sdk_error(exc, "spawn") from None
        if not call_id.startswith("fc-"):
            raise self.error(K.MALFORMED_RESPONSE, f"spawn returned call id {call_id!r}")
        return RunHandle(self.name, call_id, {"app": self.app_name(spec)})

    def _call(self, handle: RunHandle) -> Any:
        return self.sdk().FunctionCall.from_id(handle.ref, client=self._sdk_client())

    def _poll(self, handle: RunHandle) -> RunStatus:
        modal = self.sdk()
        exc_mod = getattr(modal, "exception", None)
        function_timeout = getattr(exc_mod, "FunctionTimeoutError", None)
        modal_timeout = getattr(exc_mod, "TimeoutError", None)
        call = self._call(handle)
        try:
            result = call.get(timeout=0)
        except Exception as exc:  # noqa: BLE001 - classified below
            if function_timeout is not None and isinstance(exc, function_timeout):
                return RunStatus(RunState.FAILED, message="stopped at the function timeout (max_duration_s)")
            if isinstance(exc, TimeoutError) or (modal_timeout is not None and isinstance(exc, modal_timeout)):
                return RunStatus(RunState.RUNNING)
            name = type(exc).__name__
            if "Cancel" in name or handle.ref in self._cancelled:
                return RunStatus(RunState.CANCELLED, message=name)
            if "OutputExpired" in name:
                return RunStatus(RunState.UNKNOWN, message="Modal no longer keeps this call's result")
            if any(s in name for s in ("Auth", "NotFound", "Connection", "ResourceExhausted")):
                raise self._sdk_error(exc, "poll") from None
            return RunStatus(RunState.FAILED, message=self.secrets.scrub(f"{name}: {exc}")[:500])
        if not isinstance(result, Mapping) or not isinstance(result.get("exit_code"), int):
            raise self.error(K.MALFORMED_RESPONSE, "the function returned no exit_code")
        self._results[handle.ref] = dict(result)
        code = result["exit_code"]
        return RunStatus(RunState.SUCCEEDED if code == 0 else RunState.FAILED, exit_code=code)

    async def status(self, handle: RunHandle) -> RunStatus:
        """FunctionCall.from_id(id).get(timeout=0): TimeoutError -> RUNNING, a result -> its exit code."""
        try:
            return await asyncio.to_thread(self._poll, handle)
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._sdk_error(exc, "poll") from None

    async def cancel(self, handle: RunHandle) -> None:
        """FunctionCall.cancel(); the container is stopped by Modal."""
        self._cancelled.add(handle.ref)
        try:
            await asyncio.to_thread(lambda: self._call(handle).cancel())
        except Exception as exc:  # noqa: BLE001
            err = self._sdk_error(exc, "cancel")
            if err.kind is not K.NOT_FOUND:
                raise err from None

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """After the call finished: the last 64 KiB of each stream, at their true offsets (earlier bytes are skipped).

        Modal streams live logs only to `modal app logs`, so nothing is returned while the call runs.
        """
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, got {stream!r}")
        result = self._results.get(handle.ref)
        if result is None:
            return LogChunk(stream, offset, b"", offset)
        data = bytes(result.get(stream) or b"")
        size = int(result.get(f"{stream}_size", len(data)))
        start = size - len(data)  # absolute offset of the tail's first byte
        begin = max(offset, start)
        chunk = data[begin - start:] if begin < size else b""
        return LogChunk(stream, begin, chunk, begin + len(chunk))
