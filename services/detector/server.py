"""Wiring of the detector server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve detector`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.api.detector.v1 import detector_service_pb2_grpc
from crucible.detector.config import DetectorConfig
from crucible.detector.servicer import SERVICE_DESCRIPTOR, build_servicer
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import ModelService


def create_server(config: DetectorConfig) -> tuple[CrucibleServer, int]:
    """Build the detector server; returns it and its bound port."""
    registry = CollectorRegistry()
    service = ModelService(
        config, "detector", [SERVICE_DESCRIPTOR.full_name], build_servicer(), detector_service_pb2_grpc.add_DetectorServiceServicer_to_server
    )
    return _create_server(config, service, registry)
