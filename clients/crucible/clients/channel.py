"""Client channels: one long-lived grpc.aio channel per target with retries, load balancing, auth, TLS and request ids.

Retries come from the channel's service config (UNAVAILABLE only, idempotent methods only), never hand-written loops.
MeshConfig (every service's ChannelConfig from the environment or a TOML file) and the command lines' flags are here too.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import ipaddress
import json
import os
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from crucible.clients.credfiles import read_ca_file, read_token_file

REQUEST_ID_HEADER = "x-request-id"

#: Set this in your own code to tie a batch of calls to one id; otherwise each call gets a fresh one.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("crucible_client_request_id", default="")

#: Methods safe to retry on UNAVAILABLE, per service: reads and computations without side effects, plus writes that are
#: idempotent by contract (CreateJob and CreateBudget carry a request_id, RecordUsage dedupes per job and interval, CancelJob).
IDEMPOTENT_METHODS: dict[str, tuple[str, ...]] = {
    "crucible.detector.v1.DetectorService": ("Detect", "GetInfo"),
    "crucible.proposer.v1.ProposerService": ("Propose", "CheckEquivalence", "Embed", "GetInfo"),
    "crucible.scorer.v1.ScorerService": ("ScoreChoices", "ScoreTexts", "GetInfo"),
    "crucible.scheduler.v1.SchedulerService": (
        "CreateJob",
        "GetJob",
        "ListJobs",
        "CancelJob",
        "ListArtifacts",
        "EstimateRequirements",
        "PlanPlacement",
        "ListProviders",
        "ListJobProgress",
    ),
    "crucible.cost.v1.CostService": (
        "ListOffers",
        "EstimateCost",
        "CompareProviders",
        "CreateBudget",
        "GetBudget",
        "ListBudgets",
        "RecordUsage",
        "CheckAdmission",
    ),
}


@dataclasses.dataclass(frozen=True)
class ChannelConfig:
    """How to reach one service.

    `addresses` are host:port strings (several = client-side round robin over them), or one full gRPC target such as
    `dns:///detector.crucible.svc.cluster.local:50051` (round robin over every resolved address).
    """

    addresses: tuple[str, ...]
    token: str = ""  #: bearer token sent as `authorization: Bearer ...` on every call
    tls: bool = False  #: use TLS (with the system roots unless root_certificates is set)
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None  #: PEM chain for mTLS
    client_key: bytes | None = None
    tls_server_name: str = ""  #: override the name checked against the server certificate
    timeout_s: float = 30.0  #: default deadline of every call
    max_attempts: int = 4  #: retry attempts (first call included) for idempotent methods on UNAVAILABLE
    max_message_bytes: int = 64 * 1024 * 1024

    @property
    def target(self) -> str:
        """The gRPC target: the single address, or an ipv4:/ipv6: list of IP literals for client-side round robin."""
        if not self.addresses:
            raise ValueError("no address configured")
        if len(self.addresses) == 1:
            return self.addresses[0]
        hosts = [a.rsplit(":", 1)[0] for a in self.addresses]
        if all(_is_ip(h, 4) for h in hosts):
            return "ipv4:" + ",".join(self.addresses)
        if all(_is_ip(h.strip("[]"), 6) for h in hosts):
            return "ipv6:" + ",".join(self.addresses)
        raise ValueError(
            f"several addresses must all be IPv4 or all IPv6 literals ({', '.join(self.addresses)}); "
            "for host names use one dns:///name:port target, which balances over every address it resolves to"
        )


def _is_ip(host: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def service_config(service: str, max_attempts: int) -> str:
    """gRPC service config JSON: round robin, and a retry policy for the service's idempotent methods."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    methods = IDEMPOTENT_METHODS.get(service, ())
    if methods and max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": service, "method": m} for m in methods],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


