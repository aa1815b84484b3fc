"""Checks of a JobSpec before anything is stored: every bad field gets INVALID_ARGUMENT naming it (and its index).

Also the spec digest used for idempotency, the durations a spec implies, and the safe unpacking of a code archive.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import Literal

from crucible.runtime import archives
from crucible.runtime.errors import InvalidArgument, NotFound, echo
from crucible.runtime.validation import duration_ns, utf8_size
from crucible.scheduler.domain.spec import JobSpec, ProviderPolicy

# Patterns are used with fullmatch: `$` would also accept a trailing newline.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SCOPE = re.compile(r"global|[a-z0-9_.-]+:[a-z0-9_.-]+")
#: A job id as the scheduler makes them (job-YYYYMMDD-<12 hex>), or any id of letters, digits and . _ - up to 128.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_JOB_ID = 128
#: How much of an env name a field path repeats.
ECHO_CHARS = 40
MAX_REQUEST_ID = 128
IGNORED_DIRS = frozenset({".git", "__pycache__", ".venv"})  # left out of a copied or packed code folder, as are *.pyc
MAX_CODE_DIR_CHARS = 4096
MAX_GIB = 1 << 20  # 1 PiB: far past any machine, low enough that no arithmetic on it overflows
# Bounds of a JobSpec (documented in job.proto): a stored job stays small, so a page of jobs fits any client.
MAX_DISPLAY_NAME = 200  # characters
MAX_ARGS = 1024  # argv entries
MAX_ARG_BYTES = 32768  # UTF-8 bytes of one argument
MAX_COMMAND_BYTES = 131072  # UTF-8 bytes of the whole argv
MAX_ENV_VARS = 256
MAX_ENV_NAME_BYTES = 256
MAX_ENV_VALUE_BYTES = 32768
MAX_ENV_BYTES = 131072  # names and values together
MAX_PROVIDERS = 32
MAX_NAME_CHARS = 200  # a provider, GPU name, budget scope or checkpoint folder
MAX_GPU_NAMES = 64
MAX_CONTAINER_IMAGE = 1000
MAX_RESTARTS = 1000  # restart_policy.max_restarts_on_errors: each attempt adds to the job's record
MAX_SPEC_BYTES = 262144  # the whole serialized spec, code_archive excluded (it is not stored in the job)
#: A ListJobs page stops before it passes this many bytes (and hands out a next page token).
MAX_LIST_PAGE_BYTES = 1 << 20


def check_job_id(job_id: str, field: str = "job_id") -> None:
    """INVALID_ARGUMENT unless `job_id` could name a job; the error repeats at most a short prefix of it."""
    if not job_id:
        raise InvalidArgument.field(field, "is required")
    if not JOB_ID.fullmatch(job_id):
        raise InvalidArgument.field(
            field, f"{echo(job_id)} is not a job id (at most {MAX_JOB_ID} letters, digits, '.', '_' or '-')"
        )


def spec_sha256(spec: JobSpec) -> str:
    """Digest of the spec as given (code archive included), for request-id idempotency: measured by the API edge on
    the message as sent (`convert.spec`), so it is the digest earlier versions stored."""
    if not spec.wire_sha256:
        raise ValueError("the spec was not read from a request (no digest of it as sent)")
    return spec.wire_sha256


def expected_seconds(spec: JobSpec) -> float:
    """How long the job is expected to run (offers and estimates): expected_duration, else max_duration, else 1 hour."""
    if spec.expected_duration is not None:
        return spec.expected_duration.total_seconds()
    if spec.max_duration is not None:
        return spec.max_duration.total_seconds()
    return 3600.0


def max_duration_seconds(spec: JobSpec, default_s: float) -> float:
    """The job's running-time limit: max_duration, else `default_s` (the scheduler's default_max_duration_s)."""
    return spec.max_duration.total_seconds() if spec.max_duration is not None else default_s


def relative_path_ok(path: str) -> bool:
    """A '/'-separated relative path without '..', empty parts or NUL bytes."""
    if not path or "\x00" in path or "\\" in path or path.startswith("/"):
        return False
    parts = PurePosixPath(path).parts
    return bool(parts) and all(p not in ("..", "") for p in parts)


def validate_spec(spec: JobSpec, request_id: str, known_providers: Collection[str]) -> None:
    """Raise InvalidArgument (or NotFound for unknown providers) for the first problem found."""
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidArgument.field("request_id", f"at most {MAX_REQUEST_ID} characters")
    check_sizes(spec)
    if not spec.command:
        raise InvalidArgument.field("spec.command", 'is required (argv, e.g. ["python", "train.py"])')
    if not spec.command[0]:
        raise InvalidArgument.field("spec.command[0]", "the program must not be empty")
    for i, arg in enumerate(spec.command):
        if "\x00" in arg:
            raise InvalidArgument.field(f"spec.command[{i}]", "must not contain NUL bytes")
    # The file system is checked by check_code, in a thread; here only the string.
    if spec.code_dir is not None and (
        not spec.code_dir.startswith("/") or "\x00" in spec.code_dir or len(spec.code_dir) > MAX_CODE_DIR_CHARS
    ):
        raise InvalidArgument.field(
            "spec.code_dir", f"must be an absolute path of at most {MAX_CODE_DIR_CHARS} characters without NUL bytes"
        )
    for name in sorted(spec.env):
        if not ENV_NAME.fullmatch(name):
            raise InvalidArgument.field(f"spec.env[{name[:ECHO_CHARS]}]", "name must match [A-Za-z_][A-Za-z0-9_]*")
        if name.upper().startswith("CRUCIBLE_"):
            raise InvalidArgument.field(f"spec.env[{name}]", "names starting with CRUCIBLE_ are reserved")
        if "\x00" in spec.env[name]:
            raise InvalidArgument.field(f"spec.env[{name}]", "value must not contain NUL bytes")
    r = spec.resources
    if r.gpu_count == 0 and (r.gpu_names or r.min_gpu_memory_gib):
        raise InvalidArgument.field("spec.resources.gpu_count", "is 0 (CPU only) but GPU names or GPU memory are set")
    for field in ("min_gpu_memory_gib", "min_memory_gib"):
        value = getattr(r, field)
        if value < 0 or math.isnan(value) or math.isinf(value):
            raise InvalidArgument.field(f"spec.resources.{field}", "must be a finite non-negative number of GiB")
        if value > MAX_GIB:
            raise InvalidArgument.field(f"spec.resources.{field}", f"at most {MAX_GIB} GiB")
    for i, g in enumerate(r.gpu_names):
        if not g.strip():
            raise InvalidArgument.field(f"spec.resources.gpu_names[{i}]", "must not be empty")
    if spec.max_duration is not None:
        duration_ns(spec.max_duration, "spec.max_duration", allow_zero=False)
    if spec.expected_duration is not None:
        duration_ns(spec.expected_duration, "spec.expected_duration")
    money_fields: tuple[Literal["max_cost_usd", "max_price_usd_per_hour"], ...] = ("max_cost_usd", "max_price_usd_per_hour")
    for field in money_fields:
        value = getattr(spec, field)
        if value is not None and (value < 0 or math.isnan(value) or math.isinf(value)):
            raise InvalidArgument.field(f"spec.{field}", "must be a finite non-negative amount")
    if spec.provider_policy == ProviderPolicy.UNSPECIFIED:
        raise InvalidArgument.field("spec.provider_policy", "must be EXPLICIT, CHEAPEST, FASTEST or ORDERED")
    if spec.provider_policy not in set(ProviderPolicy):
        raise InvalidArgument.field("spec.provider_policy", f"unknown value {spec.provider_policy}")
    if spec.provider_policy == ProviderPolicy.EXPLICIT and len(spec.providers) != 1:
        raise InvalidArgument.field("spec.providers", "EXPLICIT needs exactly one provider")
    if spec.provider_policy == ProviderPolicy.ORDERED and not spec.providers:
        raise InvalidArgument.field("spec.providers", "ORDERED needs at least one provider")
    seen: set[str] = set()
    for i, name in enumerate(spec.providers):
        if name in seen:
            raise InvalidArgument.field(f"spec.providers[{i}]", f"duplicate provider {name!r}")
        seen.add(name)
        if name not in known_providers:
            raise NotFound(
                f"spec.providers[{i}]: unknown provider {name!r}; known: {', '.join(sorted(known_providers))}",
                reason="UNKNOWN_PROVIDER",
                metadata={"field": f"spec.providers[{i}]"},
            )
    if spec.checkpoint_dir and not relative_path_ok(spec.checkpoint_dir):
        raise InvalidArgument.field("spec.checkpoint_dir", "must be a relative path without '..'")
    if spec.budget_scope and not SCOPE.fullmatch(spec.budget_scope):
        raise InvalidArgument.field("spec.budget_scope", "must be 'global' or 'kind:name' (lower-case letters, digits, -_.)")


def _too_long(field: str, what: str) -> InvalidArgument:
    return InvalidArgument.field(field, what, reason="FIELD_TOO_LARGE")


def check_sizes(spec: JobSpec) -> None:
    """INVALID_ARGUMENT (reason FIELD_TOO_LARGE) naming the first field past its bound, counts before sizes and sizes
    before any other work; then the whole spec (code_archive excluded) against MAX_SPEC_BYTES."""
    if len(spec.display_name) > MAX_DISPLAY_NAME:
        raise _too_long("spec.display_name", f"at most {MAX_DISPLAY_NAME} characters")
    if len(spec.command) > MAX_ARGS:
        raise _too_long("spec.command", f"at most {MAX_ARGS} arguments")
    total = 0
    for i, arg in enumerate(spec.command):
        size = utf8_size(arg, MAX_ARG_BYTES)
        if size > MAX_ARG_BYTES:
            raise _too_long(f"spec.command[{i}]", f"at most {MAX_ARG_BYTES} bytes (UTF-8) per argument")
        total += size
        if total > MAX_COMMAND_BYTES:
            raise _too_long("spec.command", f"at most {MAX_COMMAND_BYTES} bytes (UTF-8) of arguments in all")
    if len(spec.env) > MAX_ENV_VARS:
        raise _too_long("spec.env", f"at most {MAX_ENV_VARS} variables")
    total = 0
    for name, value in spec.env.items():
        if utf8_size(name, MAX_ENV_NAME_BYTES) > MAX_ENV_NAME_BYTES:
            raise _too_long(f"spec.env[{name[:ECHO_CHARS]}]", f"names are at most {MAX_ENV_NAME_BYTES} bytes")
        size = utf8_size(value, MAX_ENV_VALUE_BYTES)
        if size > MAX_ENV_VALUE_BYTES:
            raise _too_long(f"spec.env[{name}]", f"values are at most {MAX_ENV_VALUE_BYTES} bytes (UTF-8)")
        total += len(name) + size
        if total > MAX_ENV_BYTES:
            raise _too_long("spec.env", f"at most {MAX_ENV_BYTES} bytes of names and values in all")
    if len(spec.providers) > MAX_PROVIDERS:
        raise _too_long("spec.providers", f"at most {MAX_PROVIDERS} providers")
    for i, name in enumerate(spec.providers):
        if len(name) > MAX_NAME_CHARS:
            raise _too_long(f"spec.providers[{i}]", f"at most {MAX_NAME_CHARS} characters")
    if len(spec.resources.gpu_names) > MAX_GPU_NAMES:
        raise _too_long("spec.resources.gpu_names", f"at most {MAX_GPU_NAMES} names")
    for i, name in enumerate(spec.resources.gpu_names):
        if len(name) > MAX_NAME_CHARS:
            raise _too_long(f"spec.resources.gpu_names[{i}]", f"at most {MAX_NAME_CHARS} characters")
    for field in ("budget_scope", "checkpoint_dir"):
        if len(getattr(spec, field)) > MAX_NAME_CHARS:
            raise _too_long(f"spec.{field}", f"at most {MAX_NAME_CHARS} characters")
    if len(spec.container_image) > MAX_CONTAINER_IMAGE:
        raise _too_long("spec.container_image", f"at most {MAX_CONTAINER_IMAGE} characters")
    if spec.restart_policy.max_restarts_on_errors > MAX_RESTARTS:
        raise _too_long("spec.restart_policy.max_restarts_on_errors", f"at most {MAX_RESTARTS}")
    size = spec.wire_bytes  # measured by the edge on the message as sent
    if size > MAX_SPEC_BYTES:
        raise _too_long("spec", f"is {size} bytes without code_archive, more than {MAX_SPEC_BYTES}")


@dataclasses.dataclass(frozen=True)
class CodeLimits:
    """Where a code_dir may come from and how much code a job may bring (SchedulerConfig code_* settings)."""

    roots: tuple[Path, ...] = ()  # resolved; empty refuses every code_dir
    max_bytes: int = 1 << 30
    max_files: int = 20000


def _special_devices() -> set[int]:
    """st_dev of the pseudo file systems whose files must never be copied (/proc, /sys)."""
    out = set()
    for path in ("/proc", "/sys"):
        try:
            out.add(os.stat(path).st_dev)
        except OSError:
            pass
    return out


def _refuse(description: str, reason: str) -> InvalidArgument:
    return InvalidArgument.field("spec.code_dir", description, reason=reason)


def resolve_code_dir(code_dir: str, limits: CodeLimits) -> Path:
    """The folder `code_dir` names, symlinks resolved, when it lies inside an allowed root; else INVALID_ARGUMENT."""
    if not limits.roots:
        raise _refuse(
            "this scheduler accepts no code_dir (no --code-roots configured); send the folder as "
            "code_archive (`crucible jobs submit --code-dir` and the SDK pack it by default)",
            "CODE_DIR_NOT_ALLOWED",
        )
    path = Path(code_dir)
    try:
        resolved = path.resolve(strict=True)
        st = resolved.stat()
    except (OSError, RuntimeError):
        raise _refuse(f"folder not found on the scheduler host: {code_dir!r}", "CODE_DIR_NOT_FOUND") from None
    if not any(resolved == root or root in resolved.parents for root in limits.roots):
        raise _refuse(
            f"{code_dir!r} resolves to {str(resolved)!r}, outside the folders this scheduler allows "
            "(--code-roots); send the code as code_archive instead",
            "CODE_DIR_NOT_ALLOWED",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(f"{code_dir!r} is not a folder", "CODE_DIR_NOT_FOUND")
    if st.st_dev in _special_devices():
        raise _refuse(f"{code_dir!r} is on a pseudo file system (/proc, /sys)", "CODE_DIR_SPECIAL_FILE")
    return resolved


def _ignored(name: str, is_dir: bool) -> bool:
    return (is_dir and name in IGNORED_DIRS) or name.endswith(".pyc")


def walk_code_dir(src: Path, limits: CodeLimits, dest: Path | None = None) -> tuple[int, int]:
    """Check (and, with `dest`, copy) the code under the resolved folder `src`: (files, bytes).

    Never follows a link: regular files and folders are taken, links that stay inside `src` are recreated as
    relative links, links that leave it, special files (FIFO, socket, device) and pseudo file systems are
    INVALID_ARGUMENT, as is code past the size or file-count limit. Files are opened with O_NOFOLLOW and checked
    again while copying, so a file swapped for a link or a FIFO between the check and the copy is refused too.
    """
    special = _special_devices()
    files = total = 0
    stack: list[tuple[Path, str]] = [(src, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise _refuse(f"cannot read {rel or '.'!r}: {exc.strerror}", "CODE_DIR_UNREADABLE") from None
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            if _ignored(entry.name, stat.S_ISDIR(st.st_mode)):
                continue
            files += 1
            if files > limits.max_files:
                raise _refuse(f"more than {limits.max_files} files and folders (--code-max-files)", "CODE_TOO_LARGE")
            if st.st_dev in special:
                raise _refuse(f"{name!r} is on a pseudo file system (/proc, /sys)", "CODE_DIR_SPECIAL_FILE")
            target = dest / name if dest is not None else None
            if stat.S_ISLNK(st.st_mode):
                link = os.readlink(entry.path)
                real = Path(os.path.realpath(entry.path))
                if real != src and src not in real.parents:
                    raise _refuse(f"{name!r} is a link leading outside the folder", "CODE_DIR_LINK_OUTSIDE")
                if target is not None:
                    os.symlink(os.path.relpath(real, Path(entry.path).parent.resolve()) if os.path.isabs(link) else link, target)
            elif stat.S_ISDIR(st.st_mode):
                if target is not None:
                    target.mkdir(exist_ok=True)
                stack.append((Path(entry.path), name))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > limits.max_bytes:
                    raise _refuse(f"more than {limits.max_bytes} bytes of code (--code-max-bytes)", "CODE_TOO_LARGE")
                if target is not None:
                    total += _copy_file(entry.path, target, name, limits.max_bytes - total) - st.st_size
            else:
                raise _refuse(f"{name!r} is a special file (FIFO, socket or device)", "CODE_DIR_SPECIAL_FILE")
    return files, total


def _copy_file(src: str, dest: Path, name: str, room: int) -> int:
    """Copy one regular file without following links; bytes copied. Refuses a file that grew past `room` extra bytes."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _refuse(f"cannot open {name!r}: {exc.strerror}", "CODE_DIR_UNREADABLE") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_dev in _special_devices():
            raise _refuse(f"{name!r} is not a regular file", "CODE_DIR_SPECIAL_FILE")
        limit = st.st_size + max(0, room)
        copied = 0
        with open(dest, "wb") as out:
            while block := f.read(1 << 20):
                copied += len(block)
                if copied > limit:
                    raise _refuse(f"{name!r} grew past the code size limit while being copied", "CODE_TOO_LARGE")
                out.write(block)
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(dest, stat.S_IMODE(st.st_mode) & 0o755)
    return copied


