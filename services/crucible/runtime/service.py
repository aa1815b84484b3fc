"""What a service gives the runtime server: its servicer's registration and async start/stop hooks.

`BaseService` is the plain form (cost, scheduler); `ModelService` is the model services' form: it owns an engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import grpc


class BaseService:
    """Registers one servicer and runs optional async start/stop hooks; subclasses override `start`/`stop`."""

    def __init__(
        self,
        short_name: str,
        service_names: Sequence[str],
        servicer: Any,
        add_servicer: Callable[[Any, grpc.aio.Server], None],
    ) -> None:
        self.short_name = short_name
        self.service_names = tuple(service_names)
        self.servicer = servicer
        self._add_servicer = add_servicer

    def add_to_server(self, server: grpc.aio.Server) -> None:
        self._add_servicer(self.servicer, server)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class ModelEngine(Protocol):
    """The part of a model service that loads its models and runs its batchers (no gRPC)."""

    #: True once `start` loaded, placed and warmed everything, until `stop`.
    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


EngineT = TypeVar("EngineT", bound=ModelEngine)


class ModelService(BaseService, Generic[EngineT]):
    """A model service (detector, proposer, target scorer): owns its engine, whose start (models loaded in worker
    threads, so the event loop keeps serving health) decides when health says SERVING; the servicer only converts."""

    def __init__(
        self,
        short_name: str,
        service_names: Sequence[str],
        engine: EngineT,
        servicer: Any,
        add_servicer: Callable[[Any, grpc.aio.Server], None],
    ) -> None:
        super().__init__(short_name, service_names, servicer, add_servicer)
        self.engine = engine

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()
