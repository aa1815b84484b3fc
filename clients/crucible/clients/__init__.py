"""Crucible client SDK: typed async clients for the five services, the Mesh, and the reward and attack loops.

Importable as `crucible.clients`; `from crucible.clients import Mesh, MeshConfig, SyncMesh` (loaded on first use).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Mesh": "crucible.clients.mesh",
    "MeshConfig": "crucible.clients.mesh",
    "SyncMesh": "crucible.clients.sync",
    "ChannelConfig": "crucible.clients.channel",
    "CompositeReward": "crucible.clients.reward",
    "RewardConfig": "crucible.clients.reward",
    "SecaAttack": "crucible.clients.attack",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crucible.clients' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
