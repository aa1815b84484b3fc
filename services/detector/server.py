"""Wiring of the detector server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve detector`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc
from crucible.detector.config import DetectorConfig
from crucible.detector.servicer import SERVICE_DESCRIPTOR, DetectorServicer, batching_proto, build_servicer
from crucible.runtime.batching import BatchSettings
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import BaseService

log = logging.getLogger(__name__)


class DetectorService(BaseService):
    """Loads the models, picks the calibration and starts the pipeline; health says SERVING only after a warm-up."""

    def __init__(self, config: DetectorConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.registry = registry
        self.detector_servicer: DetectorServicer = build_servicer()
        super().__init__("detector", [SERVICE_DESCRIPTOR.full_name], self.detector_servicer,
                         detector_service_pb2_grpc.add_DetectorServiceServicer_to_server)

    def batch_settings(self) -> BatchSettings:
        cfg = self.config
        return BatchSettings(max_batch_size=cfg.max_batch_size, max_batch_tokens=cfg.max_batch_tokens,
                             max_wait_s=cfg.max_wait_ms / 1000.0, max_queue_size=cfg.max_queue_size)

    async def start(self) -> None:
        from crucible.detector.engine import Detector
        from crucible.detector.pipeline import DetectionPipeline, load_calibration

        cfg = self.config
        detector = await asyncio.to_thread(Detector.load, cfg.engine_settings())
        calibration = load_calibration(detector, cfg.calibration_file)
        ids = detector.identities
        if not calibration.calibrated:
            log.warning("no calibration covers sampling=%s scoring=%s: probabilities stay unset (fit one with "
                        "`crucible detector calibrate`)", ids["sampling"].name, ids["scoring"].name)
        await asyncio.to_thread(detector.warm_up)
        pipeline = DetectionPipeline(detector, calibration, self.batch_settings(), cache_size=cfg.cache_size,
                                     cache_path=cfg.cache_path, registry=self.registry)
        pipeline.start()
        await pipeline.measure_throughput()  # the prior of admission by expected wait
        servicer = self.detector_servicer
        servicer.limits = pb.Limits(max_tokens=cfg.max_tokens, max_texts_per_call=cfg.max_texts_per_call,
                                    max_text_bytes=cfg.max_text_bytes)
        servicer.batching = batching_proto(pipeline.batcher.settings)
        servicer.pipeline = pipeline
        log.info("detector ready", extra={"members": list(detector.enabled_members), "calibration": calibration.method,
                                           "calibration_source": calibration.source})

    async def stop(self) -> None:
        pipeline = self.detector_servicer.pipeline
        self.detector_servicer.pipeline = None
        if pipeline is not None:
            await pipeline.stop()


def create_server(config: DetectorConfig) -> tuple[CrucibleServer, int]:
    """Build the detector server; returns it and its bound port."""
    registry = CollectorRegistry()
    return _create_server(config, DetectorService(config, registry), registry)
