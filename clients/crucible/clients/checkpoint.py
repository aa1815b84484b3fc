"""Checkpoints a job can resume from on any machine: `save_checkpoint(state, step, metrics)` / `load_latest()`.

Works on a local folder or an object store (fsspec: file://, s3://). A checkpoint counts only once its manifest, which
records the payload's size and SHA-256, is written after the payload: a half-written or truncated one is never loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Where checkpoints go when no URL is passed: the scheduler sets it for every job that has an object store.
ENV_URL = "CRUCIBLE_CHECKPOINT_URL"
_STEP_DIR = re.compile(r"^step-(\d{12})$")
PAYLOAD = "state.pt"
MANIFEST = "manifest.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint: its step, metrics and save time, and where its payload lives."""

    step: int
    metrics: dict[str, float]
    saved_at: float
    size: int
    sha256: str
    url: str


def _resolve(url: str | None) -> tuple[Any, str, str]:
    """(filesystem, root path without scheme, scheme) for `url`, or $CRUCIBLE_CHECKPOINT_URL, or ./checkpoints."""
    import fsspec

    url = url or os.environ.get(ENV_URL) or "checkpoints"
    if "://" not in url:
        url = "file://" + str(Path(url).resolve())
    fs, root = fsspec.core.url_to_fs(url)
    scheme = url.split("://", 1)[0]
    return fs, root.rstrip("/"), scheme


def _serialise(state: Any, dest: Any) -> None:
    if isinstance(state, (bytes, bytearray)):
        dest.write(bytes(state))
        return
    import torch

    torch.save(state, dest)


def save_checkpoint(
    state: Any, step: int, metrics: dict[str, float] | None = None, *, url: str | None = None, keep: int = 3
) -> CheckpointInfo:
    """Save `state` (anything torch.save takes, or bytes) as the checkpoint of `step`; keep the newest `keep` (0 = all).

    The payload is written first (locally to a temporary name then renamed; on S3 an object appears only when whole),
    then the manifest. A crash between the two leaves a payload without a manifest, which loading ignores.
    """
    if step < 0:
        raise ValueError("step must be >= 0")
    fs, root, scheme = _resolve(url)
    folder = f"{root}/step-{step:012d}"
    with tempfile.NamedTemporaryFile(prefix="crucible-ckpt-", suffix=".pt", delete=False) as tmp:
        _serialise(state, tmp)
        tmp_path = tmp.name
    try:
        digest, size = _hash_file(tmp_path)
        fs.makedirs(folder, exist_ok=True)
        if scheme == "file":
            staged = f"{folder}/{PAYLOAD}.tmp-{uuid.uuid4().hex[:12]}"
            fs.put_file(tmp_path, staged)
            with open(staged, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(staged, f"{folder}/{PAYLOAD}")
        else:
            fs.put_file(tmp_path, f"{folder}/{PAYLOAD}")
    finally:
        os.unlink(tmp_path)
    info = CheckpointInfo(
        step, {k: float(v) for k, v in (metrics or {}).items()}, time.time(), size, digest, f"{scheme}://{folder}/{PAYLOAD}"
    )
    manifest = json.dumps({"format": FORMAT, **dataclasses.asdict(info)}, sort_keys=True).encode()
    if scheme == "file":
        staged = f"{folder}/{MANIFEST}.tmp-{uuid.uuid4().hex[:12]}"
        with open(staged, "wb") as f:
            f.write(manifest)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, f"{folder}/{MANIFEST}")
    else:
        fs.pipe_file(f"{folder}/{MANIFEST}", manifest)
    if keep > 0:
        for old in list_checkpoints(url=url)[:-keep]:
            try:
                fs.rm(old.url.split("://", 1)[1].rsplit("/", 1)[0], recursive=True)
            except OSError as exc:
                log.warning("could not remove old checkpoint of step %s: %s", old.step, exc)
    return info


def list_checkpoints(*, url: str | None = None) -> list[CheckpointInfo]:
    """Complete checkpoints (a manifest whose payload exists with the recorded size), oldest step first."""
    fs, root, scheme = _resolve(url)
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    found: list[CheckpointInfo] = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not _STEP_DIR.match(name):
            continue
        folder = f"{root}/{name}"
        try:
            raw = json.loads(fs.cat_file(f"{folder}/{MANIFEST}"))
            size = fs.info(f"{folder}/{PAYLOAD}")["size"]
        except (FileNotFoundError, ValueError, KeyError):
            continue
        if raw.get("format") != FORMAT or int(raw.get("size", -1)) != int(size):
            log.warning("skipping checkpoint %s: payload size %s does not match its manifest", folder, size)
            continue
        found.append(
            CheckpointInfo(
                int(raw["step"]),
                dict(raw.get("metrics", {})),
                float(raw["saved_at"]),
                int(raw["size"]),
                str(raw["sha256"]),
                f"{scheme}://{folder}/{PAYLOAD}",
            )
        )
    return sorted(found, key=lambda c: c.step)


def load_latest(
    *, url: str | None = None, map_location: Any = "cpu", raw: bool = False, weights_only: bool = False
) -> tuple[Any, CheckpointInfo] | None:
    """The newest complete checkpoint whose payload hashes to its manifest, as (state, info); None when there is none.

    A checkpoint whose payload fails the check (truncated, rewritten) is skipped with a warning, and the next older
    one is tried. `raw=True` returns the payload bytes instead of unpickling them with torch.load.
    """
    fs, _root, _scheme = _resolve(url)
    for info in reversed(list_checkpoints(url=url)):
        path = info.url.split("://", 1)[1]
        data = fs.cat_file(path)
        if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
            log.warning("skipping checkpoint of step %s: payload does not match its manifest", info.step)
            continue
        if raw:
            return data, info
        import torch

        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only), info
    return None


def _hash_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


__all__ = ["ENV_URL", "CheckpointInfo", "list_checkpoints", "load_latest", "save_checkpoint"]
