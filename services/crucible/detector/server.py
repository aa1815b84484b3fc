"""Wiring of the detector server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve detector`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.detector.config import DetectorConfig
from crucible.detector.service import DetectorService
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server


def create_server(config: DetectorConfig) -> tuple[CrucibleServer, int]:
    """Build the detector server; returns it and its bound port."""
    registry = CollectorRegistry()
    return _create_server(config, DetectorService(config, registry), registry)
