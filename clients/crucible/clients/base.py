"""Shared plumbing of the typed service clients: a lazily opened long-lived channel and per-call deadlines.

Clients pickle (channels are dropped and reopened on first use), so they can live inside trainer reward objects.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

import grpc

from crucible.clients.channel import ChannelConfig, open_channel

StubT = TypeVar("StubT")


class ServiceClient(Generic[StubT]):
    """Base of the per-service clients. Use `async with Client(config) as c:` or call `close()` when done."""

    SERVICE: str = ""
    STUB: Any = None

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self._channel: grpc.aio.Channel | None = None
        self._stub: StubT | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stub(self) -> StubT:
        """The generated stub on this client's channel, opened on first use (in the running event loop)."""
        loop = asyncio.get_running_loop()
        if self._stub is None or self._loop is not loop:
            self._channel = open_channel(self.config, self.SERVICE)
            self._stub = self.STUB(self._channel)
            self._loop = loop
        return self._stub

    def timeout(self, timeout: float | None) -> float:
        """The deadline of one call: the given one or the configured default (every call has one)."""
        return self.config.timeout_s if timeout is None else timeout

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub = None

    async def __aenter__(self) -> ServiceClient[StubT]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]


def model_dict(identity: Any) -> dict[str, str]:
    """common.v1.ModelIdentity as a plain dict."""
    return {
        "name": identity.name,
        "revision": identity.revision,
        "dtype": identity.dtype,
        "device": identity.device,
        "quantization": identity.quantization,
    }


def optional_field(message: Any, field: str) -> Any:
    """The value of a proto3 optional field, or None when unset."""
    return getattr(message, field) if message.HasField(field) else None
