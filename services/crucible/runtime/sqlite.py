"""The one SQLite opener of every service: a checked state file in WAL mode with its synchronous level and busy timeout.

The cost database, the scheduler's job database and the detector's result cache open their files here, so the
file checks (runtime.statefile), the journal mode and the locking settings are written once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from crucible.runtime.statefile import Check, OnCorrupt, open_state_db, private_dir

#: `PRAGMA synchronous` levels a service may ask for. In WAL mode FULL survives a power loss, NORMAL a process crash.
Synchronous = Literal["FULL", "NORMAL"]
SYNCHRONOUS_LEVELS: tuple[Synchronous, ...] = ("FULL", "NORMAL")
#: How long a writer waits for another connection's lock before SQLITE_BUSY ("database is locked"), by default.
DEFAULT_BUSY_TIMEOUT_S = 5.0


def open_database(
    path: str | Path,
    *,
    field: str,
    what: str,
    schema: str = "",
    synchronous: Synchronous = "NORMAL",
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    check: Check = Check.QUICK,
    on_corrupt: OnCorrupt = OnCorrupt.REFUSE,
) -> sqlite3.Connection:
    """Open the SQLite file at `path` for a service and return the connection, schema applied.

    The folder is created owner-only, an existing file is checked first (open_state_db: `field` and `what` name it in the
    StateFileError that refuses a bad file, or with OnCorrupt.MOVE_ASIDE it is set aside and started empty). The
    connection is in autocommit mode (callers open their own BEGIN ... COMMIT), may be used from any thread (callers hold
    their own lock), journals in WAL, syncs at `synchronous` and waits up to `busy_timeout_s` for another writer.
    ":memory:" opens an unchecked in-memory database with the same settings (its journal mode stays "memory").
    """
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}, not {synchronous!r}")
    if not busy_timeout_s >= 0:
        raise ValueError(f"busy_timeout_s must be >= 0, not {busy_timeout_s!r}")
    if str(path) != ":memory:":
        private_dir(Path(path).parent)  # 0700 when created: state is nobody else's to read
    db = open_state_db(
        path,
        field=field,
        what=what,
        check=check,
        on_corrupt=on_corrupt,
        check_same_thread=False,
        isolation_level=None,
        timeout=busy_timeout_s,
    )
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")  # one of SYNCHRONOUS_LEVELS, checked above
        if schema:
            db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db
