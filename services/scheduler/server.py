"""Wiring of the scheduler server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve scheduler`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.servicer import SERVICE_DESCRIPTOR, build_servicer
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import BaseService


def create_server(config: SchedulerConfig) -> tuple[CrucibleServer, int]:
    """Build the scheduler server; returns it and its bound port."""
    registry = CollectorRegistry()
    service = BaseService("scheduler", [SERVICE_DESCRIPTOR.full_name], build_servicer(), scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server)
    return _create_server(config, service, registry)
