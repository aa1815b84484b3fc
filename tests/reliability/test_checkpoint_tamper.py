"""The checkpoint SDK against tampered checkpoints: every malformed one is skipped with a warning for an older valid one.

Links (symbolic or hard) are refused, and torch.load reads tensors only unless asked otherwise (issue 22, probe 11).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from crucible.clients import checkpoint

GOOD = b"good checkpoint of step 1"


def _step(root: Path, step: int) -> Path:
    return root / f"step-{step:012d}"


def _rewrite_manifest(folder: Path, **changes: object) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _outside_twin(folder: Path, tmp_path: Path) -> Path:
    """A file outside the checkpoint folder holding exactly the payload's bytes (so size and hash would match)."""
    twin = tmp_path / "elsewhere" / "secret.bin"
    twin.parent.mkdir(exist_ok=True)
    twin.write_bytes((folder / "state.pt").read_bytes())
    return twin


def _symlinked_payload(folder: Path, tmp_path: Path) -> None:
    twin = _outside_twin(folder, tmp_path)
    (folder / "state.pt").unlink()
    (folder / "state.pt").symlink_to(twin)


def _hardlinked_payload(folder: Path, tmp_path: Path) -> None:
    twin = _outside_twin(folder, tmp_path)
    (folder / "state.pt").unlink()
    os.link(twin, folder / "state.pt")


def _symlinked_manifest(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "manifest.json"
    outside.parent.mkdir(exist_ok=True)
    outside.write_bytes((folder / "manifest.json").read_bytes())
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(outside)


def _symlinked_folder(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "step"
    outside.parent.mkdir(exist_ok=True)
    folder.rename(outside)
    folder.symlink_to(outside, target_is_directory=True)


TAMPERING: dict[str, Callable[[Path, Path], None]] = {
    "manifest not JSON": lambda f, t: (f / "manifest.json").write_text("{not json"),
    "manifest a list": lambda f, t: (f / "manifest.json").write_text("[1, 2, 3]"),
    "manifest not UTF-8": lambda f, t: (f / "manifest.json").write_bytes(b"\xff\xfe\x00"),
    "size a string": lambda f, t: _rewrite_manifest(f, size="many"),
    "size missing": lambda f, t: _rewrite_manifest(f, size=None),
    "step missing": lambda f, t: _rewrite_manifest(f, step=None),
    "step of another folder": lambda f, t: _rewrite_manifest(f, step=7),
    "sha256 not hex": lambda f, t: _rewrite_manifest(f, sha256=12),
    "saved_at a word": lambda f, t: _rewrite_manifest(f, saved_at="yesterday"),
    "metrics a list": lambda f, t: _rewrite_manifest(f, metrics=["loss", 1]),
    "metrics not numbers": lambda f, t: _rewrite_manifest(f, metrics={"loss": "low"}),
    "format a boolean": lambda f, t: _rewrite_manifest(f, format=True),
    "manifest oversized": lambda f, t: _rewrite_manifest(f, padding="x" * (checkpoint.MAX_MANIFEST_BYTES + 1)),
    "payload missing": lambda f, t: (f / "state.pt").unlink(),
    "payload a folder": lambda f, t: ((f / "state.pt").unlink(), (f / "state.pt").mkdir()),
    "payload size differs": lambda f, t: (f / "state.pt").write_bytes(b"short"),
    "payload rewritten, same size": lambda f, t: (f / "state.pt").write_bytes(b"X" * len((f / "state.pt").read_bytes())),
    "payload a symbolic link": _symlinked_payload,
    "payload a hard link": _hardlinked_payload,
    "manifest a symbolic link": _symlinked_manifest,
    "step folder a symbolic link": _symlinked_folder,
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_a_tampered_checkpoint_is_skipped_for_the_older_valid_one(kind: str, tmp_path: Path, caplog) -> None:
    root = tmp_path / "ckpts"
    url = f"file://{root}"
    checkpoint.save_checkpoint(GOOD, 1, {"loss": 2.0}, url=url, keep=0)
    checkpoint.save_checkpoint(b"newer checkpoint of step 2!", 2, {"loss": 1.0}, url=url, keep=0)
    TAMPERING[kind](_step(root, 2), tmp_path)
    with caplog.at_level(logging.WARNING, logger="crucible.clients.checkpoint"):
        listed = checkpoint.list_checkpoints(url=url)
        found = checkpoint.load_latest(url=url, raw=True)
    hash_only = kind == "payload rewritten, same size"  # listing checks sizes; only loading hashes the payload
    assert [c.step for c in listed] == ([1, 2] if hash_only else [1])
    assert found is not None
    data, info = found
    assert (data, info.step) == (GOOD, 1)
    if kind != "payload missing":  # a payload without a manifest is normal (a save that died); the rest are warned
        assert any("step-000000000002" in r.getMessage() or "step 2" in r.getMessage() for r in caplog.records), kind


def test_a_payload_swapped_for_a_link_after_listing_is_not_read(tmp_path: Path, caplog) -> None:
    """Between the listing and the read, the payload becomes a link to a file with the same bytes: refused."""
    root = tmp_path / "ckpts"
    url = f"file://{root}"
    checkpoint.save_checkpoint(GOOD, 1, url=url, keep=0)
    checkpoint.save_checkpoint(b"step two bytes", 2, url=url, keep=0)
    listed = checkpoint.list_checkpoints(url=url)
    _symlinked_payload(_step(root, 2), tmp_path)
    original = checkpoint.list_checkpoints
    try:
        checkpoint.list_checkpoints = lambda *, url=None: listed  # type: ignore[assignment]
        with caplog.at_level(logging.WARNING, logger="crucible.clients.checkpoint"):
            data, info = checkpoint.load_latest(url=url, raw=True)  # type: ignore[misc]
    finally:
        checkpoint.list_checkpoints = original  # type: ignore[assignment]
    assert (data, info.step) == (GOOD, 1)


class _Runs:
    """An object whose unpickling runs code: it creates the file named in its argument."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_torch_load_defaults_to_weights_only_and_falls_back(tmp_path: Path, caplog) -> None:
    torch = pytest.importorskip("torch")
    root = tmp_path / "ckpts"
    url = f"file://{root}"
    marker = tmp_path / "code-ran"
    checkpoint.save_checkpoint({"w": torch.ones(2), "step": 1}, 1, url=url, keep=0)
    # A well-formed checkpoint (manifest and hash match) whose payload would run code when unpickled.
    checkpoint.save_checkpoint({"w": torch.zeros(2), "evil": _Runs(str(marker))}, 2, url=url, keep=0)
    with caplog.at_level(logging.WARNING, logger="crucible.clients.checkpoint"):
        state, info = checkpoint.load_latest(url=url)  # type: ignore[misc]
    assert not marker.exists(), "unpickling ran code: torch.load was not weights_only"
    assert info.step == 1 and torch.equal(state["w"], torch.ones(2))
    assert any("step 2" in r.getMessage() for r in caplog.records)


def test_an_untouched_checkpoint_still_loads(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    url = f"file://{tmp_path / 'ckpts'}"
    checkpoint.save_checkpoint({"w": torch.arange(3.0), "chars": ["a", "b"], "cfg": {"lr": 0.1, "name": "x"}}, 5, url=url)
    state, info = checkpoint.load_latest(url=url)  # type: ignore[misc]
    assert info.step == 5 and state["chars"] == ["a", "b"] and state["cfg"]["lr"] == 0.1
    assert info.sha256 == hashlib.sha256((tmp_path / "ckpts" / "step-000000000005" / "state.pt").read_bytes()).hexdigest()
