"""State files are the owner's alone: the SQLite databases (cost budgets, scheduler jobs, detector cache) and their
-wal/-shm files are 0600 whatever the umask, and the state folders the services create are 0700 (issue 22, probe 3).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.cost.budgets import BudgetStore, Enforcement
from crucible.detector.cache import SqliteCache
from crucible.runtime.statefile import open_state_db
from crucible.scheduler.persistence.jobdb import JobStore


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    """The umask a login shell has: without care, files come out 0644 and folders 0755."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cost(path: Path) -> Any:
    store = BudgetStore(path)
    store.create_budget(
        scope="team:x",
        display_name="x",
        limit_usd=1.0,
        thresholds=(50.0,),
        enforcement=Enforcement.HARD,
        request_id="r1",
        now_ns=1,
    )
    return store


def _jobs(path: Path) -> Any:
    return JobStore(path)


def _cache(path: Path) -> Any:
    return SqliteCache(path)


STORES: dict[str, Callable[[Path], Any]] = {"cost": _cost, "scheduler": _jobs, "detector cache": _cache}


@pytest.mark.parametrize("name", sorted(STORES))
def test_databases_and_their_wal_files_are_owner_only(name: str, tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "db.sqlite3"
    store = STORES[name](path)
    try:
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        assert Path(f"{path}-wal") in files, "the store is expected in WAL mode"
        for file in files:
            assert _mode(file) == 0o600, f"{file.name} is {oct(_mode(file))}"
    finally:
        store.close()


@pytest.mark.parametrize("name", ["cost", "detector cache"])
def test_the_state_folders_a_service_creates_are_owner_only(name: str, tmp_path: Path) -> None:
    path = tmp_path / "new-state" / "inner" / "db.sqlite3"
    STORES[name](path).close()
    assert _mode(tmp_path / "new-state" / "inner") == 0o700
    assert _mode(tmp_path / "new-state") == 0o700


def test_an_existing_world_readable_database_is_made_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    os.chmod(path, 0o644)
    assert _mode(path) == 0o644
    opened = open_state_db(path, field="database_path", what="test database")
    opened.execute("INSERT INTO t VALUES (1)")
    opened.commit()
    try:
        for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if file.exists():
                assert _mode(file) == 0o600, file.name
    finally:
        opened.close()
