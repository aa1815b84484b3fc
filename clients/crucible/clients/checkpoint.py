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
import math
import os
import re
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TypeGuard

log = logging.getLogger(__name__)

#: Where checkpoints go when no URL is passed: the scheduler sets it for every job that has an object store.
ENV_URL = "CRUCIBLE_CHECKPOINT_URL"
_STEP_DIR = re.compile(r"step-(\d{12})")  # fullmatch: `$` would also accept a trailing newline
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Largest manifest read; a real one is a few hundred bytes (the metrics are a handful of numbers).
MAX_MANIFEST_BYTES = 65536
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


class _Unusable(Exception):
    """A checkpoint that must not be loaded; the message says why (it is logged, and the next older one is tried)."""


def _regular_file(fs: Any, scheme: str, path: str, what: str) -> int:
    """The size of the plain file at `path`; _Unusable for a link (symbolic or hard), a folder or anything special.
    Local links are refused because they can point anywhere (another job's files, the owner's secrets)."""
    if scheme == "file":
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            raise _Unusable(f"its {what} is a symbolic link")
        if not stat.S_ISREG(info.st_mode):
            raise _Unusable(f"its {what} is not a regular file")
        if info.st_nlink != 1:
            raise _Unusable(f"its {what} is a hard link ({info.st_nlink} names)")
        return info.st_size
    detail = fs.info(path)
    if detail.get("type") != "file" or detail.get("islink"):
        raise _Unusable(f"its {what} is not a plain object")
    return int(detail["size"])


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_info(fs: Any, scheme: str, root: str, name: str) -> CheckpointInfo:
    """The checked manifest of the checkpoint folder `name`; _Unusable naming what is wrong with it."""
    folder = f"{root}/{name}"
    if scheme == "file":
        info = os.lstat(folder)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise _Unusable("its folder is a link or not a folder")
    manifest_size = _regular_file(fs, scheme, f"{folder}/{MANIFEST}", "manifest")
    if manifest_size > MAX_MANIFEST_BYTES:
        raise _Unusable(f"its manifest has {manifest_size} bytes, more than {MAX_MANIFEST_BYTES}")
    raw_bytes = _read_plain(fs, scheme, f"{folder}/{MANIFEST}", manifest_size)
    try:
        raw = json.loads(raw_bytes)
    except (ValueError, UnicodeDecodeError):
        raise _Unusable("its manifest is not JSON") from None
    if not isinstance(raw, dict):
        raise _Unusable("its manifest is not a JSON object")
    if raw.get("format") != FORMAT or not _whole(raw.get("format")):
        raise _Unusable(f"its manifest has format {str(raw.get('format'))[:20]!r}, not {FORMAT}")
    step, size, digest, saved_at = raw.get("step"), raw.get("size"), raw.get("sha256"), raw.get("saved_at")
    metrics = raw.get("metrics", {})
    if not _whole(step) or f"step-{step:012d}" != name:
        raise _Unusable("its manifest's step is not the folder's")
    if not _whole(size) or size < 0:
        raise _Unusable("its manifest's size is not a whole number of bytes")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise _Unusable("its manifest's sha256 is not 64 hex digits")
    if not _number(saved_at):
        raise _Unusable("its manifest's saved_at is not a number")
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and _number(v) for k, v in metrics.items()):
        raise _Unusable("its manifest's metrics are not names with finite numbers")
    payload_size = _regular_file(fs, scheme, f"{folder}/{PAYLOAD}", "payload")
    if payload_size != size:
        raise _Unusable(f"payload size {payload_size} does not match its manifest ({size})")
    return CheckpointInfo(
        step, {k: float(v) for k, v in metrics.items()}, float(saved_at), size, digest, f"{scheme}://{folder}/{PAYLOAD}"
    )


def _read_plain(fs: Any, scheme: str, path: str, size: int) -> bytes:
    """The bytes of a file checked by _regular_file, opened without following a link (locally) and read up to `size`
    + 1 bytes, so a file that grew since is noticed, not read whole."""
    if scheme != "file":
        data: bytes = fs.cat_file(path, start=0, end=size + 1)
        return data
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise _Unusable("a file was swapped for a link or a special file while being read")
        return handle.read(size + 1)


def list_checkpoints(*, url: str | None = None) -> list[CheckpointInfo]:
    """Complete, well-formed checkpoints, oldest step first.

    A folder counts when its manifest is a JSON object of the expected types, at most MAX_MANIFEST_BYTES, naming the
    folder's step, and its payload exists with the recorded size. Anything else is skipped with a warning saying why:
    a payload without a manifest (a save that died), a manifest that is not JSON or has the wrong types, a size that
    does not match, and, on a local folder, any symbolic or hard link among the folder, manifest and payload.
    """
    fs, root, scheme = _resolve(url)
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    found: list[CheckpointInfo] = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not _STEP_DIR.fullmatch(name):
            continue
        try:
            found.append(_read_info(fs, scheme, root, name))
        except FileNotFoundError:
            continue  # no manifest yet: a save in progress, or one that died before its manifest
        except (_Unusable, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping checkpoint %s/%s: %s", root, name, exc)
    return sorted(found, key=lambda c: c.step)


def load_latest(
    *, url: str | None = None, map_location: Any = "cpu", raw: bool = False, weights_only: bool = True
) -> tuple[Any, CheckpointInfo] | None:
    """The newest complete checkpoint whose payload hashes to its manifest, as (state, info); None when there is none.

    A checkpoint that is malformed or tampered with (see list_checkpoints; a payload whose bytes do not hash to the
    manifest; a payload torch cannot load) is skipped with a warning, and the next older one is tried. `raw=True`
    returns the payload bytes instead of loading them with torch.load, which by default reads tensors and plain
    containers only (`weights_only=True`); pass weights_only=False only for checkpoints you trust, as unpickling
    arbitrary objects can run code.
    """
    fs, _root, scheme = _resolve(url)
    for info in reversed(list_checkpoints(url=url)):
        path = info.url.split("://", 1)[1]
        try:
            data = _read_plain(fs, scheme, path, info.size)
        except (_Unusable, OSError) as exc:
            log.warning("skipping checkpoint of step %s: %s", info.step, exc)
            continue
        if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
            log.warning("skipping checkpoint of step %s: payload does not match its manifest", info.step)
            continue
        if raw:
            return data, info
        import torch

        try:
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)
        except Exception as exc:  # any failure to load one checkpoint means: try the older one
            log.warning("skipping checkpoint of step %s: torch cannot load it (%s)", info.step, str(exc)[:200])
            continue
        return state, info
    return None


def _hash_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


__all__ = ["ENV_URL", "MAX_MANIFEST_BYTES", "CheckpointInfo", "list_checkpoints", "load_latest", "save_checkpoint"]
