"""The sandbox of a local job: bubblewrap (`bwrap`) with a fresh uid, its own PID namespace, a private /tmp and a
filesystem view of system folders and the job's Python environment (read-only) plus its own folders (writable).

`Sandbox.command()` builds the argv of one attempt; `Sandbox.self_test()` checks at start-up that this host can make
such a sandbox. Nothing else of the host is in the view: the state folder, the object store, other jobs' folders,
the scheduler's secrets and token files and its /proc are absent (and masked where they lie under a folder shown).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# System folders shown read-only (symlinks, as on merged-/usr systems, are recreated as symlinks).
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# GPU and accelerator devices passed through when present (the rest of /dev is bubblewrap's minimal one).
DEVICE_GLOBS = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")
DEFAULT_UID_RANGE = (200000, 265535)
# What the job's Python is asked for: its prefixes, its import path and editable-install locations.
_DESCRIBE = r"""
import json, os, sys
paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
paths += [p for p in sys.path if p]
for name, module in list(sys.modules.items()):
    if name.startswith("__editable__") and isinstance(getattr(module, "MAPPING", None), dict):
        paths += [str(v) for v in module.MAPPING.values()]
print(json.dumps({"prefix": sys.prefix, "base_prefix": sys.base_prefix, "paths": paths}))
"""


class SandboxError(Exception):
    """The sandbox cannot be had on this host (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class PythonEnv:
    """The Python environment local jobs run with: its `python`, the folders it needs, its bin folder."""

    executable: str
    prefix: str  # sys.prefix: the self-test checks the sandboxed Python finds its environment
    folders: tuple[str, ...]  # shown read-only in the sandbox
    bin_dir: str  # put first on the job's PATH
    virtual_env: str  # the venv's folder ('' when the Python is not a venv): the job's VIRTUAL_ENV

    def job_env(self, inherited_path: str) -> dict[str, str]:
        """PATH (this environment's bin first) and VIRTUAL_ENV of a job, before the job's own env is applied."""
        env = {"PATH": os.pathsep.join(p for p in (self.bin_dir, inherited_path or "/usr/local/bin:/usr/bin:/bin") if p)}
        if self.virtual_env:
            env["VIRTUAL_ENV"] = self.virtual_env
        return env


def describe_python(python: str) -> PythonEnv:
    """Ask `python` (an absolute path or a name on PATH) where it lives; SandboxError when it cannot be run."""
    found = shutil.which(python) if not os.path.isabs(python) else python
    if not found or not os.access(found, os.X_OK):
        raise SandboxError(f"local_python {python!r} is not an executable file")
    executable = os.path.abspath(found)
    try:
        out = subprocess.run(
            [executable, "-c", _DESCRIBE],
            cwd="/",
            env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        info = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxError(f"local_python {executable}: cannot describe its environment: {exc}") from None
    folders = [os.path.dirname(executable)]
    for path in info["paths"]:
        real = os.path.realpath(path)
        if os.path.isdir(real) and real != "/":
            folders.append(path if os.path.isabs(path) else real)
            if real != os.path.abspath(path):
                folders.append(real)
    venv = info["prefix"] if info["prefix"] != info["base_prefix"] else ""
    return PythonEnv(executable, info["prefix"], _outermost(folders), os.path.dirname(executable), venv)


def _outermost(paths: Iterable[str]) -> tuple[str, ...]:
    """The distinct folders of `paths`, without those inside another one of them or inside a system folder."""
    kept: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}, key=len):
        if not any(_inside(path, k) for k in (*kept, *SYSTEM_FOLDERS)):
            kept.append(path)
    return tuple(sorted(kept))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def process_uids() -> set[int]:
    """Uids owning a live process on this host (a uid in use is never handed to a new job)."""
    uids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uids.add(os.stat(f"/proc/{name}").st_uid)
            except OSError:
                pass
    return uids


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """How local jobs are contained (see the module docstring). `hidden`: host paths never shown, even under a
    folder that is (the state folder, the store, secrets and token files)."""

    bwrap: str
    python: PythonEnv
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE
    read_only: tuple[str, ...] = ()  # extra folders shown read-only (a model cache, a data set)
    hidden: tuple[str, ...] = ()

    @property
    def as_root(self) -> bool:
        """Root sets the sandbox up without a user namespace and drops to the job's uid with setpriv; others use an
        unprivileged user namespace (their job's uid maps to their own)."""
        return os.geteuid() == 0

    def pick_uid(self, taken: Iterable[int] = ()) -> int:
        """A uid of the range that no process and no running job of this scheduler has."""
        busy = set(taken) | (process_uids() if self.as_root else set())
        low, high = self.uid_range
        for _ in range(64):
            uid = random.randint(low, high)
            if uid not in busy:
                return uid
        free = [u for u in range(low, high + 1) if u not in busy]
        if not free:
            raise SandboxError(f"every uid of job_uid_range {low}-{high} is in use")
        return random.choice(free)

    def command(self, argv: Sequence[str], *, uid: int, cwd: Path, writable: Sequence[Path] = (), gpus: bool = True) -> list[str]:
        """The bwrap argv that runs `argv` as `uid` in `cwd`, with only `cwd` and `writable` writable."""
        args = [self.bwrap]
        bound: list[str] = []  # read-only mounts: what lies below them exists with the host's modes
        masked: list[str] = []  # tmpfs mounts: folders below them must be made (0755) before a mount there
        made: set[str] = set()

        def parents(path: str) -> list[str]:
            """`--dir` for the folders above `path` that the sandbox lacks (bwrap would make them 0700): 0711, so
            the job passes through to its own folders and lists none of them."""
            out: list[str] = []
            for i in range(len(Path(path).parts) - 1, 1, -1):
                above = str(Path(*Path(path).parts[:i]))
                inside_bound = any(_inside(above, b) for b in bound)
                if above in made or above in masked or (inside_bound and not any(_inside(above, m) for m in masked)):
                    break
                out[:0] = ["--perms", "0711", "--dir", above]
                made.add(above)
            return out

        for folder in SYSTEM_FOLDERS:
            if os.path.islink(folder):
                args += ["--symlink", os.readlink(folder), folder]
            elif os.path.isdir(folder):
                args += ["--ro-bind", folder, folder]
                bound.append(folder)
        args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"]
        if gpus:
            for pattern in DEVICE_GLOBS:
                for device in sorted(glob.glob(pattern)):
                    args += ["--dev-bind", device, device]
        args += ["--ro-bind-try", "/sys", "/sys", "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/var/tmp"]
        masked += ["/tmp", "/var/tmp"]
        for folder in _outermost((*self.python.folders, *self.read_only)):  # (after /tmp: a venv may live there)
            if os.path.exists(folder):
                args += [*parents(folder), "--ro-bind", folder, folder]
                bound.append(folder)
        for path in self.hidden:  # masked where a shown folder would reveal it
            if path and any(_inside(path, f) for f in bound) and os.path.lexists(path):
                if os.path.isdir(path):
                    args += ["--perms", "0755", "--tmpfs", path]
                    masked.append(path)
                else:
                    args += ["--ro-bind", "/dev/null", path]
        for place in (str(cwd), *map(str, writable)):
            args += [*parents(place), "--bind", place, place]
        args += ["--chdir", str(cwd), "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--hostname", "crucible-job", "--die-with-parent", "--new-session"]
        if self.as_root:
            setpriv = shutil.which("setpriv", path="/usr/bin:/bin") or "/usr/bin/setpriv"
            args += ["--", setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            args += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *argv]
        else:
            args += ["--unshare-user", "--uid", str(uid), "--gid", str(uid), "--", *argv]
        return args

    def self_test(self) -> None:
        """Run the job's Python in a sandbox as a job would be run; SandboxError with the reason when it fails."""
        with tempfile.TemporaryDirectory(prefix="crucible-sandbox-test-") as folder:
            work = Path(folder) / "work"
            work.mkdir()
            uid = self.pick_uid()
            if self.as_root:
                os.chown(work, uid, uid)
            probe = "import os, sys; open('ok', 'w').write(f'{os.getuid()} {sys.prefix}')"
            argv = self.command([self.python.executable, "-c", probe], uid=uid, cwd=work, gpus=False)
            try:
                done = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin"}
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxError(f"the sandbox self-test could not run {self.bwrap}: {exc}") from None
            said = done.stderr.decode(errors="replace").strip()[-400:]
            if done.returncode != 0:
                raise SandboxError(f"the sandbox self-test failed (exit status {done.returncode}): {said or 'no message'}")
            wrote = (work / "ok").read_text() if (work / "ok").exists() else ""
            if wrote != f"{uid} {self.python.prefix}":
                raise SandboxError(f"the sandbox self-test found uid and Python {wrote or '?'}, not {uid} {self.python.prefix}")


