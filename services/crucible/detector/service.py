"""The detector service: registers the servicer and owns the DetectorEngine, whose start decides when health says
SERVING (models loaded, calibration chosen, warm-up and throughput probe done).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from crucible.api.detector.v1 import detector_service_pb2_grpc
from crucible.detector.config import DetectorConfig
from crucible.detector.engine import DetectorEngine
from crucible.detector.servicer import SERVICE_DESCRIPTOR, DetectorServicer
from crucible.runtime.service import ModelService


class DetectorService(ModelService[DetectorEngine]):
    """Detect, DetectStream and GetInfo over a DetectorEngine."""

    def __init__(self, config: DetectorConfig, registry: CollectorRegistry) -> None:
        self.config = config
        engine = DetectorEngine(config, registry)
        super().__init__(
            "detector",
            [SERVICE_DESCRIPTOR.full_name],
            engine,
            DetectorServicer(engine),
            detector_service_pb2_grpc.add_DetectorServiceServicer_to_server,
        )
