"""A fake of the `modal` SDK surface the adapter uses: Client, Image, Volume, App.lookup and the Sandbox API.

Sandboxes really run their argv as local processes; stdout/stderr stream live to every reader from the start, as
Modal's server-side streams do. Signatures follow modal 1.6 (checked against tests/fakes/modal_signatures.json).
"""

from __future__ import annotations

import codecs
import itertools
import os
import subprocess
import threading
import types
from collections.abc import Iterator, Sequence
from typing import Any


class Error(Exception):
    """modal.exception.Error"""


class AuthError(Error):
    """Bad or missing token."""


class NotFoundError(Error):
    """Unknown object id or name."""


class InvalidError(Error):
    """A malformed request."""


class AlreadyExistsError(Error):
    """A running Sandbox already has this name in the App."""


class TimeoutError(Error):
    """An SDK call timed out."""


class SandboxTimeoutError(TimeoutError):
    """The Sandbox ran past its timeout (wait(raise_on_termination=True))."""


class SandboxTerminatedError(Error):
    """The Sandbox was terminated (wait(raise_on_termination=True))."""


exception = types.SimpleNamespace(
    Error=Error,
    AuthError=AuthError,
    NotFoundError=NotFoundError,
    InvalidError=InvalidError,
    AlreadyExistsError=AlreadyExistsError,
    TimeoutError=TimeoutError,
    SandboxTimeoutError=SandboxTimeoutError,
    SandboxTerminatedError=SandboxTerminatedError,
)


