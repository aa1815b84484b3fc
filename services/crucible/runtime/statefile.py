"""SQLite state files opened safely: an empty, foreign or corrupt file is refused at start, never served.

One helper for every service that keeps state in SQLite (cost database, scheduler job store, detector cache); the
files it opens are the owner's alone (0600, folders it creates 0700).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from crucible.runtime.errors import ConfigError

log = logging.getLogger(__name__)

#: The 16 bytes every SQLite 3 database file starts with (https://www.sqlite.org/fileformat.html, section 1.3).
SQLITE_MAGIC = b"SQLite format 3\x00"
#: How many problems an integrity check reports at most (the message lists the first few).
MAX_REPORTED_PROBLEMS = 5


class Check(enum.Enum):
    """How thoroughly the file is checked at open: `quick_check` is O(N) over the pages, `integrity_check` also compares
    every index with its table (slower on large files)."""

    QUICK = "quick_check"
    FULL = "integrity_check"


class OnCorrupt(enum.Enum):
    """What to do with a bad file: refuse to start (state), or move it aside and start empty (a pure cache)."""

    REFUSE = "refuse"
    MOVE_ASIDE = "move_aside"


class StateFileError(ConfigError):
    """A state file cannot be trusted; the message names the file, what is wrong and what to do. Raised at start-up."""

    def __init__(self, field: str, path: Path, problem: str, remedy: str) -> None:
        super().__init__(field, f"{path}: {problem}. {remedy}")
        self.path = path
        self.problem = problem


#: Mode of every state file (database and its -wal/-shm/-journal files): the owner's alone, never another user's
#: (a job running under another uid on the same machine must not read budgets, jobs or cached results).
FILE_MODE = 0o600
#: Mode of a state folder this module creates.
DIR_MODE = 0o700


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def private_dir(folder: str | Path) -> Path:
    """Create `folder` (and missing parents) as DIR_MODE (0700) whatever the umask; an existing folder is left as it
    is (its owner chose its mode: the scheduler's opens a way through to job folders)."""
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for part in reversed(missing):
        try:
            part.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(part, DIR_MODE)  # mkdir's mode is masked by the umask
    return folder


def private_file(path: Path) -> None:
    """Make the state file at `path` owner-only: create it empty as FILE_MODE when absent (SQLite then gives its -wal
    and -shm files the same mode), and take group/other bits off an existing file and its sidecars."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    for file in [path, *_sidecars(path)]:
        try:
            info = file.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.chmod(file, stat.S_IMODE(info.st_mode) & ~0o077)


def _problem_before_open(path: Path) -> str | None:
    """What is wrong with an existing file before SQLite sees it, or None."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_size == 0:
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            return None  # a write-ahead log holds the content; SQLite recovers it and the check below judges it
        return (
            "is empty (0 bytes) although it exists: it was truncated, or created by something else; starting "
            "empty would silently lose the state it held"
        )
    with open(path, "rb") as handle:
        head = handle.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        return "is not a SQLite database (wrong header)"
    return None


def _integrity(db: sqlite3.Connection, check: Check) -> str | None:
    rows = db.execute(f"PRAGMA {check.value}({MAX_REPORTED_PROBLEMS})").fetchall()
    messages = [str(r[0]) for r in rows]
    if messages == ["ok"]:
        return None
    return f"failed PRAGMA {check.value}: " + "; ".join(messages[:MAX_REPORTED_PROBLEMS])


def _move_aside(path: Path, problem: str, what: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for src in [path, *_sidecars(path)]:
        if src.exists():
            src.replace(target.with_name(target.name + src.name[len(path.name) :]))
    log.warning("%s %s %s; moved it to %s and starting with an empty one", what, path, problem, target)
    return target


def open_state_db(
    path: str | Path,
    *,
    field: str,
    what: str,
    check: Check = Check.QUICK,
    on_corrupt: OnCorrupt = OnCorrupt.REFUSE,
    **connect_kwargs: Any,
) -> sqlite3.Connection:
    """Open (creating when absent) the SQLite file at `path` after checking an existing one.

    An existing file that is not a regular file, is empty without a write-ahead log, lacks the SQLite header, cannot be
    opened or fails `PRAGMA quick_check`/`integrity_check` raises StateFileError naming `field` and the file (the service
    must not start), or, with OnCorrupt.MOVE_ASIDE, is renamed to `<name>.corrupt-<time>` with a warning and replaced
    by an empty database. `what` names the file in messages ("cost database"). ":memory:" is opened unchecked.
    `connect_kwargs` go to sqlite3.connect.
    """
    if str(path) == ":memory:":
        memory: sqlite3.Connection = sqlite3.connect(":memory:", **connect_kwargs)
        return memory
    path = Path(path)
    remedy = (
        f"The {what} is not opened, so nothing is served from it: restore it from a backup, or move it away "
        f"to start with an empty {what} (its contents are then lost)"
    )
    if path.exists() and not path.is_file():
        # A folder, FIFO, socket or device is a setting gone wrong, never something to move aside, even for a cache.
        raise StateFileError(field, path, f"the {what} is not a regular file", f"Point {field} at a file")
    private_dir(path.parent)
    for attempt in range(2):
        problem = _problem_before_open(path) if path.exists() else None
        db: sqlite3.Connection | None = None
        if problem is None:
            try:
                # An absent file is created 0600 here, before SQLite creates it with the umask's mode.
                private_file(path)
                db = sqlite3.connect(str(path), **connect_kwargs)
                problem = _integrity(db, check)
            except sqlite3.DatabaseError as err:
                problem = f"cannot be read as SQLite ({err})"
            if problem is None:
                return db  # type: ignore[return-value]
            if db is not None:
                db.close()
        if on_corrupt is OnCorrupt.REFUSE or attempt:
            raise StateFileError(field, path, f"the {what} {problem}", remedy)
        _move_aside(path, problem, what)
    raise AssertionError("unreachable")  # pragma: no cover
