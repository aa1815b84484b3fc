"""Wiring of the proposer server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve proposer`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.api.proposer.v1 import proposer_service_pb2_grpc
from crucible.proposer.config import ProposerConfig
from crucible.proposer.servicer import SERVICE_DESCRIPTOR, build_servicer
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import ModelService


def create_server(config: ProposerConfig) -> tuple[CrucibleServer, int]:
    """Build the proposer server; returns it and its bound port."""
    registry = CollectorRegistry()
    service = ModelService(
        config, "proposer", [SERVICE_DESCRIPTOR.full_name], build_servicer(), proposer_service_pb2_grpc.add_ProposerServiceServicer_to_server
    )
    return _create_server(config, service, registry)
