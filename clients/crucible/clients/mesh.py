"""`Mesh`: one object that connects to all five services from one config (environment variables or a TOML file).

Channels open lazily on first use and the object pickles, so it can be created in a driver and used in workers.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible.clients.channel import ChannelConfig
from crucible.clients.cost import CostClient
from crucible.clients.credfiles import read_ca_file, read_token_file
from crucible.clients.detector import DetectorClient
from crucible.clients.proposer import ProposerClient
from crucible.clients.scheduler import SchedulerClient
from crucible.clients.scorer import ScorerClient

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


class Mesh:
    """Typed clients of the services, sharing one config. `async with Mesh.from_env() as mesh: await mesh.detector...`."""

    def __init__(self, config: MeshConfig | None = None) -> None:
        self.config = config or MeshConfig.from_env()
        self.detector = DetectorClient(self.config.services["detector"])
        self.proposer = ProposerClient(self.config.services["proposer"])
        self.scorer = ScorerClient(self.config.services["scorer"])
        self.scheduler = SchedulerClient(self.config.services["scheduler"])
        self.cost = CostClient(self.config.services["cost"])

    @classmethod
    def from_env(cls) -> Mesh:
        return cls(MeshConfig.from_env())

    @classmethod
    def local(cls, base_port: int | None = None, **shared: Any) -> Mesh:
        """The mesh `crucible up [--base-port N]` starts on 127.0.0.1."""
        data: dict[str, Any] = dict(shared)
        if base_port is not None:
            for i, name in enumerate(DEFAULT_ADDRESSES):
                data[name] = {"addresses": [f"127.0.0.1:{base_port + i}"]}
        return cls(MeshConfig.from_mapping(data))

    async def close(self) -> None:
        for client in (self.detector, self.proposer, self.scorer, self.scheduler, self.cost):
            await client.close()

    async def __aenter__(self) -> Mesh:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])  # type: ignore[misc]
