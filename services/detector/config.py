"""Settings of the detector service: one frozen dataclass filled from flags and CRUCIBLE_DETECTOR_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve detector --help` lists them.
"""

from __future__ import annotations

import dataclasses

from crucible.runtime.config import setting
from crucible.runtime.service import ModelServerConfig


@dataclasses.dataclass(frozen=True)
class DetectorConfig(ModelServerConfig):
    """Batched Fast-DetectGPT, Binoculars and classifier ensemble scoring how machine-written a text is."""

    port: int = setting(50051, "gRPC port of the detector service.")
