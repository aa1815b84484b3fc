"""Model names to local folders for the SDK's trainer-side helpers (tinker_env, evade_eval), without importing the servers.

A local folder is used as it is; a packaged alias resolves through the servers' model registry when the servers are
installed (found by the `crucible.model_resolvers` entry point); any other name goes to transformers as it is.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

#: Entry-point group a model registry registers under (the servers' `crucible` distribution: crucible.models).
RESOLVER_GROUP = "crucible.model_resolvers"


def resolve_model_path(model: str) -> str:
    """A local folder for `model`: itself when it is a folder, else the registry's folder for a packaged alias
    (converted on first use), else `model` unchanged (a hub id for transformers' local cache; no resolver installed).

    Raises the registry's own error (a ValueError naming the setting) for a name it cannot resolve.
    """
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    resolvers = sorted(entry_points(group=RESOLVER_GROUP), key=lambda e: e.name)
    if not resolvers:
        return model
    return str(resolvers[0].load()(model, prepare=True).path)
