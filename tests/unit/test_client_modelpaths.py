"""crucible.clients.modelpaths: the SDK resolves model names without importing the servers (issue 28).

A folder stays a folder; a packaged alias goes to the registry the servers register by entry point; without one the
name passes through for transformers.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from crucible.clients import modelpaths


def test_a_local_folder_is_used_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelpaths, "entry_points", lambda group: pytest.fail("no resolver needed for a folder"))
    assert modelpaths.resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_without_the_servers_a_name_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelpaths, "entry_points", lambda group: [])
    assert modelpaths.resolve_model_path("org/some-model") == "org/some-model"


def test_the_servers_registry_is_found_by_its_entry_point() -> None:
    (resolver,) = [e for e in modelpaths.entry_points(group=modelpaths.RESOLVER_GROUP) if e.name == "packaged"]
    assert resolver.value == "crucible.models.registry:resolve_model"


def test_a_registered_resolver_resolves_an_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Resolved:
        path = tmp_path / "converted"

    def fake(setting: str, *, prepare: bool) -> Resolved:
        calls.append((setting, prepare))
        return Resolved()

    monkeypatch.setattr(modelpaths, "entry_points", lambda group: [EntryPoint("packaged", "x:y", group)])
    monkeypatch.setattr(EntryPoint, "load", lambda self: fake)
    assert modelpaths.resolve_model_path("smollm2-135m-instruct") == str(tmp_path / "converted")
    assert calls == [("smollm2-135m-instruct", True)]
