"""Budgets, recorded usage and threshold alerts, persisted in SQLite so spend survives restarts.

`BudgetStore` is synchronous (each call is one short transaction); `AlertHub` fans alerts out to asyncio watchers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import json
import logging
import math
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from crucible.cost import limits
from crucible.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, echo
from crucible.runtime.sqlite import open_database
from crucible.runtime.statefile import Check, StateFileError

log = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (50.0, 80.0, 100.0)
GLOBAL_SCOPE = "global"
MAX_THRESHOLDS = 20
MAX_DISPLAY_NAME = limits.MAX_DISPLAY_NAME
MAX_REQUEST_ID = limits.MAX_REQUEST_ID
MAX_JOB_ID = limits.MAX_JOB_ID
#: Largest amount a stored usage cost or budget spend may hold; anything else (infinite, negative) is damage.
_MAX_STORED_USD = 1e15
#: Longest recorded interval of one usage record (100 years, the longest protobuf Duration the mesh accepts).
MAX_INTERVAL_NS = 100 * 366 * 24 * 3600 * 1_000_000_000
#: Used with fullmatch: `$` would also accept a trailing newline ("team:x\n" is not "team:x").
_SCOPE = re.compile(r"[a-z0-9_.-]+:[a-z0-9_.-]+")
# Relative slack when comparing spend with a threshold, so 10 x $0.10 reaches a $1.00 limit despite float rounding.
_EPS = 1e-9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    budget_id TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    display_name TEXT NOT NULL,
    limit_usd REAL NOT NULL,
    thresholds TEXT NOT NULL,
    enforcement TEXT NOT NULL,
    spent_usd REAL NOT NULL,
    create_ns INTEGER NOT NULL,
    update_ns INTEGER NOT NULL,
    request_id TEXT UNIQUE,
    fingerprint TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS budgets_scope ON budgets(scope, seq);
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    offer_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    price_usd_per_hour REAL NOT NULL,
    cost_usd REAL NOT NULL,
    record_ns INTEGER NOT NULL,
    PRIMARY KEY (job_id, start_ns, end_ns)
);
CREATE INDEX IF NOT EXISTS usage_scope ON usage(scope, end_ns);
CREATE TABLE IF NOT EXISTS alerts (
    budget_id TEXT NOT NULL,
    threshold REAL NOT NULL,
    spent_usd REAL NOT NULL,
    job_id TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    PRIMARY KEY (budget_id, threshold)
);
"""


class Enforcement(enum.Enum):
    """Soft budgets alert only; hard budgets refuse admission and stop the scope's jobs."""

    SOFT = "soft"
    HARD = "hard"


@dataclasses.dataclass(frozen=True)
class Budget:
    """A budget with its current spend and the thresholds already crossed (ascending)."""

    budget_id: str
    scope: str
    display_name: str
    limit_usd: float
    thresholds: tuple[float, ...]
    enforcement: Enforcement
    spent_usd: float
    crossed: tuple[float, ...]
    create_ns: int
    update_ns: int


@dataclasses.dataclass(frozen=True)
class Usage:
    """One recorded interval [start_ns, end_ns) of a job on an offer and its cost."""

    job_id: str
    offer_id: str
    scope: str
    start_ns: int
    end_ns: int
    price_usd_per_hour: float
    cost_usd: float
    record_ns: int


@dataclasses.dataclass(frozen=True)
class Alert:
    """A threshold crossing, raised once per budget and threshold."""

    budget_id: str
    scope: str
    threshold: float
    spent_usd: float
    limit_usd: float
    enforcement: Enforcement
    job_id: str
    time_ns: int


@dataclasses.dataclass(frozen=True)
class RecordResult:
    """What RecordUsage did: the stored usage, whether it was a repeat, the job's total and every budget charged."""

    usage: Usage
    already_recorded: bool
    job_spent_usd: float
    budgets: tuple[Budget, ...]
    alerts: tuple[tuple[Alert, Budget], ...]


@dataclasses.dataclass(frozen=True)
class BudgetCheck:
    """How one budget would look with a job's estimated cost added."""

    budget: Budget
    projected_usd: float

    @property
    def would_exceed(self) -> bool:
        """True when the projection is above the limit."""
        return self.projected_usd > self.budget.limit_usd * (1 + _EPS)