def check_code(spec: JobSpec, limits: CodeLimits) -> None:
    """Everything about the spec's code that needs the file system or unpacking: runs in a thread, before any provider."""
    if spec.code_dir is not None:
        walk_code_dir(resolve_code_dir(spec.code_dir, limits), limits)
    elif spec.code_archive is not None:
        check_archive(spec.code_archive, limits)


def _archive_error(description: str, reason: str = "CODE_ARCHIVE_UNSAFE") -> InvalidArgument:
    return InvalidArgument.field("spec.code_archive", description, reason=reason)


#: The scheduler's reasons for the shared archive module's.
_ARCHIVE_REASONS = {
    "ARCHIVE_INVALID": "CODE_ARCHIVE_INVALID",
    "ARCHIVE_UNSAFE": "CODE_ARCHIVE_UNSAFE",
    "ARCHIVE_TOO_LARGE": "CODE_TOO_LARGE",
}


def archive_limits(limits: CodeLimits) -> archives.ArchiveLimits:
    """The archive limits a code archive is read with: code_max_files members, code_max_bytes unpacked."""
    return archives.ArchiveLimits(max_members=limits.max_files, max_bytes=limits.max_bytes)


def _refused_archive(exc: archives.ArchiveError) -> InvalidArgument:
    hint = {
        "ARCHIVE_TOO_LARGE": " (--code-max-files, --code-max-bytes)",
        "ARCHIVE_INVALID": "; send a .tar.gz, .tar or .zip",
    }.get(exc.reason, "")
    return _archive_error(f"{exc}{hint}", _ARCHIVE_REASONS.get(exc.reason, "CODE_ARCHIVE_UNSAFE"))


