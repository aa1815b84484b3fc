"""The detector's engine: `DetectorEngine` (load, calibrate, warm up, run the pipeline; start/stop/ready) around the
compute core `Detector` (crucible.detector.core) and the `DetectionPipeline` (caches, batching, calibration).
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector
from crucible.detector.pipeline import DetectionPipeline, load_calibration
from crucible.runtime.errors import Unavailable
from crucible.runtime.startup import startup_phase

log = logging.getLogger(__name__)


class DetectorEngine:
    """The service's engine: loads the models, picks the calibration, warms up, then runs the DetectionPipeline
    (caches and the dynamic batcher). `ready` only after all of that, so health says SERVING after a warm-up."""

    def __init__(self, config: DetectorConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry
        self._pipeline: DetectionPipeline | None = None

    @property
    def ready(self) -> bool:
        """True between a finished `start` and `stop`."""
        return self._pipeline is not None

    def require_ready(self) -> DetectionPipeline:
        """The running pipeline, or UNAVAILABLE (NOT_READY) while the models load or after shutdown."""
        if self._pipeline is None:
            raise Unavailable("the detector's models are still loading; retry shortly", reason="NOT_READY")
        return self._pipeline

    async def start(self) -> None:
        """Load the models (in a thread), choose the calibration, warm up, start batching, measure throughput."""
        cfg = self.config
        detector = await asyncio.to_thread(Detector.load, cfg)
        calibration = load_calibration(detector, cfg.calibration_file)
        ids = detector.identities
        if not calibration.calibrated:
            log.warning(
                "no calibration covers sampling=%s scoring=%s: probabilities stay unset (fit one with "
                "`crucible detector calibrate`)",
                ids["sampling"].name,
                ids["scoring"].name,
            )
        with startup_phase("warm_up"):  # includes compile_statistics
            await asyncio.to_thread(detector.warm_up)
        pipeline = DetectionPipeline(
            detector,
            calibration,
            cfg.batch_settings(),
            cache_size=cfg.cache_size,
            cache_path=cfg.cache_path,
            registry=self.registry,
        )
        pipeline.start()
        with startup_phase("throughput_probe"):
            await pipeline.measure_throughput()  # the prior of admission by expected wait
        self._pipeline = pipeline
        log.info(
            "detector ready",
            extra={
                "members": list(detector.enabled_members),
                "calibration": calibration.method,
                "calibration_source": calibration.source,
            },
        )

    async def stop(self) -> None:
        """Stop batching (waiting calls fail with UNAVAILABLE) and close the disk cache."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            await pipeline.stop()
