"""What the job engine takes from the service config (`EngineSettings`), shared by every part of the engine.

One mutable instance per engine: every part holds the same object, so a change (tests shorten intervals) applies to all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from crucible.scheduler.engine import jobspec
from crucible.scheduler.objects import inputs as job_inputs
from crucible.scheduler.objects.objectstore import StoreSettings


@dataclasses.dataclass
class EngineSettings:
    """What the engine needs from the service config."""

    state_dir: Path
    poll_interval_s: float = 1.0
    usage_interval_s: float = 60.0
    default_max_duration_s: float = 86400.0
    default_budget_scope: str = ""
    max_recoveries: int = 10
    transient_retries: int = 2
    container_image: str = ""
    code_limits: jobspec.CodeLimits = dataclasses.field(default_factory=jobspec.CodeLimits)
    log_cap_bytes: int = 1 << 30  # per stream per job, across attempts
    store: StoreSettings | None = None  # the artifact store; None: file://<state_dir>/store
    artifact_retention_days: float = 0.0  # 0 keeps a job's store objects until DeleteJobArtifacts
    artifact_max_bytes: int = 16 << 30  # output bytes uploaded to the store per job
    code_url_ttl_s: int = 3600  # lifetime of presigned code/input URLs handed to remote machines
    input_limits: job_inputs.InputLimits = dataclasses.field(default_factory=job_inputs.InputLimits)