def check_archive(data: bytes, limits: CodeLimits | None = None) -> str:
    """'zip' or 'tar' when `data` is a readable archive that unpacks safely within the limits, else INVALID_ARGUMENT.

    Every header is bounded before tarfile or zipfile reads it (crucible.runtime.archives: member names at most 4096
    bytes and 255 per part, pax headers at most 64 KiB, no colliding names); then what tarfile's 'data' filter
    enforces: no absolute paths, no '..', no links leading out, no device, FIFO or socket members. Member count and
    unpacked size are bounded by `limits`, read from the headers before any member's data is decompressed.
    """
    limits = limits or CodeLimits()
    try:
        listing = archives.scan(data, archive_limits(limits))
    except archives.ArchiveError as exc:
        raise _refused_archive(exc) from None
    if listing.format == "zip":
        return "zip"
    dest = "/crucible-work"  # a stand-in destination: the filter only compares paths
    try:  # the headers are bounded now (scan), so tarfile reads them in time linear in their size
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as t:
            for i, m in enumerate(t):
                try:
                    tarfile.data_filter(m, dest)
                except tarfile.FilterError as exc:
                    raise _archive_error(f"member {i} ({archives.shown(m.name)}) is refused: {exc}"[:300]) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _archive_error(
            f"not a readable .tar.gz, .tar or .zip archive: {type(exc).__name__}", "CODE_ARCHIVE_INVALID"
        ) from None
    return "tar"


