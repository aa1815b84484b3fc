"""Object store for jobs: code archives, checkpoints, artifacts and staged inputs, kept past the machine that ran them.

One interface over fsspec: `file://` (the embedded default, under the scheduler's state folder) or `s3://` (s3fs, any
S3-compatible endpoint). Every job owns the prefix `<root>/jobs/<job_id>/` with `code/`, `checkpoints/`, `artifacts/`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

KINDS = ("code", "checkpoints", "artifacts", "inputs")
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # \Z: `$` also accepts a trailing newline
MAX_REL_PATH = 1024
READ_CHUNK = 1 << 20


class StoreError(Exception):
    """A store operation failed (unreachable endpoint, denied, missing object); the message names the object."""


def check_relative(path: str, field: str = "path") -> str:
    """A normalised POSIX path inside its folder: no absolute path, no `..`, no NUL, bounded length; ValueError else."""
    if not path or len(path) > MAX_REL_PATH:
        raise ValueError(f"{field} must be 1..{MAX_REL_PATH} characters")
    if "\x00" in path or "\\" in path:
        raise ValueError(f"{field} must not contain NUL or backslashes")
    if path.startswith("/"):
        raise ValueError(f"{field} must be relative")
    norm = posixpath.normpath(path)
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise ValueError(f"{field} must stay inside its folder")
    return norm


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """Where job objects live and how jobs are given access (see the scheduler README, "Object store")."""

    #: `file:///absolute/folder` or `s3://bucket/prefix`.
    url: str
    #: S3 endpoint (MinIO, R2, a loopback test server); empty = AWS's default for the region.
    endpoint_url: str = ""
    access_key: str = ""
    secret_key: str = ""
    region: str = ""
    #: S3: an IAM role the scheduler assumes (STS) with a session policy limited to one job's prefix, so a job gets
    #: short-lived keys that reach only its own objects. Empty: jobs get no store keys unless `share_credentials`.
    role_arn: str = ""
    #: S3 without a role: hand the scheduler's own store keys to jobs (they can then read every job's objects).
    share_credentials: bool = False

    def __repr__(self) -> str:  # never print keys
        return f"StoreSettings(url={self.url!r}, endpoint_url={self.endpoint_url!r}, role_arn={self.role_arn!r})"


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """One object under a job's folder: path relative to the kind folder, size in bytes, modification time (epoch s)."""

    path: str
    size: int
    mtime: float


