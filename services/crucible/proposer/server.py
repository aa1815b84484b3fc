"""Wiring of the proposer server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve proposer`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.proposer.config import ProposerConfig
from crucible.proposer.service import ProposerService
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server


def create_server(config: ProposerConfig) -> tuple[CrucibleServer, int]:
    """Build the proposer server; returns it and its bound port."""
    registry = CollectorRegistry()
    return _create_server(config, ProposerService(config, registry), registry)