def unpack_code(spec: JobSpec, dest: Path, limits: CodeLimits | None = None) -> dict[str, list[int]]:
    """Copy code_dir or unpack code_archive into `dest`; returns {relative path: [size, mtime_ns]} of the code files.

    Runs in a thread. The code_dir is re-resolved against the allow-list and copied without following links; archives
    are checked again and unpacked with tarfile's 'data' filter (zip member by member); an archive whose members all
    lie under one top folder (`tar czf code.tar.gz code`) has that folder's contents unpacked, so `python train.py`
    finds train.py."""
    limits = limits or CodeLimits()
    dest.mkdir(parents=True, exist_ok=True)
    if spec.code_dir is not None:
        walk_code_dir(resolve_code_dir(spec.code_dir, limits), limits, dest)
    elif spec.code_archive is not None:
        try:  # scanned again here (bounded headers, names, sizes); the 'data' filter applies while unpacking
            archives.unpack(spec.code_archive, dest, archive_limits(limits))
        except archives.ArchiveError as exc:  # e.g. a CRC error found while unpacking
            raise _refused_archive(exc) from None
    manifest = {}
    for dirpath, _dirs, names in os.walk(dest):
        for name in names:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                manifest[path.relative_to(dest).as_posix()] = [st.st_size, st.st_mtime_ns]
    return manifest
