"""The proposer service: registers the servicer and owns the ProposerEngine, whose start decides when health says
SERVING (placement checked, generator, embedder and NLI model loaded, every batcher warmed).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.api.proposer.v1 import proposer_service_pb2_grpc
from crucible.proposer.config import ProposerConfig
from crucible.proposer.engine import ProposerEngine
from crucible.proposer.servicer import SERVICE_DESCRIPTOR, ProposerServicer
from crucible.runtime.service import ModelService


class ProposerService(ModelService[ProposerEngine]):
    """Propose, CheckEquivalence, Embed and GetInfo over a ProposerEngine."""

    def __init__(self, config: ProposerConfig, registry: CollectorRegistry) -> None:
        self.config = config
        engine = ProposerEngine(config, registry)
        super().__init__(
            "proposer",
            [SERVICE_DESCRIPTOR.full_name],
            engine,
            ProposerServicer(engine),
            proposer_service_pb2_grpc.add_ProposerServiceServicer_to_server,
        )