class _Metadata(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds the request id (from REQUEST_ID or a fresh one) and the bearer token to every call."""

    def __init__(self, token: str) -> None:
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = list(details.metadata or ())
        if not any(k == REQUEST_ID_HEADER for k, _ in metadata):
            metadata.append((REQUEST_ID_HEADER, REQUEST_ID.get() or uuid.uuid4().hex))
        metadata.extend(self._auth)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def open_channel(config: ChannelConfig, service: str) -> grpc.aio.Channel:
    """Open the long-lived channel for `service` (a full proto service name) as configured."""
    options = _options(config, service)
    interceptors: Sequence[Any] = [_Metadata(config.token)]
    if config.tls:
        creds = grpc.ssl_channel_credentials(config.root_certificates, config.client_key, config.client_certificate)
        return grpc.aio.secure_channel(config.target, creds, options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(config.target, options=options, interceptors=interceptors)


class _SyncMetadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """The blocking-API twin of _Metadata: request id and bearer token on every call."""

    def __init__(self, token: str) -> None:
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(k == REQUEST_ID_HEADER for k, _ in metadata):
            metadata.append((REQUEST_ID_HEADER, REQUEST_ID.get() or uuid.uuid4().hex))
        metadata.extend(self._auth)
        return _SyncCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


class _SyncCallDetails(grpc.ClientCallDetails):
    def __init__(
        self, method: str, timeout: float | None, metadata: Any, credentials: Any, wait_for_ready: Any, compression: Any
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def _options(config: ChannelConfig, service: str) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(service, config.max_attempts)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
    ]
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return options


def open_sync_channel(config: ChannelConfig, service: str) -> grpc.Channel:
    """The blocking-API channel for `service`, configured exactly like open_channel (for synchronous command lines)."""
    options = _options(config, service)
    if config.tls:
        creds = grpc.ssl_channel_credentials(config.root_certificates, config.client_key, config.client_certificate)
        channel = grpc.secure_channel(config.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(config.target, options=options)
    return grpc.intercept_channel(channel, _SyncMetadata(config.token))


# ------------------------------------------------------------------------------------------------ command lines

#: Names of the services that `MeshConfig` knows, as used in CRUCIBLE_<NAME>_ADDRESS.
#: Default addresses: the ports `crucible up` uses.
DEFAULT_ADDRESSES = {
    "detector": "127.0.0.1:50051",
    "proposer": "127.0.0.1:50052",
    "scorer": "127.0.0.1:50053",
    "scheduler": "127.0.0.1:50054",
    "cost": "127.0.0.1:50055",
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Per-service channel settings."""

    services: Mapping[str, ChannelConfig]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MeshConfig:
        """Client settings from the environment; a CRUCIBLE_CLIENT_CONFIG TOML file is read first.

        CRUCIBLE_<SVC>_ADDRESS (comma-separated IPs or a dns:/// target); the token from CRUCIBLE_CLIENT_TOKEN,
        CRUCIBLE_AUTH_TOKEN, CRUCIBLE_CLIENT_TOKEN_FILE or CRUCIBLE_AUTH_TOKEN_FILE (first line), in that order;
        a token file without a token, or a CA file that is not PEM certificates, raises CredentialFileError (a
        ValueError naming the variable or setting);
        CRUCIBLE_CLIENT_TLS=1, CRUCIBLE_CLIENT_CA_FILE, CRUCIBLE_CLIENT_TIMEOUT_S.
        """
        env = os.environ if env is None else env
        base: dict[str, Any] = {}
        if env.get("CRUCIBLE_CLIENT_CONFIG"):
            base = tomllib.loads(Path(env["CRUCIBLE_CLIENT_CONFIG"]).read_text())
        overrides: dict[str, Any] = {}
        if env.get("CRUCIBLE_CLIENT_TOKEN") or env.get("CRUCIBLE_AUTH_TOKEN"):
            overrides["token"] = env.get("CRUCIBLE_CLIENT_TOKEN") or env.get("CRUCIBLE_AUTH_TOKEN")
        elif env.get("CRUCIBLE_CLIENT_TOKEN_FILE") or env.get("CRUCIBLE_AUTH_TOKEN_FILE"):
            variable = "CRUCIBLE_CLIENT_TOKEN_FILE" if env.get("CRUCIBLE_CLIENT_TOKEN_FILE") else "CRUCIBLE_AUTH_TOKEN_FILE"
            overrides["token"] = read_token_file(env[variable], variable)  # a file without a token is an error
        if env.get("CRUCIBLE_CLIENT_TLS"):
            overrides["tls"] = env["CRUCIBLE_CLIENT_TLS"].lower() in {"1", "true", "yes"}
        if env.get("CRUCIBLE_CLIENT_CA_FILE"):
            overrides["ca_file"] = env["CRUCIBLE_CLIENT_CA_FILE"]
        if env.get("CRUCIBLE_CLIENT_TIMEOUT_S"):
            overrides["timeout_s"] = float(env["CRUCIBLE_CLIENT_TIMEOUT_S"])
        for name in DEFAULT_ADDRESSES:
            value = env.get(f"CRUCIBLE_{name.upper()}_ADDRESS")
            if value:
                overrides.setdefault(name, {})["addresses"] = [a.strip() for a in value.split(",") if a.strip()]
        return cls.from_mapping(_merge(base, overrides))

    @classmethod
    def from_file(cls, path: str | Path) -> MeshConfig:
        """A TOML file: top-level token/tls/ca_file/timeout_s apply to all; [detector] etc. override per service."""
        return cls.from_mapping(tomllib.loads(Path(path).read_text()))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> MeshConfig:
        shared = {k: v for k, v in data.items() if k not in DEFAULT_ADDRESSES}
        unknown = set(shared) - {"token", "tls", "ca_file", "timeout_s", "max_attempts", "tls_server_name"}
        if unknown:
            raise ValueError(f"unknown client setting(s): {sorted(unknown)}")
        services = {}
        for name, default in DEFAULT_ADDRESSES.items():
            merged = {**shared, **data.get(name, {})}
            addresses = merged.get("addresses") or [merged.get("address") or default]
            ca_file = merged.get("ca_file")
            services[name] = ChannelConfig(
                addresses=tuple(addresses),
                token=merged.get("token", ""),
                tls=bool(merged.get("tls", False) or ca_file),
                root_certificates=read_ca_file(ca_file, "ca_file") if ca_file else None,
                tls_server_name=merged.get("tls_server_name", ""),
                timeout_s=float(merged.get("timeout_s", 30.0)),
                max_attempts=int(merged.get("max_attempts", 4)),
            )
        return cls(services)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


CLI_SERVICES = ("detector", "proposer", "scorer", "scheduler", "cost")


def add_connection_arguments(
    parser: Any, *, address: bool = True, token: bool = True, timeout: bool = True, address_help: str = ""
) -> None:
    """Connection flags every command line shares; unset flags fall back to the SDK config (see cli_channel_config).

    Flags: --address, --token, --token-file, --tls, --ca-file, --tls-server-name, --timeout. Pass address/token/timeout
    False where a command already defines that flag itself (its value is still read by cli_channel_config).
    """
    group = parser.add_argument_group(
        "connection",
        "unset flags come from CRUCIBLE_CLIENT_CONFIG (TOML) and CRUCIBLE_* variables "
        "(CRUCIBLE_<SERVICE>_ADDRESS, CRUCIBLE_CLIENT_TOKEN[_FILE], CRUCIBLE_CLIENT_TLS, CRUCIBLE_CLIENT_CA_FILE, "
        "CRUCIBLE_CLIENT_TIMEOUT_S)",
    )
    if address:
        group.add_argument(
            "--address", default=None, metavar="HOST:PORT", help=address_help or "service address, or a dns:/// target"
        )
    if token:
        group.add_argument(
            "--token",
            default=None,
            help="bearer token (prefer --token-file or CRUCIBLE_CLIENT_TOKEN: arguments are visible to other local users)",
        )
    group.add_argument("--token-file", default=None, metavar="PATH", help="file whose first line is the bearer token")
    group.add_argument(
        "--tls", action=argparse.BooleanOptionalAction, default=None, help="use TLS (system roots unless --ca-file)"
    )
    group.add_argument("--ca-file", default=None, metavar="PEM", help="CA certificate(s) to verify the server; implies --tls")
    group.add_argument("--tls-server-name", default=None, metavar="NAME", help="name checked against the server certificate")
    if timeout:
        group.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="deadline of each call")


