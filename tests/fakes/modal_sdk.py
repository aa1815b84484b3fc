"""A fake of the `modal` SDK surface the adapter uses (App, Image, Volume, Client, Function.spawn, FunctionCall).

Spawned functions really run, in a thread, after a cloudpickle round trip when cloudpickle is installed (as Modal does).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import pickle
import types
from typing import Any


class Error(Exception):
    """modal.exception.Error"""


class AuthError(Error):
    """Bad or missing token."""


class NotFoundError(Error):
    """Unknown object id."""


class TimeoutError(Error):  # noqa: A001 - mirrors modal.exception.TimeoutError
    """get(timeout=...) elapsed before the result."""


class FunctionTimeoutError(TimeoutError):
    """The function ran past its timeout."""


class InputCancellation(Error):
    """The call was cancelled."""


class RemoteError(Error):
    """The function raised."""


exception = types.SimpleNamespace(Error=Error, AuthError=AuthError, NotFoundError=NotFoundError,
                                  TimeoutError=TimeoutError, FunctionTimeoutError=FunctionTimeoutError,
                                  InputCancellation=InputCancellation, RemoteError=RemoteError)


class FakeModal:
    """One fake SDK instance: pass it as `sdk=`; it records apps, spawned calls and credentials used."""

    def __init__(self, token_id: str = "ak-test", token_secret: str = "as-test") -> None:
        self.exception = exception
        self.token = (token_id, token_secret)
        self.apps: list[Any] = []
        self.calls: dict[str, Any] = {}
        self.pickled: list[bytes] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
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

            @classmethod
            def debian_slim(cls, python_version: str | None = None) -> Image:
                return cls({"base": "debian_slim", "python": python_version})

            @classmethod
            def from_registry(cls, tag: str, add_python: str | None = None) -> Image:
                return cls({"base": tag, "python": add_python})

            def add_local_dir(self, local_path: str, remote_path: str) -> Image:
                return Image({**self.desc, "local_dir": (local_path, remote_path)})

        class Volume:
            def __init__(self, name: str) -> None:
                self.name = name

            @classmethod
            def from_name(cls, name: str, create_if_missing: bool = False) -> Volume:
                return cls(name)

        class FunctionCall:
            def __init__(self, object_id: str, future: concurrent.futures.Future) -> None:
                self.object_id = object_id
                self.future = future
                self.cancelled = False

            @classmethod
            def from_id(cls, object_id: str, client: Any = None) -> FunctionCall:
                sdk._check(client)
                if object_id not in sdk.calls:
                    raise NotFoundError(f"function call {object_id} not found")
                return sdk.calls[object_id]

            def get(self, timeout: float | None = None) -> Any:
                if self.cancelled:
                    raise InputCancellation("the input was cancelled")
                try:
                    return self.future.result(timeout=timeout or 0)
                except concurrent.futures.TimeoutError:
                    raise TimeoutError("no result yet") from None
                except Exception as exc:  # noqa: BLE001 - mirrors how Modal surfaces remote failures
                    raise RemoteError(str(exc)) from None

            def cancel(self, terminate_containers: bool = False) -> None:
                self.cancelled = True

        class Function:
            def __init__(self, app: App, fn: Any, options: dict) -> None:
                self.app, self.fn, self.options = app, fn, options

            def spawn(self, *args: Any) -> FunctionCall:
                if not self.app.running:
                    raise Error("App is not running: use `with app.run():`")
                fn = self.fn
                if self.options.get("serialized"):
                    try:
                        import cloudpickle
                    except ImportError:
                        cloudpickle = None
                    if cloudpickle is not None:
                        blob = cloudpickle.dumps(fn)
                        sdk.pickled.append(blob)
                        fn = pickle.loads(blob)
                call_id = f"fc-01J{next(sdk._ids):020d}"
                call = FunctionCall(call_id, sdk._pool.submit(fn, *args))
                sdk.calls[call_id] = call
                return call

        class App:
            def __init__(self, name: str) -> None:
                self.name = name
                self.functions: list[Function] = []
                self.running = False
                self.detached = False
                sdk.apps.append(self)

            def function(self, **options: Any) -> Any:
                def register(fn: Any) -> Function:
                    f = Function(self, fn, options)
                    self.functions.append(f)
                    return f
                return register

            @contextlib.contextmanager
            def run(self, client: Any = None, detach: bool = False) -> Any:
                sdk._check(client)
                self.running, self.detached = True, detach
                try:
                    yield self
                finally:
                    self.running = False

        self.Client, self.Image, self.Volume, self.FunctionCall, self.App = Client, Image, Volume, FunctionCall, App

    def _check(self, client: Any) -> None:
        if client is not None and client.creds != self.token:
            raise AuthError("Token ID or secret is invalid (token id " + client.creds[0] + ")")

    def shutdown(self) -> None:
        """Wait for spawned functions."""
        self._pool.shutdown(wait=True)
