"""Settings of the cost service: one frozen dataclass filled from flags and CRUCIBLE_COST_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve cost --help` lists them.
"""

from __future__ import annotations

import dataclasses

from crucible.runtime.config import setting
from crucible.runtime.config import ServerConfig


@dataclasses.dataclass(frozen=True)
class CostConfig(ServerConfig):
    """GPU price catalog, cost estimates, provider comparison, budgets and spend."""

    port: int = setting(50055, "gRPC port of the cost service.")
