"""Wiring of the proposer server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve proposer`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from crucible.api.proposer.v1 import proposer_service_pb2_grpc
from crucible.proposer.config import ProposerConfig
from crucible.proposer.engine import ProposerEngine
from crucible.proposer.servicer import SERVICE_DESCRIPTOR, build_servicer
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import BaseService
from prometheus_client import CollectorRegistry


class ProposerService(BaseService):
    """The proposer's start/stop hooks: health turns SERVING once the engine has loaded and warmed its models."""

    def __init__(self, config: ProposerConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.engine = ProposerEngine(config, registry)
        super().__init__("proposer", [SERVICE_DESCRIPTOR.full_name], build_servicer(self.engine),
                         proposer_service_pb2_grpc.add_ProposerServiceServicer_to_server)

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()


def create_server(config: ProposerConfig) -> tuple[CrucibleServer, int]:
    """Build the proposer server; returns it and its bound port."""
    registry = CollectorRegistry()
    return _create_server(config, ProposerService(config, registry), registry)