def cli_channel_config(service: str, args: Any = None, *, env: Mapping[str, str] | None = None) -> ChannelConfig:
    """The ChannelConfig of `service` for a command line: the SDK config (TOML + env, as MeshConfig.from_env) with the
    command's flags on top. Flags left at None keep the config's value; `args` may be any object with those attributes.

    Raises ValueError (with the setting named) for a token or CA file that cannot be read, holds no token or does
    not parse as PEM certificates (crucible.clients.credfiles.CredentialFileError).
    """
    if service not in CLI_SERVICES:
        raise ValueError(f"unknown service {service!r}; choose from {', '.join(CLI_SERVICES)}")
    try:
        config = MeshConfig.from_env(env).services[service]
    except OSError as err:
        raise ValueError(f"client config: cannot read {err.filename}: {err.strerror}") from None

    def flag(name: str) -> Any:
        return getattr(args, name, None) if args is not None else None

    changes: dict[str, Any] = {}
    if flag("address"):
        changes["addresses"] = tuple(a.strip() for a in str(flag("address")).split(",") if a.strip())
    if flag("token"):
        changes["token"] = str(flag("token"))
    elif flag("token_file"):
        changes["token"] = read_token_file(flag("token_file"), "--token-file")
    if flag("ca_file"):
        changes["root_certificates"] = read_ca_file(flag("ca_file"), "--ca-file")
        changes["tls"] = True
    if flag("tls") is not None:
        changes["tls"] = bool(flag("tls")) or "root_certificates" in changes
    if flag("tls_server_name"):
        changes["tls_server_name"] = str(flag("tls_server_name"))
    if flag("timeout") is not None:
        if not float(flag("timeout")) > 0:
            raise ValueError("--timeout: must be positive")
        changes["timeout_s"] = float(flag("timeout"))
    return dataclasses.replace(config, **changes)