class _Output:
    """One stream's text so far; readers block for more until EOF."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.eof = False
        self.cond = threading.Condition()

    def pump(self, fd: Any) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            data = os.read(fd.fileno(), 4096)
            text = decoder.decode(data, final=not data)
            with self.cond:
                if text:
                    self.chunks.append(text)
                if not data:
                    self.eof = True
                self.cond.notify_all()
            if not data:
                return

    def reader(self) -> Iterator[str]:
        i = 0
        while True:
            with self.cond:
                while i >= len(self.chunks) and not self.eof:
                    self.cond.wait()
                if i >= len(self.chunks):
                    return
                chunk = self.chunks[i]
            i += 1
            yield chunk


class _Run:
    """State of one sandbox: its process, outputs and result (shared by every handle on it)."""

    def __init__(self, object_id: str, app_name: str, name: str | None, argv: Sequence[str], options: dict) -> None:
        self.object_id, self.app_name, self.name, self.options = object_id, app_name, name, options
        self.outputs = {"stdout": _Output(), "stderr": _Output()}
        self.returncode: int | None = None
        self.terminated = self.timed_out = False
        env = {**os.environ, **{k: v for k, v in (options.get("env") or {}).items() if v is not None}}
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=options.get("local_workdir"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.readers = [
            threading.Thread(target=self.outputs[s].pump, args=(getattr(self.proc, s),), daemon=True)
            for s in ("stdout", "stderr")
        ]
        for t in self.readers:
            t.start()
        self.timer = threading.Timer(options["timeout"], self._timeout)
        self.timer.daemon = True
        self.timer.start()
        threading.Thread(target=self._reap, daemon=True).start()

    def _timeout(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def kill(self) -> None:
        if self.returncode is None:
            self.terminated = True
            self.proc.kill()

    def _reap(self) -> None:
        code = self.proc.wait()
        self.timer.cancel()
        for t in self.readers:
            t.join()
        self.returncode = 124 if self.timed_out else 137 if self.terminated else code  # as Modal's _result_returncode


class FakeModal:
    """One fake SDK instance: pass it as `sdk=`; it records apps, sandboxes and the options each was created with."""

    def __init__(self, token_id: str = "ak-test", token_secret: str = "as-test") -> None:
        self.exception = exception
        self.token = (token_id, token_secret)
        self.apps: dict[str, Any] = {}
        self.runs: dict[str, _Run] = {}
        self._ids = itertools.count(1)
        sdk = self

        class Client:
            def __init__(self, creds: tuple[str, str]) -> None:
                self.creds = creds

            @classmethod
            def from_credentials(cls, token_id: str, token_secret: str) -> Client:
                return cls((token_id, token_secret))

        class Image:
            def __init__(self, desc: dict) -> None:
                self.desc = desc

            @staticmethod
            def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
                return Image({"base": "debian_slim", "python": python_version})

            @staticmethod
            def from_registry(
                tag: str,
                secret: Any = None,
                *,
                setup_dockerfile_commands: Sequence[str] = (),
                force_build: bool = False,
                add_python: str | None = None,
                **kwargs: Any,
            ) -> Image:
                return Image({"base": tag, "python": add_python})

            def add_local_dir(self, local_path: Any, remote_path: str, *, copy: bool = False, ignore: Any = ()) -> Image:
                return Image({**self.desc, "local_dir": (str(local_path), remote_path)})

        class Volume:
            def __init__(self, name: str) -> None:
                self.name = name

            @staticmethod
            def from_name(
                name: str,
                *,
                environment_name: str | None = None,
                create_if_missing: bool = False,
                version: Any = None,
                create_options: Any = None,
                client: Any = None,
            ) -> Volume:
                return Volume(name)

        class App:
            def __init__(self, name: str) -> None:
                self.name = name
                self.app_id = f"ap-{next(sdk._ids):020d}"

            @staticmethod
            def lookup(
                name: str, *, client: Any = None, environment_name: str | None = None, create_if_missing: bool = False
            ) -> App:
                sdk._check(client)
                if name not in sdk.apps:
                    if not create_if_missing:
                        raise NotFoundError(f"App '{name}' not found")
                    sdk.apps[name] = App(name)
                return sdk.apps[name]

        class Sandbox:
            def __init__(self, run: _Run) -> None:
                self._run = run
                self.object_id = run.object_id

            @staticmethod
            def create(
                *args: str,
                app: Any = None,
                name: str | None = None,
                image: Any = None,
                env: dict[str, str | None] | None = None,
                secrets: Any = None,
                timeout: int | None = 300,
                workdir: str | None = None,
                gpu: str | None = None,
                cloud: str | None = None,
                region: Any = None,
                cpu: Any = None,
                memory: Any = None,
                volumes: dict | None = None,
                verbose: bool = False,
                client: Any = None,
                environment_name: str | None = None,
            ) -> Sandbox:
                sdk._check(client)
                if app is None:
                    raise InvalidError("App has not been initialized yet: pass app=modal.App.lookup(...)")
                if not args or not all(isinstance(a, str) for a in args):
                    raise InvalidError("All entrypoint arguments must be strings")
                if timeout is not None and not 0 < timeout <= 86400:
                    raise InvalidError("timeout must be between 1 and 86400 seconds")
                if name is not None and any(
                    r.name == name and r.app_name == app.name and r.returncode is None for r in sdk.runs.values()
                ):
                    raise AlreadyExistsError(f"Sandbox with name '{name}' already exists in the App")
                local_workdir = None
                if workdir and image is not None and image.desc.get("local_dir", (None, None))[1] == workdir:
                    local_workdir = image.desc["local_dir"][0]  # the code folder shipped to this path
                options = {
                    "image": image,
                    "env": dict(env or {}),
                    "timeout": timeout or 300,
                    "workdir": workdir,
                    "gpu": gpu,
                    "volumes": dict(volumes or {}),
                    "local_workdir": local_workdir,
                }
                object_id = f"sb-{next(sdk._ids):020d}"
                sdk.runs[object_id] = _Run(object_id, app.name, name, args, options)
                return Sandbox(sdk.runs[object_id])

            @staticmethod
            def from_id(sandbox_id: str, client: Any = None) -> Sandbox:
                sdk._check(client)
                if sandbox_id not in sdk.runs:
                    raise NotFoundError(f"Sandbox {sandbox_id} not found")
                return Sandbox(sdk.runs[sandbox_id])

            @staticmethod
            def from_name(
                app_name: str,
                name: str,
                *,
                environment_name: str | None = None,
                include_terminated: bool = False,
                client: Any = None,
            ) -> Sandbox:
                sdk._check(client)
                for run in reversed(list(sdk.runs.values())):
                    if run.app_name == app_name and run.name == name and (include_terminated or run.returncode is None):
                        return Sandbox(run)
                raise NotFoundError(f"Sandbox with name '{name}' not found in App '{app_name}'")

            @property
            def stdout(self) -> Iterator[str]:
                return self._run.outputs["stdout"].reader()

            @property
            def stderr(self) -> Iterator[str]:
                return self._run.outputs["stderr"].reader()

            @property
            def returncode(self) -> int | None:
                return self._run.returncode

            def poll(self) -> int | None:
                return self._run.returncode

            def wait(self, raise_on_termination: bool = True) -> None:
                self._run.proc.wait()
                while self._run.returncode is None:
                    threading.Event().wait(0.01)
                if raise_on_termination and self._run.timed_out:
                    raise SandboxTimeoutError("Sandbox timed out")
                if raise_on_termination and self._run.terminated:
                    raise SandboxTerminatedError("Sandbox was terminated")

            def terminate(self, *, wait: bool = False) -> int | None:
                self._run.kill()
                if wait:
                    self.wait(raise_on_termination=False)
                    return self._run.returncode
                return None

        self.Client, self.Image, self.Volume, self.App, self.Sandbox = Client, Image, Volume, App, Sandbox

    def _check(self, client: Any) -> None:
        if client is not None and client.creds != self.token:
            raise AuthError("Token ID or secret is invalid (token id " + client.creds[0] + ")")

    def shutdown(self) -> None:
        """Stop every sandbox still running."""
        for run in self.runs.values():
            run.kill()
            run.proc.wait()
