"""Checks of a JobSpec before anything is stored: every bad field gets INVALID_ARGUMENT naming it (and its index).

Also the spec digest used for idempotency and the safe unpacking of a code archive.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import shutil
import tarfile
import zipfile
from collections.abc import Collection
from pathlib import Path, PurePosixPath

from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.errors import InvalidArgument, NotFound
from crucible.runtime.validation import duration_ns

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCOPE = re.compile(r"^(global|[a-z0-9_.-]+:[a-z0-9_.-]+)$")
P = job_pb2.ProviderPolicy
MAX_REQUEST_ID = 128
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".venv", "*.pyc")


def spec_sha256(spec: job_pb2.JobSpec) -> str:
    """Digest of the spec as given (code archive included), for request-id idempotency."""
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()


def relative_path_ok(path: str) -> bool:
    """A '/'-separated relative path without '..', empty parts or NUL bytes."""
    if not path or "\x00" in path or "\\" in path or path.startswith("/"):
        return False
    parts = PurePosixPath(path).parts
    return bool(parts) and all(p not in ("..", "") for p in parts)


def validate_spec(spec: job_pb2.JobSpec, request_id: str, known_providers: Collection[str]) -> None:
    """Raise InvalidArgument (or NotFound for unknown providers) for the first problem found."""
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument.field("request_id", f"at most {MAX_REQUEST_ID} characters")
    if len(spec.display_name) > 200:
        raise InvalidArgument.field("spec.display_name", "at most 200 characters")
    if not spec.command:
        raise InvalidArgument.field("spec.command", "is required (argv, e.g. [\"python\", \"train.py\"])")
    if not spec.command[0]:
        raise InvalidArgument.field("spec.command[0]", "the program must not be empty")
    for i, arg in enumerate(spec.command):
        if "\x00" in arg:
            raise InvalidArgument.field(f"spec.command[{i}]", "must not contain NUL bytes")
    if spec.WhichOneof("code") == "code_dir":
        if not spec.code_dir or not Path(spec.code_dir).is_dir():
            raise InvalidArgument.field("spec.code_dir", f"directory not found on the scheduler host: {spec.code_dir!r}")
    for name in sorted(spec.env):
        if not ENV_NAME.match(name):
            raise InvalidArgument.field(f"spec.env[{name}]", "name must match [A-Za-z_][A-Za-z0-9_]*")
        if name.upper().startswith("CRUCIBLE_"):
            raise InvalidArgument.field(f"spec.env[{name}]", "names starting with CRUCIBLE_ are reserved")
        if "\x00" in spec.env[name]:
            raise InvalidArgument.field(f"spec.env[{name}]", "value must not contain NUL bytes")
    r = spec.resources
    if r.gpu_count == 0 and (r.gpu_names or r.min_gpu_memory_gib):
        raise InvalidArgument.field("spec.resources.gpu_count", "is 0 (CPU only) but GPU names or GPU memory are set")
    for field in ("min_gpu_memory_gib", "min_memory_gib"):
        value = getattr(r, field)
        if value < 0 or math.isnan(value):
            raise InvalidArgument.field(f"spec.resources.{field}", "must not be negative")
    for i, g in enumerate(r.gpu_names):
        if not g.strip():
            raise InvalidArgument.field(f"spec.resources.gpu_names[{i}]", "must not be empty")
    if spec.HasField("max_duration"):
        duration_ns(spec.max_duration, "spec.max_duration", allow_zero=False)
    if spec.HasField("expected_duration"):
        duration_ns(spec.expected_duration, "spec.expected_duration")
    for field in ("max_cost_usd", "max_price_usd_per_hour"):
        if spec.HasField(field):
            value = getattr(spec, field)
            if value < 0 or math.isnan(value) or math.isinf(value):
                raise InvalidArgument.field(f"spec.{field}", "must be a finite non-negative amount")
    if spec.provider_policy == P.PROVIDER_POLICY_UNSPECIFIED:
        raise InvalidArgument.field("spec.provider_policy", "must be EXPLICIT, CHEAPEST, FASTEST or ORDERED")
    if spec.provider_policy not in P.values():
        raise InvalidArgument.field("spec.provider_policy", f"unknown value {spec.provider_policy}")
    if spec.provider_policy == P.PROVIDER_POLICY_EXPLICIT and len(spec.providers) != 1:
        raise InvalidArgument.field("spec.providers", "EXPLICIT needs exactly one provider")
    if spec.provider_policy == P.PROVIDER_POLICY_ORDERED and not spec.providers:
        raise InvalidArgument.field("spec.providers", "ORDERED needs at least one provider")
    seen: set[str] = set()
    for i, name in enumerate(spec.providers):
        if name in seen:
            raise InvalidArgument.field(f"spec.providers[{i}]", f"duplicate provider {name!r}")
        seen.add(name)
        if name not in known_providers:
            raise NotFound(f"spec.providers[{i}]: unknown provider {name!r}; known: {', '.join(sorted(known_providers))}",
                           reason="UNKNOWN_PROVIDER", metadata={"field": f"spec.providers[{i}]"})
    if spec.checkpoint_dir and not relative_path_ok(spec.checkpoint_dir):
        raise InvalidArgument.field("spec.checkpoint_dir", "must be a relative path without '..'")
    if spec.budget_scope and not SCOPE.match(spec.budget_scope):
        raise InvalidArgument.field("spec.budget_scope", "must be 'global' or 'kind:name' (lower-case letters, digits, -_.)")
    if len(spec.container_image) > 1000:
        raise InvalidArgument.field("spec.container_image", "at most 1000 characters")


def _safe_member(name: str) -> bool:
    name = name.rstrip("/")
    return relative_path_ok(name) or name in (".", "")


def check_archive(data: bytes) -> str:
    """'zip' or 'tar' when `data` is a readable archive whose members all stay inside the folder, else InvalidArgument."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for i, name in enumerate(z.namelist()):
                if not _safe_member(name.removeprefix("./")):
                    raise InvalidArgument.field("spec.code_archive", f"member {i} ({name!r}) escapes the working directory")
        return "zip"
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as t:
            for i, m in enumerate(t.getmembers()):
                if not _safe_member(m.name.removeprefix("./")) or m.isdev():
                    raise InvalidArgument.field("spec.code_archive", f"member {i} ({m.name!r}) escapes the working directory")
                if (m.issym() or m.islnk()) and not relative_path_ok(
                    str(PurePosixPath(m.name).parent / m.linkname) if m.issym() else m.linkname
                ):
                    raise InvalidArgument.field("spec.code_archive", f"link {m.name!r} points outside the working directory")
    except tarfile.TarError:
        raise InvalidArgument.field("spec.code_archive", "not a .tar.gz, .tar or .zip archive") from None
    return "tar"


def unpack_code(spec: job_pb2.JobSpec, dest: Path) -> dict[str, list[int]]:
    """Copy code_dir or unpack code_archive into `dest`; returns {relative path: [size, mtime_ns]} of the code files."""
    dest.mkdir(parents=True, exist_ok=True)
    kind = spec.WhichOneof("code")
    if kind == "code_dir":
        shutil.copytree(spec.code_dir, dest, dirs_exist_ok=True, ignore=COPY_IGNORE, symlinks=True)
    elif kind == "code_archive":
        data = spec.code_archive
        if check_archive(data) == "zip":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                z.extractall(dest)
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as t:
                t.extractall(dest, filter="data")
    manifest = {}
    for path in dest.rglob("*"):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            manifest[path.relative_to(dest).as_posix()] = [st.st_size, st.st_mtime_ns]
    return manifest
