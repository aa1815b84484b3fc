"""Wiring of the scorer server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve scorer`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.scorer.config import ScorerConfig
from crucible.scorer.service import ScorerService


def create_server(config: ScorerConfig) -> tuple[CrucibleServer, int]:
    """Build the scorer server; returns it and its bound port. A non-CPU device is refused here."""
    registry = CollectorRegistry()
    return _create_server(config, ScorerService(config, registry), registry)
