"""The scorer service: registers the servicer and owns the ScorerEngine, whose start decides when health says
SERVING (CPU pinned, target model loaded and warmed, throughput measured).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.api.scorer.v1 import scorer_service_pb2_grpc
from crucible.runtime.service import ModelService
from crucible.scorer.config import ScorerConfig
from crucible.scorer.engine import ScorerEngine
from crucible.scorer.servicer import SERVICE_DESCRIPTOR, ScorerServicer


class ScorerService(ModelService[ScorerEngine]):
    """ScoreChoices, ScoreTexts and GetInfo over a ScorerEngine."""

    def __init__(self, config: ScorerConfig, registry: CollectorRegistry) -> None:
        config.validate()  # a CUDA device is refused here, before anything is loaded
        self.config = config
        engine = ScorerEngine(config, registry)
        super().__init__(
            "scorer",
            [SERVICE_DESCRIPTOR.full_name],
            engine,
            ScorerServicer(engine),
            scorer_service_pb2_grpc.add_ScorerServiceServicer_to_server,
        )