class JobObjectStore:
    """Per-job objects on a file:// or s3:// store. Every method blocks: call it from a worker thread."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        parsed = urlparse(settings.url)
        self.scheme = parsed.scheme or "file"
        if self.scheme == "file":
            root = Path(parsed.path if parsed.scheme else settings.url)
            if parsed.netloc not in ("", "localhost") or not root.is_absolute():
                raise ValueError(f"artifact store {settings.url!r}: a file:// store needs an absolute path")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.root = str(root)
            import fsspec

            self.fs = fsspec.filesystem("file")
        elif self.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"artifact store {settings.url!r}: s3:// needs a bucket")
            self.root = (parsed.netloc + "/" + parsed.path.strip("/")).rstrip("/")
            self.fs = self._s3(settings.access_key, settings.secret_key, "")
        else:
            raise ValueError(f"artifact store {settings.url!r}: scheme must be file:// or s3://")

    def _s3(self, key: str, secret: str, token: str) -> Any:
        import s3fs

        client_kwargs: dict[str, Any] = {}
        if self.settings.endpoint_url:
            client_kwargs["endpoint_url"] = self.settings.endpoint_url
        if self.settings.region:
            client_kwargs["region_name"] = self.settings.region
        return s3fs.S3FileSystem(
            key=key or None,
            secret=secret or None,
            token=token or None,
            client_kwargs=client_kwargs,
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    # ---- naming -------------------------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        if not JOB_ID.match(job_id):
            raise ValueError(f"job id {job_id!r} is not a valid store prefix")
        return f"{self.root}/jobs/{job_id}"

    def path(self, job_id: str, kind: str, rel: str = "") -> str:
        """The store path (no scheme) of `rel` under the job's `kind` folder."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        base = f"{self._job(job_id)}/{kind}"
        return f"{base}/{check_relative(rel)}" if rel else base

    def url(self, job_id: str, kind: str, rel: str = "") -> str:
        """The same as a URL a job (or fsspec) can open: file:///... or s3://..."""
        return f"{self.scheme}://{self.path(job_id, kind, rel)}"

    # ---- writing ------------------------------------------------------------------------------------------------

    def put_bytes(self, job_id: str, kind: str, rel: str, data: bytes) -> None:
        """Write one object atomically: readers see the old object or the whole new one, never a part."""
        target = self.path(job_id, kind, rel)
        if self.scheme == "file":
            _atomic_local_write(Path(target), lambda f: f.write(data))
        else:
            self._call(lambda: self.fs.pipe_file(target, data), target)

    def put_file(self, job_id: str, kind: str, rel: str, local: Path) -> None:
        """Upload a local regular file atomically (temp name + rename locally; S3 publishes an object only when whole)."""
        target = self.path(job_id, kind, rel)
        if self.scheme == "file":

            def copy(f: Any) -> None:
                with open(local, "rb") as src:
                    shutil.copyfileobj(src, f, READ_CHUNK)

            _atomic_local_write(Path(target), copy)
        else:
            self._call(lambda: self.fs.put_file(str(local), target), target)

    # ---- reading ------------------------------------------------------------------------------------------------

    def list(self, job_id: str, kind: str, prefix: str = "") -> list[StoredObject]:
        """Objects under the job's kind folder (recursively) whose relative path starts with `prefix`, sorted by path."""
        base = self.path(job_id, kind)
        try:
            found = self._call(lambda: self.fs.find(base, detail=True), base)
        except StoreError:
            if not self._call(lambda: self.fs.exists(base), base):
                return []
            raise
        out = []
        for full, info in found.items():
            if info.get("type") not in (None, "file"):
                continue
            rel = full[len(base) + 1 :] if full.startswith(base + "/") else full
            if ".tmp-" in posixpath.basename(rel) or not rel.startswith(prefix):
                continue
            out.append(StoredObject(rel, int(info.get("size") or 0), _mtime(info)))
        return sorted(out, key=lambda o: o.path)

    def stat(self, job_id: str, kind: str, rel: str) -> StoredObject | None:
        target = self.path(job_id, kind, rel)
        try:
            info = self.fs.info(target)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StoreError(f"{self.scheme}://{target}: {exc}") from exc
        if info.get("type") != "file":
            return None
        return StoredObject(rel, int(info.get("size") or 0), _mtime(info))

    def read_range(self, job_id: str, kind: str, rel: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of one object; reads nothing before `offset`."""
        target = self.path(job_id, kind, rel)
        return self._call(lambda: self.fs.cat_file(target, start=offset, end=offset + length), target)

    def iter_chunks(self, job_id: str, kind: str, rel: str, offset: int = 0, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """The object from `offset` on, in chunks (each a separate ranged read)."""
        stat = self.stat(job_id, kind, rel)
        if stat is None:
            raise FileNotFoundError(rel)
        pos = offset
        while pos < stat.size:
            block = self.read_range(job_id, kind, rel, pos, min(chunk, stat.size - pos))
            if not block:
                break
            pos += len(block)
            yield block

    def download_tree(self, job_id: str, kind: str, dest: Path, *, max_bytes: int) -> int:
        """Copy every object of the job's kind folder under `dest` (created); refuses more than `max_bytes` in all."""
        objects = self.list(job_id, kind)
        total = sum(o.size for o in objects)
        if total > max_bytes:
            raise StoreError(f"{kind} of job {job_id} holds {total} bytes, over the limit of {max_bytes}")
        dest.mkdir(parents=True, exist_ok=True)
        for obj in objects:
            local = dest / check_relative(obj.path)
            local.parent.mkdir(parents=True, exist_ok=True)
            source = self.path(job_id, kind, obj.path)
            self._call(lambda s=source, d=local: self.fs.get_file(s, str(d)), source)
        return total

    # ---- housekeeping -------------------------------------------------------------------------------------------

    def delete_job(self, job_id: str) -> int:
        """Remove every object of the job; returns how many files were removed."""
        base = self._job(job_id)
        if not self._call(lambda: self.fs.exists(base), base):
            return 0
        count = sum(len(self.list(job_id, kind)) for kind in KINDS)
        self._call(lambda: self.fs.rm(base, recursive=True), base)
        return count

    def read_url(self, job_id: str, kind: str, rel: str, expires_s: int) -> str:
        """A URL the job's machine can GET without keys: presigned for S3 (expires), the file path for file://."""
        target = self.path(job_id, kind, rel)
        if self.scheme == "file":
            return f"file://{target}"
        return self._call(lambda: self.fs.sign(f"s3://{target}", expiration=int(expires_s)), target)

    def job_env(self, job_id: str, duration_s: float) -> dict[str, str]:
        """Environment a job gets to reach its own checkpoints and artifacts (see the README for each store's scope).

        file://: the URLs only (the job's folder is made writable for the job's user by the local provider).
        s3:// with `role_arn`: STS keys valid for the job's duration (15 min..12 h), a session policy limited to the
        job's prefix. s3:// with `share_credentials`: the scheduler's keys. Otherwise: the URLs without keys.
        """
        env = {
            "CRUCIBLE_CHECKPOINT_URL": self.url(job_id, "checkpoints"),
            "CRUCIBLE_ARTIFACT_URL": self.url(job_id, "artifacts"),
        }
        if self.scheme != "s3":
            return env
        if self.settings.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.settings.endpoint_url
            env["AWS_ENDPOINT_URL_S3"] = self.settings.endpoint_url
        if self.settings.region:
            env["AWS_DEFAULT_REGION"] = self.settings.region
        if self.settings.role_arn:
            env.update(self._scoped_keys(job_id, duration_s))
        elif self.settings.share_credentials and self.settings.access_key:
            env["AWS_ACCESS_KEY_ID"] = self.settings.access_key
            env["AWS_SECRET_ACCESS_KEY"] = self.settings.secret_key
        return env

    def _scoped_keys(self, job_id: str, duration_s: float) -> dict[str, str]:
        import boto3

        bucket, _, prefix = self._job(job_id).partition("/")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                    "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
                },
                {
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{bucket}"],
                    "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}},
                },
            ],
        }
        sts = boto3.client(
            "sts",
            endpoint_url=self.settings.endpoint_url or None,
            region_name=self.settings.region or "us-east-1",
            aws_access_key_id=self.settings.access_key or None,
            aws_secret_access_key=self.settings.secret_key or None,
        )
        seconds = int(min(12 * 3600, max(900, duration_s)))
        try:
            creds = sts.assume_role(
                RoleArn=self.settings.role_arn,
                RoleSessionName=f"crucible-{job_id}"[:64],
                Policy=json.dumps(policy),
                DurationSeconds=seconds,
            )["Credentials"]
        except Exception as exc:
            raise StoreError(f"could not get scoped store keys for job {job_id}: {exc}") from exc
        return {
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"],
        }

    def _call(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StoreError(f"{self.scheme}://{what}: {type(exc).__name__}: {exc}") from exc


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("created", 0.0)))
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


def _atomic_local_write(target: Path, write: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def default_store_url(state_dir: Path) -> str:
    """The embedded default: a folder under the scheduler's state folder."""
    return f"file://{(state_dir / 'store').resolve()}"


__all__ = ["KINDS", "JobObjectStore", "StoreError", "StoreSettings", "StoredObject", "check_relative", "default_store_url"]
