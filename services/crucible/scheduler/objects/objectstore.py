"""Object store for jobs: code archives, checkpoints, artifacts and staged inputs, kept past the machine that ran them.

One interface: `file://` (the embedded default, under the scheduler's state folder; every path opened component by
component without following a link, `nofollow.py`) or `s3://` (s3fs, any S3-compatible endpoint). Every job owns the
prefix `<root>/jobs/<job_id>/` with `code/`, `checkpoints/`, `artifacts/`.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from crucible.scheduler.objects import nofollow

log = logging.getLogger(__name__)

KINDS = ("code", "checkpoints", "artifacts", "inputs")
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # \Z: `$` also accepts a trailing newline
MAX_REL_PATH = 1024
READ_CHUNK = 1 << 20


class StoreError(Exception):
    """A store operation failed (unreachable endpoint, denied, missing object); the message names the object."""


class UnsafeObject(StoreError):
    """A file:// store path leads through a link, or names a hard-linked or special file: never read nor written."""


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
            self._local(
                lambda root: nofollow.write_atomic(root, self._parts(job_id, kind, rel), lambda fd: _write_all(fd, data)), target
            )
        else:
            self._call(lambda: self.fs.pipe_file(target, data), target)

    def put_file(self, job_id: str, kind: str, rel: str, local: Path) -> None:
        """Upload a local regular file of the scheduler's own (not a job's) atomically."""
        fd = os.open(local, nofollow.FILE_FLAGS)
        try:
            os.set_blocking(fd, True)
            self.put_fd(job_id, kind, rel, fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def put_fd(self, job_id: str, kind: str, rel: str, fd: int, size: int) -> int:
        """Upload the first `size` bytes of the open file `fd`, atomically (temp name + rename locally; S3 publishes
        an object only when whole), copied once with no staging copy. A file:// store keeps holes of a sparse file as
        holes. Returns the bytes the store now holds for it (file://: data only; s3: `size`)."""
        target = self.path(job_id, kind, rel)
        if self.scheme == "file":

            def write(root: int) -> int:
                with nofollow.AtomicWriter(root, self._parts(job_id, kind, rel)) as out:
                    stored = nofollow.copy_sparse(fd, out.fd, size)
                    out.commit()
                return stored

            return int(self._local(write, target))

        def upload() -> int:
            with _S3Writer(self.fs.open(target, "wb")) as out:  # an error discards the upload: nothing partial appears
                pos = 0
                while pos < size:
                    block = os.pread(fd, min(READ_CHUNK, size - pos), pos)
                    if not block:
                        raise StoreError(f"{target}: the file shrank while it was being uploaded")
                    out.write(block)
                    pos += len(block)
                out.commit()
            return size

        return int(self._call(upload, target))

    def writer(self, job_id: str, kind: str, rel: str) -> Any:
        """An object written piece by piece: `write(bytes)`, then `commit()` publishes it whole or `abort()` drops it."""
        target = self.path(job_id, kind, rel)
        if self.scheme == "file":
            return self._local(lambda root: nofollow.AtomicWriter(root, self._parts(job_id, kind, rel)), target)
        return _S3Writer(self._call(lambda: self.fs.open(target, "wb"), target))

    # ---- reading ------------------------------------------------------------------------------------------------

    def list(self, job_id: str, kind: str, prefix: str = "") -> list[StoredObject]:
        """Objects under the job's kind folder (recursively) whose relative path starts with `prefix`, sorted by path.
        file://: regular single-link files only, no link followed (links, hard links and special files are left out)."""
        base = self.path(job_id, kind)
        if self.scheme == "file":

            def walk(root: int) -> list[StoredObject]:
                try:
                    fd = nofollow.open_dirs(root, self._parts(job_id, kind))
                except (FileNotFoundError, nofollow.UnsafePath):
                    return []
                try:
                    return [
                        StoredObject(rel, st.st_size, st.st_mtime) for rel, st in nofollow.files(fd) if rel.startswith(prefix)
                    ]
                finally:
                    os.close(fd)

            return sorted(self._local(walk, base), key=lambda o: o.path)
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
            if nofollow.is_temp(posixpath.basename(rel)) or not rel.startswith(prefix):
                continue
            out.append(StoredObject(rel, int(info.get("size") or 0), _mtime(info)))
        return sorted(out, key=lambda o: o.path)

    def stat(self, job_id: str, kind: str, rel: str) -> StoredObject | None:
        """The object, or None when there is none (file://: a link, hard link or special file counts as none)."""
        target = self.path(job_id, kind, rel)
        if self.scheme == "file":
            try:
                st = self._local(lambda root: self._fstat(root, self._parts(job_id, kind, rel)), target)
            except UnsafeObject as exc:
                log.warning("store: %s is not served: %s", target, exc)
                return None
            return None if st is None else StoredObject(rel, st.st_size, st.st_mtime)
        try:
            info = self.fs.info(target)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StoreError(f"{self.scheme}://{target}: {exc}") from exc
        if info.get("type") != "file":
            return None
        return StoredObject(rel, int(info.get("size") or 0), _mtime(info))

    @staticmethod
    def _fstat(root: int, parts: builtins.list[str]) -> os.stat_result | None:
        try:
            fd, st = nofollow.open_file(root, parts)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        os.close(fd)
        return st

    def read_range(self, job_id: str, kind: str, rel: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of one object; reads nothing before `offset`."""
        target = self.path(job_id, kind, rel)
        if self.scheme == "file":

            def read(root: int) -> bytes:
                fd, _st = nofollow.open_file(root, self._parts(job_id, kind, rel))
                try:
                    return os.pread(fd, length, offset)
                finally:
                    os.close(fd)

            return bytes(self._local(read, target))
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
        """Copy every object of the job's kind folder under `dest` (created); refuses more than `max_bytes` in all.
        Nothing under `dest` is followed either: a link there is replaced by the object, never written through."""
        objects = self.list(job_id, kind)
        total = sum(o.size for o in objects)
        if total > max_bytes:
            raise StoreError(f"{kind} of job {job_id} holds {total} bytes, over the limit of {max_bytes}")
        dest.mkdir(parents=True, exist_ok=True)
        dest_fd = nofollow.open_dir(dest)
        try:
            for obj in objects:
                parts = check_relative(obj.path).split("/")
                with nofollow.AtomicWriter(dest_fd, parts, mode=0o644) as out:
                    for block in self.iter_chunks(job_id, kind, obj.path):
                        out.write(block)
                    out.commit()
        except nofollow.UnsafePath as exc:
            raise UnsafeObject(f"{dest}: {exc}") from None
        finally:
            os.close(dest_fd)
        return total

    # ---- housekeeping -------------------------------------------------------------------------------------------

    def delete_job(self, job_id: str) -> int:
        """Remove every object of the job; returns how many files were removed. file://: links inside are removed,
        never followed."""
        base = self._job(job_id)
        if self.scheme == "file":

            def remove(root: int) -> int:
                try:
                    jobs = nofollow.open_dirs(root, ["jobs"])
                except FileNotFoundError:
                    return 0
                try:
                    try:
                        fd = nofollow.open_dirs(jobs, [job_id])
                    except FileNotFoundError:
                        return 0
                    except nofollow.UnsafePath:
                        count = 0  # a link in place of the job's folder: remove the link itself
                    else:
                        try:
                            count = sum(1 for _ in nofollow.files(fd))
                        finally:
                            os.close(fd)
                    nofollow.remove_tree(jobs, job_id)
                    return count
                finally:
                    os.close(jobs)

            return int(self._local(remove, base))
        if not self._call(lambda: self.fs.exists(base), base):
            return 0
        count = sum(len(self.list(job_id, kind)) for kind in KINDS)
        self._call(lambda: self.fs.rm(base, recursive=True), base)
        return count

    def sweep_temp(self) -> tuple[int, int]:
        """Remove the temporary files that uploads interrupted by a crash (kill -9) left in a file:// store:
        (files, bytes on disk) removed. Call it at start, before any upload. The jobs' own checkpoints/ folders are
        left alone (a job that kept running across the restart may be writing one). S3 publishes nothing partial."""
        if self.scheme != "file":
            return 0, 0

        def jobs_checkpoints(rel: str) -> bool:
            parts = rel.split("/")
            return len(parts) == 3 and parts[0] == "jobs" and parts[2] == "checkpoints"

        return self._local(lambda root: nofollow.sweep_temp(root, prune=jobs_checkpoints), self.root)

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

    def _parts(self, job_id: str, kind: str, rel: str = "") -> builtins.list[str]:
        """The components of a job's object under the file:// store root."""
        self.path(job_id, kind, rel)  # checks the id, kind and relative path
        return ["jobs", job_id, kind, *(check_relative(rel).split("/") if rel else [])]

    def _local(self, fn: Any, what: str) -> Any:
        """`fn(root_fd)` on the file:// store root; a link on the way is UnsafeObject, other errors StoreError (a
        missing object stays FileNotFoundError)."""
        try:
            root = nofollow.open_dir(self.root)
        except (OSError, nofollow.UnsafePath) as exc:
            raise StoreError(f"file://{self.root}: {exc}") from exc
        try:
            return fn(root)
        except nofollow.UnsafePath as exc:
            raise UnsafeObject(f"file://{what}: {exc}") from None
        except (FileNotFoundError, StoreError):
            raise
        except OSError as exc:
            raise StoreError(f"file://{what}: {type(exc).__name__}: {exc}") from exc
        finally:
            os.close(root)

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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _S3Writer:
    """StoreWriter over an s3fs file: the multipart upload is completed by commit, aborted by abort."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def commit(self) -> None:
        self.f.close()

    def abort(self) -> None:
        if not self.f.closed:
            self.f.discard()  # the multipart upload is aborted: nothing was published
            self.f.closed = True  # (so closing it later publishes nothing either)

    def __enter__(self) -> _S3Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def default_store_url(state_dir: Path) -> str:
    """The embedded default: a folder under the scheduler's state folder."""
    return f"file://{(state_dir / 'store').resolve()}"


__all__ = [
    "KINDS",
    "JobObjectStore",
    "StoreError",
    "StoreSettings",
    "StoredObject",
    "UnsafeObject",
    "check_relative",
    "default_store_url",
]
