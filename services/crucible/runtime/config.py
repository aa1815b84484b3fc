"""Frozen service configuration built from command-line flags and environment variables.

Each service declares one frozen dataclass (subclassing ServerConfig, or ModelServerConfig for the three model
services); `load_config` fills it: flag > env > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from crucible.clients import credfiles
from crucible.clients.credfiles import CredentialFileError, check_key_pair, read_ca_file
from crucible.runtime.errors import ConfigError

if TYPE_CHECKING:
    from crucible.runtime.batching import BatchSettings
    from crucible.runtime.validation import TextLimits


class SettingsClass(Protocol):
    """What load_config and add_arguments need of a config class: a dataclass of setting() fields with validate()
    (ServerConfig and its subclasses, and configs of non-gRPC servers such as the console's ConsoleConfig)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def validate(self) -> None: ...


C = TypeVar("C", bound=SettingsClass)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def setting(default: Any, help: str, *, secret: bool = False, choices: Sequence[str] | None = None) -> Any:
    """Declare a config field with its documentation (shown by --help and in docs) and flags such as `secret`."""
    metadata = {"help": help, "secret": secret, "choices": tuple(choices) if choices else None}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults (config is frozen)")
    return dataclasses.field(default=default, metadata=metadata)


def redefault(base: type, name: str, default: Any) -> Any:
    """Re-declare a setting a subclass inherits from `base` with the subclass's own default; its help, choices and
    flags stay the base declaration's (one declaration, per-service defaults)."""
    declared = {f.name: f for f in dataclasses.fields(base)}[name]
    return dataclasses.field(default=default, metadata=declared.metadata)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Settings every Crucible server shares; services subclass it and add their own fields.

    Environment variables: CRUCIBLE_<SERVICE>_<FIELD> (e.g. CRUCIBLE_DETECTOR_PORT), then CRUCIBLE_<FIELD>
    (e.g. CRUCIBLE_AUTH_TOKEN, shared by all services). Flags: --field-name. Precedence: flag, service env, global env, default.
    """

    host: str = setting("127.0.0.1", "Address the gRPC and metrics servers bind to; 0.0.0.0 to listen on all interfaces.")
    port: int = setting(0, "gRPC port; 0 picks a free port (tests). Each service has its own default.")
    metrics_port: int = setting(
        -1, "Prometheus /metrics HTTP port; -1 means the gRPC port + 1000 (a free port when the gRPC port is 0); 0 a free port."
    )
    metrics_enabled: bool = setting(True, "Serve Prometheus metrics over HTTP at /metrics.")
    max_message_bytes: int = setting(
        64 * 1024 * 1024, "Largest request or response message in bytes; larger ones fail with RESOURCE_EXHAUSTED."
    )
    max_concurrent_rpcs: int = setting(
        0, "Calls served at once before new ones get RESOURCE_EXHAUSTED; 0 means unbounded (services bound their own queues)."
    )
    keepalive_time_s: float = setting(60.0, "Seconds between server keepalive pings on an idle connection.")
    keepalive_timeout_s: float = setting(20.0, "Seconds to wait for a keepalive ping ack before closing the connection.")
    keepalive_min_ping_interval_s: float = setting(
        10.0, "Shortest interval between client pings the server tolerates; faster pinging clients get GOAWAY."
    )
    grace_period_s: float = setting(10.0, "On SIGTERM/SIGINT, seconds in-flight calls get to finish before being cancelled.")
    shutdown_drain_s: float = setting(
        0.0, "On SIGTERM/SIGINT, seconds to keep serving while health says NOT_SERVING, so load balancers drain first."
    )
    auth_token: str = setting(
        "",
        "Bearer token required in 'authorization: Bearer <token>' metadata; empty disables auth. Health is exempt.",
        secret=True,
    )
    auth_token_file: str = setting(
        "",
        "File holding the bearer token (first line); used when auth_token is empty. A file without a token (empty or "
        "blank) refuses the start: it never means auth off.",
    )
    tls_cert_file: str = setting(
        "",
        "PEM certificate chain for TLS; with tls_key_file it turns TLS on. Checked at start: one that does not parse refuses it.",
    )
    tls_key_file: str = setting(
        "", "PEM private key for TLS (unencrypted); one that does not match tls_cert_file refuses the start."
    )
    tls_client_ca_file: str = setting(
        "", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS). Checked to parse at start."
    )
    log_level: str = setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = setting(
        "json", "Log line format: one JSON object per line, or human-readable text.", choices=("json", "text")
    )

    def validate(self) -> None:
        """Check cross-field constraints; services extend this and raise ConfigError with the field name."""
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be within 0..65535, got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port", f"must be -1 (gRPC port + 1000), 0 (free port) or a port, got {self.metrics_port}")
        if self.max_message_bytes <= 0:
            raise ConfigError("max_message_bytes", "must be positive")
        if self.max_concurrent_rpcs < 0:
            raise ConfigError("max_concurrent_rpcs", "must be 0 (unbounded) or positive")
        if self.grace_period_s < 0:
            raise ConfigError("grace_period_s", "must not be negative")
        if self.shutdown_drain_s < 0:
            raise ConfigError("shutdown_drain_s", "must not be negative")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file", "tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file", "client certificates need TLS: set tls_cert_file and tls_key_file")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_token_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(name, f"file not found: {path}")
        # Fail closed: a token file that holds no token, or TLS files that do not parse or match, stop the start here
        # (naming the setting) instead of serving without auth or failing later inside gRPC's bind.
        self.bearer_token()
        self.tls_material()

    def text_limits(self) -> TextLimits:
        """Byte limits the runtime holds every request's strings to before its handler runs (none by default;
        the model services set them)."""
        from crucible.runtime.validation import TextLimits

        return TextLimits()

    def resolved_metrics_port(self, grpc_port: int) -> int:
        """The metrics port to bind given the bound gRPC port (-1 means gRPC port + 1000, 0 means any free port)."""
        if self.metrics_port == -1:
            return grpc_port + 1000 if self.port != 0 else 0
        return self.metrics_port

    def bearer_token(self) -> str:
        """The configured bearer token, read from auth_token_file when auth_token is empty; '' when auth is off.

        An auth_token_file that holds no token (empty, blank first line) raises ConfigError: set, it means auth on.
        """
        if self.auth_token:
            return self.auth_token
        if self.auth_token_file:
            return read_token_file(self.auth_token_file, "auth_token_file")
        return ""

    def tls_material(self) -> tuple[bytes, bytes, bytes | None] | None:
        """(certificate chain, private key, client CA bundle or None) checked to parse and to belong together, or None
        without TLS; ConfigError naming tls_cert_file, tls_key_file or tls_client_ca_file otherwise."""
        if not self.tls_cert_file:
            return None
        try:
            cert, key = check_key_pair(self.tls_cert_file, self.tls_key_file, "tls_cert_file", "tls_key_file")
            client_ca = read_ca_file(self.tls_client_ca_file, "tls_client_ca_file") if self.tls_client_ca_file else None
        except CredentialFileError as err:
            raise ConfigError(err.setting, err.detail) from None
        return cert, key, client_ca

    def public_dict(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for start-up logs and records."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = ("***" if value else "") if f.metadata.get("secret") else value
        return out


@dataclasses.dataclass(frozen=True)
class ModelServerConfig(ServerConfig):
    """Settings shared by the services that run models (detector, proposer, target scorer): the model, where it runs,
    request byte limits and the one dynamic-batching block. A service keeps its own defaults with `redefault`."""

    model: str = setting(
        "smollm2-135m-instruct",
        "Causal LM: a registry alias (smollm2-135m-instruct) or a local Hugging Face folder (e.g. gpt-neo-2.7B, Llama-3-8B).",
    )
    device: str = setting("auto", "Where the model runs: cpu, cuda, cuda:N, or auto (CUDA when present).")
    dtype: str = setting(
        "auto",
        "Weight dtype: float32, bfloat16, or auto (bf16 on CUDA and on CPUs with native bf16, else fp32).",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    model_cache_dir: str = setting("", "Where prepared models live; empty means $CRUCIBLE_CACHE_DIR or ~/.cache/crucible.")
    max_message_bytes: int = setting(
        16 * 1024 * 1024,
        "Largest request or response message in bytes; larger ones fail with RESOURCE_EXHAUSTED before they are parsed. "
        "Model requests are text: max_request_bytes of it plus framing.",
    )
    max_text_bytes: int = setting(
        32768,
        "Most UTF-8 bytes in any one string of a request (a text, an option, a choice, a prefix), checked before any "
        "tokenising: INVALID_ARGUMENT naming the field. 16 bytes per token x a 2048-token sequence; 0 = no limit.",
    )
    max_request_bytes: int = setting(
        4 * 1024 * 1024,
        "Most UTF-8 bytes of all the strings of one request (or one stream message) together; INVALID_ARGUMENT "
        "beyond it. Bounds the tokenising and memory one call can ask for; 0 = no limit.",
    )
    malloc_arena_max: int = setting(
        2,
        "glibc malloc arenas the process may create (mallopt M_ARENA_MAX), set at start; fewer arenas keep less freed "
        "memory stranded per thread after a burst. 0 leaves glibc's default (8 x cores).",
    )
    # ---- dynamic batching (crucible.runtime.batching): one block, the same meaning in every model service ----
    max_batch_size: int = setting(
        32,
        "Most items (texts, prompts or generated rows) in one forward pass; larger batches give more throughput "
        "and more latency.",
    )
    max_batch_tokens: int = setting(
        16384,
        "Token budget of one batch: rows x the longest row's cost (tokens scored; for generation prompt plus "
        "max_new_tokens). Bounds activation memory; 0 disables the budget.",
    )
    max_wait_ms: float = setting(
        5.0,
        "Milliseconds a batch window stays open after its first item before running partly full; a longer window "
        "gathers more concurrent calls under light load.",
    )
    max_queue_size: int = setting(1024, "Most items waiting for a batch; past it calls fail at once with RESOURCE_EXHAUSTED.")

    def text_limits(self) -> TextLimits:
        from crucible.runtime.validation import TextLimits

        return TextLimits(self.max_text_bytes, self.max_request_bytes)

    def model_cache_path(self) -> Path | None:
        """`model_cache_dir` as a path; None means the loaders' default ($CRUCIBLE_CACHE_DIR or ~/.cache/crucible)."""
        return Path(self.model_cache_dir) if self.model_cache_dir else None

    def batch_settings(self) -> BatchSettings:
        """The batching block as the runtime batcher's settings (max_wait_ms in seconds)."""
        from crucible.runtime.batching import BatchSettings

        return BatchSettings(
            max_batch_size=self.max_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_wait_s=self.max_wait_ms / 1000.0,
            max_queue_size=self.max_queue_size,
        )

    def validate(self) -> None:
        super().validate()
        for name in ("max_text_bytes", "max_request_bytes", "malloc_arena_max"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must not be negative")
        if not self.model.strip():
            raise ConfigError("model", "must name a registry alias or a local folder")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError("device", f"must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        for name in ("max_batch_size", "max_queue_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.max_batch_tokens < 0:
            raise ConfigError("max_batch_tokens", "must be 0 (no budget) or positive")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ConfigError("max_wait_ms", "must not be negative")


def read_token_file(path: str, field: str = "auth_token_file") -> str:
    """The bearer token in a token file (its first line, stripped; only that line is read), or ConfigError naming
    `field` when the file is unreadable, empty, blank or not printable ASCII: a token file never means "no auth"."""
    try:
        return credfiles.read_token_file(path, field)
    except CredentialFileError as err:
        raise ConfigError(err.setting, err.detail) from None


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(cls: type, name: str, raw: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(name, f"expected a boolean (true/false), got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(name, f"expected a number, got {raw!r}") from None
    if kind is str:
        return raw
    if origin is tuple:
        (item_kind, *_rest) = typing.get_args(kind)
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        return tuple(_parse_value(cls, name, p, item_kind) for p in parts)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw.strip().lower() in {"", "none"}:
            return None
        return _parse_value(cls, name, raw, inner[0])
    raise TypeError(f"{cls.__name__}.{name}: unsupported config type {kind!r}")


def env_names(service: str, field_name: str) -> tuple[str, str]:
    """The two environment variables that can set a field: service-specific first, then global."""
    return (f"CRUCIBLE_{service.upper()}_{field_name.upper()}", f"CRUCIBLE_{field_name.upper()}")


def add_arguments(parser: argparse.ArgumentParser, cls: type[SettingsClass]) -> None:
    """Add one --flag per config field; defaults stay None so env and dataclass defaults can apply."""
    for f in dataclasses.fields(cls):
        default = f.default
        shown = "***" if f.metadata.get("secret") and default else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata.get('help', '')} (default: {shown!r})".replace("%", "%%"),  # argparse formats help with %
        )


def add_setting_arguments(parser: argparse._ActionsContainer, cls: type[ServerConfig], names: Sequence[str]) -> None:
    """Add --flags for some settings of a config class, with the declaration's defaults, types, choices and help.

    For in-process tools (`crucible detect`) that build the config from these flags alone: no environment layering,
    so the defaults are the real ones and argparse checks types and choices.
    """
    kinds = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        declared, kind = fields[name], kinds[name]
        if kind not in (str, int, float):
            raise TypeError(f"{cls.__name__}.{name}: only str, int and float settings become plain flags")
        help_text = f"{declared.metadata.get('help', '')} (default: {declared.default!r})"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=declared.default,
            choices=declared.metadata.get("choices"),
            help=help_text.replace("%", "%%"),
        )


def load_config(
    cls: type[C],
    service: str,
    *,
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> C:
    """Build and validate a service config: keyword overrides > flags > CRUCIBLE_<SERVICE>_X > CRUCIBLE_X > default."""
    env = os.environ if env is None else env
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    kinds = _field_types(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides.pop(f.name)
        elif given.get(f.name) is not None:
            raw = given[f.name]
            values[f.name] = _parse_value(cls, f.name, raw, kinds[f.name]) if isinstance(raw, str) else raw
        else:
            for var in env_names(service, f.name):
                if var in env:
                    values[f.name] = _parse_value(cls, f.name, env[var], kinds[f.name])
                    break
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] not in choices:
            raise ConfigError(f.name, f"must be one of {', '.join(choices)}, got {values[f.name]!r}")
    if overrides:
        raise ConfigError(next(iter(overrides)), f"unknown setting for {cls.__name__}")
    config = cls(**values)
    config.validate()
    return config


def describe(cls: type[ServerConfig], service: str) -> list[tuple[str, str, str, str]]:
    """Rows (flag, env var, default, help) documenting every setting of a config class."""
    rows = []
    for f in dataclasses.fields(cls):
        rows.append(("--" + f.name.replace("_", "-"), env_names(service, f.name)[0], repr(f.default), f.metadata.get("help", "")))
    return rows
