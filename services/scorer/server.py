"""Wiring of the scorer server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve scorer`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.api.scorer.v1 import scorer_service_pb2_grpc
from crucible.scorer.config import ScorerConfig
from crucible.scorer.servicer import SERVICE_DESCRIPTOR, build_servicer
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import ModelService


def create_server(config: ScorerConfig) -> tuple[CrucibleServer, int]:
    """Build the scorer server; returns it and its bound port."""
    registry = CollectorRegistry()
    service = ModelService(
        config, "scorer", [SERVICE_DESCRIPTOR.full_name], build_servicer(), scorer_service_pb2_grpc.add_ScorerServiceServicer_to_server
    )
    return _create_server(config, service, registry)
