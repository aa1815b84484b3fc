"""Datasets a job names as inputs (`builtin:`, `file://`, `s3://`), staged into its store prefix, then its working folder.

A path from a request is never trusted: file:// and s3:// sources must lie under an allowed root (`--input-roots`),
links that leave a folder and special files are refused, and the total size is bounded before anything is copied.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from crucible.runtime.errors import InvalidArgument
from crucible.scheduler.domain.spec import JobInput
from crucible.scheduler.objects.objectstore import JobObjectStore, check_relative

DATASETS = Path(__file__).with_name("datasets")
#: Built-in datasets: name -> (file shipped in the package, gzip-compressed, file name it gets in the job).
BUILTINS = {"tinyshakespeare": ("tinyshakespeare.txt.gz", "input.txt")}
MAX_INPUTS = 32
MAX_URI = 2048


@dataclasses.dataclass(frozen=True)
class InputLimits:
    """Where inputs may come from and how much a job may stage (SchedulerConfig input_* settings)."""

    roots: tuple[str, ...] = ()  # URL prefixes: file:///data/ (resolved) or s3://bucket/prefix/
    max_bytes: int = 4 << 30
    max_files: int = 100_000


@dataclasses.dataclass(frozen=True)
class InputSource:
    """One checked input: what to copy (a list of (source path, size, relative name)) and where it goes in the job."""

    field: str
    uri: str
    dest: str
    files: tuple[tuple[str, int, str], ...]
    #: A folder, an s3 prefix or a built-in: files land under `dest/`; a single file or object lands at `dest` itself.
    tree: bool

    @property
    def size(self) -> int:
        return sum(size for _, size, _ in self.files)


def _bad(field: str, description: str, reason: str = "INPUT_NOT_ALLOWED") -> InvalidArgument:
    return InvalidArgument.field(field, description, reason=reason)


def validate_inputs(inputs: Sequence[JobInput]) -> None:
    """Cheap checks of `spec.inputs` (no I/O): count, URI form and scheme, destination path."""
    if len(inputs) > MAX_INPUTS:
        raise _bad("spec.inputs", f"at most {MAX_INPUTS} inputs", "TOO_MANY_INPUTS")
    seen: set[str] = set()
    for i, item in enumerate(inputs):
        field = f"spec.inputs[{i}]"
        if not item.uri or len(item.uri) > MAX_URI:
            raise _bad(f"{field}.uri", f"must be 1..{MAX_URI} characters", "BAD_INPUT")
        scheme = item.uri.split(":", 1)[0] if ":" in item.uri else ""
        if scheme == "builtin":
            if item.uri[len("builtin:") :] not in BUILTINS:
                raise _bad(f"{field}.uri", f"unknown built-in dataset; known: {', '.join(sorted(BUILTINS))}", "BAD_INPUT")
        elif scheme not in ("file", "s3"):
            raise _bad(f"{field}.uri", "must be builtin:NAME, file:///path or s3://bucket/key", "BAD_INPUT")
        dest = item.path or default_dest(item.uri)
        try:
            dest = check_relative(dest, f"{field}.path")
        except ValueError as exc:
            raise _bad(f"{field}.path", str(exc), "BAD_INPUT") from None
        if dest.split("/", 1)[0] in (".crucible",) or dest in seen:
            raise _bad(f"{field}.path", f"{dest!r} is reserved or used by another input", "BAD_INPUT")
        seen.add(dest)


def default_dest(uri: str) -> str:
    """Where an input lands when the spec names no path: `data/<last part of the URI>`."""
    if uri.startswith("builtin:"):
        return f"data/{uri[len('builtin:') :]}"
    name = urlparse(uri).path.rstrip("/").rsplit("/", 1)[-1] or "input"
    return f"data/{name}"


def resolve_inputs(inputs: Sequence[JobInput], limits: InputLimits, store: JobObjectStore | None) -> list[InputSource]:
    """Check every input against the allowed roots and size limits and list what it copies; blocking (use a thread)."""
    out: list[InputSource] = []
    total = files = 0
    for i, item in enumerate(inputs):
        field = f"spec.inputs[{i}].uri"
        dest = check_relative(item.path or default_dest(item.uri))
        listed: tuple[tuple[str, int, str], ...]  # (source, size, name) of each file
        if item.uri.startswith("builtin:"):
            packaged, name = BUILTINS[item.uri[len("builtin:") :]]
            source = DATASETS / packaged
            listed, tree = ((str(source), source.stat().st_size, name),), True
        elif item.uri.startswith("file:"):
            listed, tree = _local_files(field, item.uri, limits)
        else:
            listed, tree = _s3_files(field, item.uri, limits, store)
        files += len(listed)
        total += sum(size for _, size, _ in listed)
        if files > limits.max_files or total > limits.max_bytes:
            raise _bad(
                field,
                f"inputs exceed the limits of {limits.max_files} files / {limits.max_bytes} bytes "
                "(--input-max-files, --input-max-bytes)",
                "INPUT_TOO_LARGE",
            )
        out.append(InputSource(field, item.uri, dest, listed, tree))
    return out


def _allowed(uri: str, roots: Sequence[str]) -> bool:
    return any(uri == root.rstrip("/") or uri.startswith(root.rstrip("/") + "/") for root in roots)


def _local_files(field: str, uri: str, limits: InputLimits) -> tuple[tuple[tuple[str, int, str], ...], bool]:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise _bad(field, "a file:// input needs an absolute path (file:///...)", "BAD_INPUT")
    try:
        real = Path(parsed.path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise _bad(field, "not found on the scheduler host", "INPUT_NOT_FOUND") from None
    roots = [urlparse(r).path for r in limits.roots if r.startswith("file:")]
    resolved_roots = [Path(r).resolve() for r in roots]
    if not any(real == root or root in real.parents for root in resolved_roots):
        raise _bad(field, f"resolves to {str(real)!r}, outside the folders this scheduler allows (--input-roots)")
    st = real.stat()
    if stat.S_ISREG(st.st_mode):
        return ((str(real), st.st_size, real.name),), False
    if not stat.S_ISDIR(st.st_mode):
        raise _bad(field, "is a special file (FIFO, socket or device)", "INPUT_SPECIAL_FILE")
    listed = []
    for folder, dirs, names in os.walk(real, followlinks=False):
        for name in list(dirs) + names:
            full = os.path.join(folder, name)
            lst = os.lstat(full)
            rel = os.path.relpath(full, real)
            if stat.S_ISLNK(lst.st_mode):
                raise _bad(field, f"{rel!r} is a link; inputs take regular files only", "INPUT_LINK")
            if stat.S_ISREG(lst.st_mode):
                listed.append((full, lst.st_size, rel))
            elif not stat.S_ISDIR(lst.st_mode):
                raise _bad(field, f"{rel!r} is a special file (FIFO, socket or device)", "INPUT_SPECIAL_FILE")
            if len(listed) > limits.max_files:
                raise _bad(field, f"more than {limits.max_files} files (--input-max-files)", "INPUT_TOO_LARGE")
    return tuple(sorted(listed, key=lambda t: t[2])), True


def _s3_files(
    field: str, uri: str, limits: InputLimits, store: JobObjectStore | None
) -> tuple[tuple[tuple[str, int, str], ...], bool]:
    if not _allowed(uri, [r for r in limits.roots if r.startswith("s3:")]):
        raise _bad(field, "is outside the s3:// prefixes this scheduler allows (--input-roots)")
    if store is None or store.scheme != "s3":
        raise _bad(
            field, "s3:// inputs need an s3:// artifact store (its endpoint and keys are used to read them)", "INPUT_NOT_ALLOWED"
        )
    path = uri[len("s3://") :].rstrip("/")
    try:
        info = store.fs.info(path)
    except FileNotFoundError:
        raise _bad(field, "not found", "INPUT_NOT_FOUND") from None
    if info.get("type") == "file":
        return ((path, int(info.get("size") or 0), path.rsplit("/", 1)[-1]),), False
    found = store.fs.find(path, detail=True)
    listed = [
        (full, int(meta.get("size") or 0), full[len(path) + 1 :]) for full, meta in found.items() if meta.get("type") == "file"
    ]
    if len(listed) > limits.max_files:
        raise _bad(field, f"more than {limits.max_files} objects (--input-max-files)", "INPUT_TOO_LARGE")
    return tuple(sorted(listed, key=lambda t: t[2])), True


def stage_to_store(sources: Sequence[InputSource], store: JobObjectStore, job_id: str) -> int:
    """Copy every input into the job's `inputs/` prefix (built-ins decompressed); returns the bytes staged."""
    total = 0
    for src in sources:
        for path, _size, rel in src.files:
            target = f"{src.dest}/{rel}" if src.tree else src.dest
            if src.uri.startswith("builtin:"):
                data = gzip.decompress(Path(path).read_bytes())
                store.put_bytes(job_id, "inputs", target, data)
                total += len(data)
            elif src.uri.startswith("file:"):
                store.put_file(job_id, "inputs", target, Path(path))
                total += os.path.getsize(path)
            else:  # a server-side copy: the bytes never pass through the scheduler
                store.fs.copy(path, store.path(job_id, "inputs", target))
                total += _size
    return total


__all__ = ["BUILTINS", "InputLimits", "InputSource", "default_dest", "resolve_inputs", "stage_to_store", "validate_inputs"]
