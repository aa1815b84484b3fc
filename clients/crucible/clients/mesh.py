"""`Mesh`: one object that connects to all five services from one config (environment variables or a TOML file).

Channels open lazily on first use and the object pickles, so it can be created in a driver and used in workers.
"""

from __future__ import annotations

from typing import Any

# The settings live beside the channels they configure (the command lines read them too); re-exported here.
from crucible.clients.channel import DEFAULT_ADDRESSES as DEFAULT_ADDRESSES
from crucible.clients.channel import MeshConfig as MeshConfig
from crucible.clients.cost import CostClient
from crucible.clients.detector import DetectorClient
from crucible.clients.proposer import ProposerClient
from crucible.clients.scheduler import SchedulerClient
from crucible.clients.scorer import ScorerClient


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
