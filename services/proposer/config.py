"""Settings of the proposer service: one frozen dataclass filled from flags and CRUCIBLE_PROPOSER_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve proposer --help` lists them.
"""

from __future__ import annotations

import dataclasses

from crucible.runtime.config import setting
from crucible.runtime.service import ModelServerConfig


@dataclasses.dataclass(frozen=True)
class ProposerConfig(ModelServerConfig):
    """Instruction-LLM rewriting (paraphrases, equivalent questions), meaning checks and embeddings."""

    port: int = setting(50052, "gRPC port of the proposer service.")