def check_scope(scope: str, field: str, *, allow_empty: bool) -> str:
    """`global` or `kind:name` in lower-case letters, digits, '-', '_' and '.', at most 128 characters; InvalidArgument
    otherwise (the length is checked before the pattern, so an oversized scope costs nothing)."""
    if len(scope) > limits.MAX_SCOPE:
        raise InvalidArgument.field(field, f"at most {limits.MAX_SCOPE} characters, got {len(scope)}", reason="SCOPE_TOO_LONG")
    if not scope:
        if allow_empty:
            return ""
        raise InvalidArgument.field(field, "required, e.g. 'user:alice', 'project:nanogpt' or 'global'", reason="MISSING_SCOPE")
    if scope != GLOBAL_SCOPE and not _SCOPE.fullmatch(scope):
        raise InvalidArgument.field(
            field,
            f"must be 'global' or 'kind:name' in lower-case letters, digits, '-', '_' and '.', got {echo(scope)}",
            reason="BAD_SCOPE",
        )
    return scope


def check_thresholds(values: Sequence[float], field: str) -> tuple[float, ...]:
    """Thresholds in (0, 100] without duplicates, sorted; empty means the default 50/80/100."""
    if not values:
        return DEFAULT_THRESHOLDS
    if len(values) > MAX_THRESHOLDS:
        raise InvalidArgument.field(field, f"at most {MAX_THRESHOLDS} thresholds", reason="TOO_MANY_THRESHOLDS")
    seen: set[float] = set()
    for i, v in enumerate(values):
        if not math.isfinite(v) or not 0 < v <= 100:
            raise InvalidArgument.field(
                f"{field}[{i}]", f"must be in (0, 100] percent, got {v!r}", reason="THRESHOLD_OUT_OF_RANGE"
            )
        if v in seen:
            raise InvalidArgument.field(f"{field}[{i}]", f"duplicate threshold {v:g}", reason="DUPLICATE_THRESHOLD")
        seen.add(v)
    return tuple(sorted(seen))


def _reached(spent: float, limit: float, threshold: float) -> bool:
    return spent + _EPS * limit >= limit * threshold / 100.0


