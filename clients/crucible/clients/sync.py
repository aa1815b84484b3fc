"""A small synchronous facade over the async SDK for notebooks and scripts: the same methods, blocking.

It runs a private event loop in a daemon thread; `SyncMesh().detector.detect([...])` returns the result directly.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

from crucible.clients.mesh import Mesh, MeshConfig


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="crucible-sync-client", daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class _SyncProxy:
    """Calls the async client's coroutine methods on the private loop and waits for them."""

    def __init__(self, client: Any, runner: _LoopThread) -> None:
        self._client = client
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(attr(*args, **kwargs))

        return call


class SyncMesh:
    """Blocking access to the mesh: `with SyncMesh() as mesh: mesh.scorer.score_texts(["..."])`."""

    def __init__(self, config: MeshConfig | None = None) -> None:
        self._runner = _LoopThread()
        self._mesh = Mesh(config)
        self.detector = _SyncProxy(self._mesh.detector, self._runner)
        self.proposer = _SyncProxy(self._mesh.proposer, self._runner)
        self.scorer = _SyncProxy(self._mesh.scorer, self._runner)
        self.scheduler = _SyncProxy(self._mesh.scheduler, self._runner)
        self.cost = _SyncProxy(self._mesh.cost, self._runner)

    def run(self, fn: Callable[[Mesh], Any]) -> Any:
        """Run an async function of the Mesh (e.g. a reward computation) and return its result."""
        return self._runner.run(fn(self._mesh))

    def close(self) -> None:
        self._runner.run(self._mesh.close())
        self._runner.stop()

    def __enter__(self) -> SyncMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
