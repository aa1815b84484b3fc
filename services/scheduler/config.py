"""Settings of the scheduler service: one frozen dataclass filled from flags and CRUCIBLE_SCHEDULER_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve scheduler --help` lists them.
"""

from __future__ import annotations

import dataclasses

from crucible.runtime.config import setting
from crucible.runtime.config import ServerConfig


@dataclasses.dataclass(frozen=True)
class SchedulerConfig(ServerConfig):
    """GPU jobs on local and remote providers with durable state, logs, progress and checkpoints."""

    port: int = setting(50054, "gRPC port of the scheduler service.")