class BudgetStore:
    """Budgets, usage and alerts in one SQLite file (WAL). Safe to share between threads; each method is one transaction."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        # The spend database is money: a truncated or corrupt file refuses the start (StateFileError) instead of
        # serving a broken table; the full check also compares indexes with their tables (the file stays small).
        self._db = open_database(self.path, field="database_path", what="cost database", schema=_SCHEMA, check=Check.FULL)
        if self.path != ":memory:":
            self._check_amounts()

    def _check_amounts(self) -> None:
        """Refuse a database whose spend is not a finite number (left by an unbounded price before prices were bounded):
        every admission against it would be refused, so it must be repaired, not served."""
        bad_usage = self._db.execute(
            "SELECT job_id, start_ns, end_ns FROM usage WHERE NOT (cost_usd BETWEEN ? AND ?) LIMIT 5", (0.0, _MAX_STORED_USD)
        ).fetchall()
        bad_budgets = [
            r[0]
            for r in self._db.execute(
                "SELECT budget_id FROM budgets WHERE NOT (spent_usd BETWEEN ? AND ?) LIMIT 5", (0.0, _MAX_STORED_USD)
            )
        ]
        if bad_usage or bad_budgets:
            where = "; ".join(
                [f"usage of job {j!r} [{a}, {b}) ns" for j, a, b in bad_usage] + [f"budget {b}" for b in bad_budgets]
            )
            raise StateFileError(
                "database_path",
                Path(self.path),
                f"the cost database holds spend that is negative or not a finite number ({where})",
                "Delete those usage rows and set each budget's spent_usd to the sum of its scope's usage (sqlite3 CLI), "
                "or restore a backup; the service does not start on it",
            )

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------------------------------------ budgets

    def _budget_from_row(self, db: sqlite3.Connection, row: sqlite3.Row | tuple[Any, ...]) -> Budget:
        (budget_id, scope, display_name, limit_usd, thresholds, enforcement, spent, create_ns, update_ns) = row
        crossed = tuple(
            t for (t,) in db.execute("SELECT threshold FROM alerts WHERE budget_id = ? ORDER BY threshold", (budget_id,))
        )
        return Budget(
            budget_id,
            scope,
            display_name,
            limit_usd,
            tuple(json.loads(thresholds)),
            Enforcement(enforcement),
            spent,
            crossed,
            create_ns,
            update_ns,
        )

    _COLS = "budget_id, scope, display_name, limit_usd, thresholds, enforcement, spent_usd, create_ns, update_ns"

    def create_budget(
        self,
        *,
        scope: str,
        display_name: str,
        limit_usd: float,
        thresholds: Sequence[float],
        enforcement: Enforcement,
        request_id: str,
        now_ns: int,
    ) -> Budget:
        """Validate and store a budget; a retried `request_id` returns the first budget (AlreadyExists if it differs)."""
        scope = check_scope(scope, "budget.scope", allow_empty=False)
        limits.text(display_name, "budget.display_name", MAX_DISPLAY_NAME)
        limits.amount(limit_usd, "budget.limit_usd", limits.MAX_USD, positive=True)
        levels = check_thresholds(thresholds, "budget.alert_thresholds_percent")
        limits.text(request_id, "request_id", MAX_REQUEST_ID)
        fingerprint = hashlib.sha256(json.dumps([scope, display_name, limit_usd, levels, enforcement.value]).encode()).hexdigest()
        with self._tx() as db:
            if request_id:
                found = db.execute("SELECT fingerprint, budget_id FROM budgets WHERE request_id = ?", (request_id,)).fetchone()
                if found is not None:
                    if found[0] != fingerprint:
                        raise AlreadyExists(
                            f"request_id {echo(request_id)} was already used to create a different budget",
                            reason="REQUEST_ID_REUSED",
                            metadata={"budget_id": found[1]},
                        )
                    return self._get(db, found[1])
            budget_id = f"bud-{secrets.token_hex(6)}"
            spent = self._scope_spend(db, scope, now_ns)
            db.execute(
                "INSERT INTO budgets (budget_id, scope, display_name, limit_usd, thresholds, enforcement, spent_usd, "
                "create_ns, update_ns, request_id, fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    budget_id,
                    scope,
                    display_name,
                    limit_usd,
                    json.dumps(levels),
                    enforcement.value,
                    spent,
                    now_ns,
                    now_ns,
                    request_id or None,
                    fingerprint,
                ),
            )
            return self._get(db, budget_id)

    @staticmethod
    def _scope_spend(db: sqlite3.Connection, scope: str, after_ns: int) -> float:
        if scope == GLOBAL_SCOPE:
            row = db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE end_ns > ?", (after_ns,)).fetchone()
        else:
            row = db.execute(
                "SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE scope = ? AND end_ns > ?", (scope, after_ns)
            ).fetchone()
        return float(row[0])

    def _get(self, db: sqlite3.Connection, budget_id: str) -> Budget:
        row = db.execute(f"SELECT {self._COLS} FROM budgets WHERE budget_id = ?", (budget_id,)).fetchone()
        if row is None:
            raise NotFound(
                f"budget_id: no budget {echo(budget_id)}", reason="BUDGET_NOT_FOUND", metadata={"budget_id": budget_id[:128]}
            )
        return self._budget_from_row(db, row)

    def get_budget(self, budget_id: str) -> Budget:
        """One budget with its spend; InvalidArgument when the id is empty, NotFound when unknown."""
        if not budget_id:
            raise InvalidArgument.field("budget_id", "required", reason="MISSING_BUDGET_ID")
        limits.text(budget_id, "budget_id", limits.MAX_BUDGET_ID)
        with self._lock:
            return self._get(self._db, budget_id)

    def list_budgets(self, scope: str, offset: int, limit: int) -> tuple[list[Budget], bool]:
        """Budgets (of one scope, or all) oldest first from `offset`; returns (page, more pages follow)."""
        scope = check_scope(scope, "scope", allow_empty=True)
        where, args = ("WHERE scope = ?", (scope,)) if scope else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLS} FROM budgets {where} ORDER BY seq LIMIT ? OFFSET ?", (*args, limit + 1, offset)
            ).fetchall()
            page = [self._budget_from_row(self._db, r) for r in rows[:limit]]
        return page, len(rows) > limit

    def _budgets_for(self, db: sqlite3.Connection, scope: str) -> list[Budget]:
        rows = db.execute(
            f"SELECT {self._COLS} FROM budgets WHERE scope = ? OR scope = ? ORDER BY seq", (scope or GLOBAL_SCOPE, GLOBAL_SCOPE)
        ).fetchall()
        return [self._budget_from_row(db, r) for r in rows]

    # -------------------------------------------------------------------------------------------------- usage

    def record_usage(
        self, *, job_id: str, offer_id: str, scope: str, start_ns: int, end_ns: int, price_usd_per_hour: float, now_ns: int
    ) -> RecordResult:
        """Store one interval and charge it to the budgets of its scope and every global budget.

        Idempotent per (job_id, start, end): a repeat returns the stored record and changes nothing. An interval of the
        same job that overlaps a different recorded one is FailedPrecondition. Crossed thresholds become alerts.
        """
        limits.text(job_id, "job_id", MAX_JOB_ID, required=True)
        limits.text(offer_id, "offer_id", limits.MAX_OFFER_ID)
        scope = check_scope(scope, "scope", allow_empty=True)
        if end_ns < start_ns:
            raise InvalidArgument.field("end_time", "must not be before start_time", reason="END_BEFORE_START")
        if end_ns - start_ns > MAX_INTERVAL_NS:
            raise InvalidArgument.field("end_time", "the interval must be at most 100 years long", reason="INTERVAL_TOO_LONG")
        limits.amount(price_usd_per_hour, "price_usd_per_hour", limits.MAX_PRICE_USD_PER_HOUR)
        with self._tx() as db:
            existing = db.execute(
                "SELECT job_id, offer_id, scope, start_ns, end_ns, price_usd_per_hour, cost_usd, record_ns FROM usage "
                "WHERE job_id = ? AND start_ns = ? AND end_ns = ?",
                (job_id, start_ns, end_ns),
            ).fetchone()
            if existing is not None:
                usage = Usage(*existing)
                return RecordResult(usage, True, self._job_spend(db, job_id), tuple(self._charged(db, usage)), ())
            overlap = db.execute(
                "SELECT start_ns, end_ns FROM usage WHERE job_id = ? AND start_ns < ? AND end_ns > ? LIMIT 1",
                (job_id, end_ns, start_ns),
            ).fetchone()
            if overlap is not None:
                raise FailedPrecondition(
                    f"job {echo(job_id)}: interval overlaps an already recorded, different interval of the job",
                    reason="USAGE_OVERLAP",
                    metadata={"job_id": job_id, "recorded_start_ns": str(overlap[0]), "recorded_end_ns": str(overlap[1])},
                )
            cost = price_usd_per_hour * (end_ns - start_ns) / 3.6e12  # bounded above: at most about $8.8e9
            usage = Usage(job_id, offer_id, scope, start_ns, end_ns, price_usd_per_hour, cost, now_ns)
            db.execute(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, start_ns, end_ns, offer_id, scope, price_usd_per_hour, cost, now_ns),
            )
            alerts: list[tuple[Alert, Budget]] = []
            charged = []
            for budget in self._charged(db, usage):
                spent = budget.spent_usd + cost
                db.execute(
                    "UPDATE budgets SET spent_usd = ?, update_ns = ? WHERE budget_id = ?", (spent, now_ns, budget.budget_id)
                )
                new = [t for t in budget.thresholds if t not in budget.crossed and _reached(spent, budget.limit_usd, t)]
                for t in new:
                    db.execute("INSERT INTO alerts VALUES (?, ?, ?, ?, ?)", (budget.budget_id, t, spent, job_id, now_ns))
                after = dataclasses.replace(
                    budget, spent_usd=spent, update_ns=now_ns, crossed=tuple(sorted((*budget.crossed, *new)))
                )
                charged.append(after)
                for t in new:
                    alerts.append(
                        (
                            Alert(budget.budget_id, budget.scope, t, spent, budget.limit_usd, budget.enforcement, job_id, now_ns),
                            after,
                        )
                    )
            return RecordResult(usage, False, self._job_spend(db, job_id), tuple(charged), tuple(alerts))

    def _charged(self, db: sqlite3.Connection, usage: Usage) -> list[Budget]:
        """Budgets a usage is charged to: its scope's and every global one, created before the interval ended."""
        return [b for b in self._budgets_for(db, usage.scope) if b.create_ns < usage.end_ns]

    @staticmethod
    def _job_spend(db: sqlite3.Connection, job_id: str) -> float:
        return float(db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE job_id = ?", (job_id,)).fetchone()[0])

    # ---------------------------------------------------------------------------------------------- admission

    def check_admission(self, scope: str, estimated_cost_usd: float, job_id: str = "") -> list[BudgetCheck]:
        """Project every budget of the scope (and every global one) with the job's cost added.

        Raises FailedPrecondition (reason BUDGET_EXCEEDED) when a HARD budget would be passed; soft ones are reported.
        """
        scope = check_scope(scope, "scope", allow_empty=True)
        limits.amount(estimated_cost_usd, "estimated_cost_usd", limits.MAX_USD)
        limits.text(job_id, "job_id", MAX_JOB_ID)
        with self._lock:
            budgets = self._budgets_for(self._db, scope)
        checks = [BudgetCheck(b, b.spent_usd + estimated_cost_usd) for b in budgets]
        refused = [c for c in checks if c.would_exceed and c.budget.enforcement is Enforcement.HARD]
        if refused:
            first = refused[0]
            who = f"job {echo(job_id)}" if job_id else "the job"
            raise FailedPrecondition(
                f"{who} would exceed hard budget {first.budget.budget_id} ({first.budget.scope}): spent "
                f"${first.budget.spent_usd:.2f} + estimated ${estimated_cost_usd:.2f} = ${first.projected_usd:.2f} "
                f"> limit ${first.budget.limit_usd:.2f}"
                + (f" (and {len(refused) - 1} more hard budget(s))" if len(refused) > 1 else ""),
                reason="BUDGET_EXCEEDED",
                metadata={
                    "budget_id": first.budget.budget_id,
                    "limit_usd": f"{first.budget.limit_usd:.6f}",
                    "projected_usd": f"{first.projected_usd:.6f}",
                    "scope": first.budget.scope,
                    "job_id": job_id,
                },
            )
        return checks


class HubClosed(enum.Enum):
    """The one item a watch queue gets when the service stops (after its (alert, budget) pairs)."""

    CLOSED = "closed"


class AlertHub:
    """Fans budget alerts out to WatchBudget streams: one asyncio queue per watcher, fed on the event loop."""

    CLOSED: Final = HubClosed.CLOSED

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Queue[tuple[Alert, Budget] | HubClosed]]] = {}
        self.closed = False

    @contextmanager
    def watch(self, budget_id: str) -> Iterator[asyncio.Queue[tuple[Alert, Budget] | HubClosed]]:
        """Subscribe to one budget's alerts for the duration of the `with` block."""
        queue: asyncio.Queue[tuple[Alert, Budget] | HubClosed] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(self.CLOSED)
        self._watchers.setdefault(budget_id, set()).add(queue)
        try:
            yield queue
        finally:
            watchers = self._watchers.get(budget_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[budget_id]

    def publish(self, alerts: Sequence[tuple[Alert, Budget]]) -> None:
        """Deliver (alert, budget after it) pairs to the budget's watchers. Each threshold alerts once, so queues stay small."""
        for alert, budget in alerts:
            for queue in self._watchers.get(alert.budget_id, ()):
                queue.put_nowait((alert, budget))

    def close(self) -> None:
        """Tell every watcher the service is stopping."""
        self.closed = True
        for watchers in self._watchers.values():
            for queue in watchers:
                queue.put_nowait(self.CLOSED)

    def watcher_count(self, budget_id: str) -> int:
        """Number of open watches of a budget (for tests and metrics)."""
        return len(self._watchers.get(budget_id, ()))
