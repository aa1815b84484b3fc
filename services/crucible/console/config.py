"""Settings of the web console: one frozen dataclass filled from flags and CRUCIBLE_CONSOLE_* / CRUCIBLE_* env.

The mesh it talks to is configured like every SDK client (CRUCIBLE_<SVC>_ADDRESS, CRUCIBLE_CLIENT_TOKEN, TLS, ...).
"""

from __future__ import annotations

import dataclasses

from crucible.runtime.config import setting
from crucible.runtime.errors import ConfigError

DEFAULT_PORT = 8080


@dataclasses.dataclass(frozen=True)
class ConsoleConfig:
    """Web console: providers, job submission, live job monitor and budgets in a browser, over the mesh's SDK."""

    host: str = setting("127.0.0.1", "Address the console's HTTP server binds to; 0.0.0.0 to listen on all interfaces.")
    port: int = setting(DEFAULT_PORT, "HTTP port of the console; 0 picks a free port (tests).")
    max_upload_bytes: int = setting(
        32 * 1024 * 1024,
        "Largest code archive (zip or tar.gz) a browser may upload with a job, in bytes; the "
        "scheduler's max message size (64 MiB by default) is the hard ceiling.",
    )
    max_sessions: int = setting(256, "Browser sessions kept at once; the least recently used one is dropped past it.")
    session_ttl_s: float = setting(12 * 3600.0, "Seconds a browser session lasts without activity.")
    max_log_bytes_per_event: int = setting(65536, "Largest log chunk sent to the browser in one server-sent event.")
    log_level: str = setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = setting("json", "Log line format.", choices=("json", "text"))

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", "must be between 0 and 65535")
        if not 1024 <= self.max_upload_bytes <= 64 * 1024 * 1024:
            raise ConfigError("max_upload_bytes", "must be between 1 KiB and 64 MiB (the scheduler's message limit)")
        if self.max_sessions < 1:
            raise ConfigError("max_sessions", "must be at least 1")
        if self.session_ttl_s <= 0:
            raise ConfigError("session_ttl_s", "must be positive")
        if not 1024 <= self.max_log_bytes_per_event <= 1 << 20:
            raise ConfigError("max_log_bytes_per_event", "must be between 1 KiB and 1 MiB")

    def public_dict(self) -> dict[str, object]:
        """Every setting (the console config holds no secret: tokens come from the SDK config)."""
        return dataclasses.asdict(self)
