"""The one SQLite opener (crucible.runtime.sqlite): WAL, synchronous level, busy timeout, schema, file checks, modes.

Also checks that the services which keep SQLite state (cost budgets, detector cache) open their files through it.
"""

from __future__ import annotations

import logging
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from crucible.runtime import sqlite as opener
from crucible.runtime.statefile import OnCorrupt, StateFileError

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"


def _pragma(db: sqlite3.Connection, name: str) -> object:
    return db.execute(f"PRAGMA {name}").fetchone()[0]


@pytest.mark.parametrize(("level", "number"), [("FULL", 2), ("NORMAL", 1)])
def test_opens_in_wal_with_the_asked_synchronous_level_busy_timeout_and_schema(tmp_path: Path, level, number) -> None:
    db = opener.open_database(
        tmp_path / "state" / "x.db", field="f", what="test db", schema=SCHEMA, synchronous=level, busy_timeout_s=2.5
    )
    try:
        assert _pragma(db, "journal_mode") == "wal"
        assert _pragma(db, "synchronous") == number
        assert _pragma(db, "busy_timeout") == 2500
        assert db.isolation_level is None  # autocommit: callers open their own transactions
        db.execute("INSERT INTO t VALUES ('a', 1)")
        # Usable from another thread (the services share one connection under their own lock).
        seen: list[int] = []
        worker = threading.Thread(target=lambda: seen.append(db.execute("SELECT v FROM t").fetchone()[0]))
        worker.start()
        worker.join()
        assert seen == [1]
    finally:
        db.close()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state" / "x.db").stat().st_mode) == 0o600


def test_a_second_open_sees_the_data_and_keeps_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = opener.open_database(path, field="f", what="test db", schema=SCHEMA)
    db.execute("INSERT INTO t VALUES ('a', 1)")
    db.close()
    again = opener.open_database(path, field="f", what="test db", schema=SCHEMA)
    try:
        assert again.execute("SELECT k, v FROM t").fetchall() == [("a", 1)]
    finally:
        again.close()


@pytest.mark.parametrize("bad", ["OFF", "normal; DROP TABLE t", ""])
def test_refuses_a_synchronous_level_it_does_not_know(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of FULL, NORMAL"):
        opener.open_database(tmp_path / "x.db", field="f", what="test db", synchronous=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "x.db").exists()


def test_refuses_a_negative_busy_timeout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="busy_timeout_s"):
        opener.open_database(tmp_path / "x.db", field="f", what="test db", busy_timeout_s=-1)


def test_a_corrupt_file_is_refused_or_moved_aside_as_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(b"not a database at all, just text" * 10)
    with pytest.raises(StateFileError, match=r"test db is not a SQLite database"):
        opener.open_database(path, field="the_field", what="test db", schema=SCHEMA)
    with caplog.at_level(logging.WARNING, logger="crucible.runtime.statefile"):
        db = opener.open_database(path, field="the_field", what="test db", schema=SCHEMA, on_corrupt=OnCorrupt.MOVE_ASIDE)
    try:
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    finally:
        db.close()
    assert any(p.name.startswith("x.db.corrupt-") for p in tmp_path.iterdir())


def test_a_bad_schema_closes_the_connection_and_raises(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        opener.open_database(tmp_path / "x.db", field="f", what="test db", schema="CREATE TABLE broken (")


def test_memory_database_gets_the_same_settings() -> None:
    db = opener.open_database(":memory:", field="f", what="test db", schema=SCHEMA, synchronous="FULL")
    try:
        assert _pragma(db, "synchronous") == 2
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    finally:
        db.close()


def test_cost_budgets_and_detector_cache_open_their_files_through_it(tmp_path: Path, monkeypatch) -> None:
    from crucible.cost.budgets import BudgetStore
    from crucible.detector.cache import SqliteCache

    opened: list[str] = []
    real = opener.open_database

    def spy(path, **kwargs):
        opened.append(kwargs["what"])
        return real(path, **kwargs)

    import crucible.cost.budgets as budgets_module
    import crucible.detector.cache as cache_module

    monkeypatch.setattr(budgets_module, "open_database", spy)
    monkeypatch.setattr(cache_module, "open_database", spy)
    store = BudgetStore(tmp_path / "cost" / "cost.sqlite3")
    cache = SqliteCache(tmp_path / "det" / "cache.db")
    try:
        assert opened == ["cost database", "detector result cache"]
        assert _pragma(store._db, "journal_mode") == "wal"
        assert _pragma(store._db, "busy_timeout") == 5000
        assert _pragma(cache._db, "journal_mode") == "wal"
    finally:
        store.close()
        cache.close()