def build_sandbox(
    python: str, *, uid_range: tuple[int, int], read_only: Sequence[str] = (), hidden: Sequence[str] = ()
) -> Sandbox:
    """The sandbox for this host, checked by running it once; SandboxError (naming the fix) when it cannot be had."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise SandboxError("bwrap (bubblewrap) is not installed: install the bubblewrap package (`make tools`)")
    for folder in read_only:
        if not os.path.isabs(folder):
            raise SandboxError(f"local_read_only: {folder!r} is not an absolute path")
    sandbox = Sandbox(
        bwrap,
        describe_python(python),
        uid_range,
        tuple(os.path.normpath(f) for f in read_only),
        tuple(os.path.abspath(h) for h in hidden if h),
    )
    sandbox.self_test()
    return sandbox


def parse_uid_range(text: str) -> tuple[int, int]:
    """'200000-265535' -> (200000, 265535); ValueError naming the problem."""
    low, sep, high = text.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"job_uid_range {text!r}: expected FIRST-LAST, e.g. 200000-265535")
    first, last = int(low), int(high)
    if not 1000 <= first <= last < 2**32 - 1:
        raise ValueError(f"job_uid_range {text!r}: expected 1000 <= FIRST <= LAST < 4294967295")
    return first, last


def file_url_folder(url: str, roots: Mapping[str, str] | Sequence[str]) -> Path | None:
    """The folder of a file:// URL when it lies inside one of `roots` (a job's own store folders), else None."""
    if not url.startswith("file://"):
        return None
    path = os.path.normpath(url[len("file://") :])
    if not os.path.isabs(path):
        return None
    return Path(path) if any(_inside(path, os.path.normpath(r)) and path != os.path.normpath(r) for r in roots) else None


__all__ = [
    "DEFAULT_UID_RANGE",
    "PythonEnv",
    "Sandbox",
    "SandboxError",
    "build_sandbox",
    "describe_python",
    "file_url_folder",
    "parse_uid_range",
    "process_uids",
]
