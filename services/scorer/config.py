"""Settings of the scorer service: one frozen dataclass filled from flags and CRUCIBLE_SCORER_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve scorer --help` lists them.
"""

from __future__ import annotations

import dataclasses

from crucible.runtime.config import setting
from crucible.runtime.errors import ConfigError
from crucible.runtime.service import ModelServerConfig


@dataclasses.dataclass(frozen=True)
class ScorerConfig(ModelServerConfig):
    """Target LLM pinned to CPU scoring answer choices and text likelihoods."""

    port: int = setting(50053, "gRPC port of the scorer service.")
    device: str = setting("cpu", "The target model is pinned to CPU by design; any other device is refused at start.")

    def validate(self) -> None:
        super().validate()
        if self.device != "cpu":
            raise ConfigError(
                "device",
                f"the target scorer runs on CPU only (got {self.device!r}); the GPU is kept for the proposer and detector",
            )
