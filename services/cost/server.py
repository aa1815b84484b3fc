"""Wiring of the cost server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve cost`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.api.cost.v1 import cost_service_pb2_grpc
from crucible.cost.config import CostConfig
from crucible.cost.servicer import SERVICE_DESCRIPTOR, build_servicer
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import BaseService


def create_server(config: CostConfig) -> tuple[CrucibleServer, int]:
    """Build the cost server; returns it and its bound port."""
    registry = CollectorRegistry()
    service = BaseService("cost", [SERVICE_DESCRIPTOR.full_name], build_servicer(), cost_service_pb2_grpc.add_CostServiceServicer_to_server)
    return _create_server(config, service, registry)
