"""Settings of the cost service: one frozen dataclass filled from flags and CRUCIBLE_COST_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve cost --help` lists them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from crucible.runtime.config import ServerConfig, setting
from crucible.runtime.errors import ConfigError


def default_state_dir() -> Path:
    """$CRUCIBLE_STATE_DIR, else $XDG_STATE_HOME/crucible, else ~/.local/state/crucible."""
    if os.environ.get("CRUCIBLE_STATE_DIR"):
        return Path(os.environ["CRUCIBLE_STATE_DIR"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "crucible"


def default_user_catalog() -> Path:
    """$CRUCIBLE_CONFIG_DIR/cost-catalog.csv, else ~/.config/crucible/cost-catalog.csv (used only when it exists)."""
    base = os.environ.get("CRUCIBLE_CONFIG_DIR") or str(
        Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "crucible"
    )
    return Path(base).expanduser() / "cost-catalog.csv"


@dataclasses.dataclass(frozen=True)
class CostConfig(ServerConfig):
    """GPU price catalog, cost estimates, provider comparison, budgets and spend."""

    port: int = setting(50055, "gRPC port of the cost service.")
    state_dir: str = setting(
        "", "Folder for the spend database and the live-price cache; empty means $CRUCIBLE_STATE_DIR or ~/.local/state/crucible."
    )
    database_path: str = setting("", "SQLite file holding budgets and recorded spend; empty means STATE_DIR/cost.sqlite3.")
    catalog_file: str = setting("", "Bundled price catalog CSV to start from; empty means the one shipped with Crucible.")
    user_catalog_file: str = setting(
        "",
        "Your catalog CSV (same columns; overrides rows with the same provider, instance_type and region, adds others, "
        "never overwritten by RefreshPrices); empty means ~/.config/crucible/cost-catalog.csv (used when it exists; "
        "re-read on RefreshPrices).",
    )
    local_gpu_name: str = setting("", "GPU model of this machine for the `local` provider, e.g. RTX4090; empty = CPU only.")
    local_gpu_count: int = setting(0, "Number of local GPUs (0 = a CPU-only local offer).")
    local_gpu_memory_gib: float = setting(0.0, "Memory of each local GPU in GiB.")
    local_power_watts: float = setting(
        150.0, "Average power draw of this machine under load, in watts (priced with local_electricity_usd_per_kwh)."
    )
    local_electricity_usd_per_kwh: float = setting(0.15, "Electricity price in USD per kWh for the `local` provider.")
    local_amortisation_usd_per_hour: float = setting(
        0.0, "Hardware amortisation added to the `local` price, USD per hour (e.g. purchase price / expected hours of use)."
    )
    lambda_api_url: str = setting("https://cloud.lambda.ai/api/v1", "Base URL of Lambda's API (GET /instance-types).")
    lambda_api_key: str = setting("", "Lambda API key for RefreshPrices; empty skips Lambda's refresh.", secret=True)
    runpod_api_url: str = setting("https://api.runpod.io/graphql", "RunPod GraphQL endpoint (gpuTypes).")
    runpod_api_key: str = setting("", "RunPod API key for RefreshPrices; empty skips RunPod's refresh.", secret=True)
    refresh_timeout_s: float = setting(10.0, "Deadline of each provider price call in seconds.")
    refresh_interval_s: float = setting(
        0.0,
        "Refresh live prices every this many seconds in the background (SkyPilot uses ~7 h = 25200); 0 = only on RefreshPrices.",
    )

    def validate(self) -> None:
        """Check the cost settings; a bad one raises ConfigError naming it."""
        super().validate()
        for name in (
            "local_power_watts",
            "local_electricity_usd_per_kwh",
            "local_amortisation_usd_per_hour",
            "local_gpu_memory_gib",
            "refresh_interval_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(name, f"must be a finite number >= 0, got {value!r}")
        if self.local_gpu_count < 0:
            raise ConfigError("local_gpu_count", "must not be negative")
        if self.local_gpu_count > 0 and not self.local_gpu_name.strip():
            raise ConfigError("local_gpu_name", "required when local_gpu_count > 0")
        if not self.refresh_timeout_s > 0:
            raise ConfigError("refresh_timeout_s", "must be positive")
        for name in ("lambda_api_url", "runpod_api_url"):
            url = getattr(self, name)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(name, f"must be an http(s) URL, got {url!r}")
        if self.catalog_file and not os.path.isfile(self.catalog_file):
            raise ConfigError("catalog_file", f"file not found: {self.catalog_file}")
        if self.user_catalog_file and not os.path.isfile(self.user_catalog_file):
            raise ConfigError("user_catalog_file", f"file not found: {self.user_catalog_file}")

    def resolved_state_dir(self) -> Path:
        """The state folder in use."""
        return Path(self.state_dir).expanduser() if self.state_dir else default_state_dir()

    def resolved_database_path(self) -> Path:
        """The SQLite file in use."""
        return Path(self.database_path).expanduser() if self.database_path else self.resolved_state_dir() / "cost.sqlite3"

    def resolved_user_catalog(self) -> Path:
        """The user catalog path (read when it exists; re-read on every RefreshPrices)."""
        return Path(self.user_catalog_file).expanduser() if self.user_catalog_file else default_user_catalog()
