"""Issue 12, classes 7 and 8 (cost parts): state files are checked at start, and every cost input is bounded.

Class 7: a corrupt, truncated or foreign SQLite file (cost database, scheduler job store) refuses the start with a message
naming the file; the detector's result cache, a pure cache, is moved aside instead. Class 8: a price of 1e308, a budget
scope of 1 MB and other absurd amounts or strings are INVALID_ARGUMENT naming the field, and spend stays finite.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import subprocess
import sys

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from crucible.api.cost.v1 import budget_pb2
from crucible.api.cost.v1 import cost_service_pb2 as pb
from crucible.api.cost.v1 import cost_service_pb2_grpc as pb_grpc
from crucible.cost.budgets import BudgetStore, Enforcement
from crucible.cost.config import CostConfig
from crucible.cost.server import create_server
from crucible.runtime.config import load_config
from crucible.runtime.errors import ConfigError, parse_status_details
from crucible.runtime.statefile import StateFileError

T0 = 1_900_000_000
NS = 1_000_000_000


def _config(tmp_path, **settings) -> CostConfig:
    values = dict(port=0, metrics_port=0, state_dir=str(tmp_path / "state"), grace_period_s=0.5)
    values.update(settings)
    return load_config(CostConfig, "cost", env={}, **values)


@contextlib.asynccontextmanager
async def cost_stub(tmp_path):
    server, port = create_server(_config(tmp_path))
    await server.start()
    await server.wait_ready(10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
            yield pb_grpc.CostServiceStub(channel)
    finally:
        await server.stop(0)


async def _invalid(coro) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    _, violations = parse_status_details(err.value)
    return violations


def _filled_database(path) -> None:
    """A real cost database with budgets and enough usage rows to span many pages."""
    store = BudgetStore(path)
    store.create_budget(
        scope="user:alice",
        display_name="a",
        limit_usd=100.0,
        thresholds=(),
        enforcement=Enforcement.HARD,
        request_id="",
        now_ns=T0 * NS,
    )
    for i in range(400):
        store.record_usage(
            job_id=f"job-{i:04d}-" + "x" * 60,
            offer_id="lambda/gpu_1x_a10/us-east-1/on-demand",
            scope="user:alice",
            start_ns=(T0 + i * 10) * NS,
            end_ns=(T0 + i * 10 + 5) * NS,
            price_usd_per_hour=1.0,
            now_ns=T0 * NS,
        )
    store.close()


def _corrupt_one_page(path) -> None:
    """Overwrite the middle of one page in the middle of the file (the first page, the schema, stays intact)."""
    size = path.stat().st_size
    page = 4096
    assert size >= 8 * page, size
    with open(path, "r+b") as handle:
        handle.seek((size // page // 2) * page)
        handle.write(b"\xa5" * 200)


# ------------------------------------------------------------------------------------------------- class 7: files


def test_cost_database_with_a_corrupt_page_refuses_to_start(tmp_path):
    db = tmp_path / "state" / "cost.sqlite3"
    _filled_database(db)
    _corrupt_one_page(db)
    with pytest.raises(ConfigError) as err:
        create_server(_config(tmp_path))
    message = str(err.value)
    assert str(db) in message and "database_path" in message and "cost database" in message
    assert "integrity_check" in message or "malformed" in message
    assert "backup" in message  # says what to do


def test_zero_length_cost_database_refuses_to_start(tmp_path):
    db = tmp_path / "state" / "cost.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"")
    with pytest.raises(StateFileError) as err:
        create_server(_config(tmp_path))
    assert str(db) in str(err.value) and "empty (0 bytes)" in str(err.value)
    assert db.stat().st_size == 0  # the file is left as found


def test_foreign_file_as_cost_database_refuses_to_start(tmp_path):
    db = tmp_path / "state" / "cost.sqlite3"
    db.parent.mkdir(parents=True)
    db.write_text("budget,spent\nalice,3\n")
    with pytest.raises(StateFileError, match="not a SQLite database"):
        create_server(_config(tmp_path))


def test_cost_database_left_by_a_killed_process_still_opens(tmp_path):
    """The check must not refuse a healthy file whose write-ahead log was never checkpointed (kill -9)."""
    db = tmp_path / "state" / "cost.sqlite3"
    code = (
        "import os, sys; from crucible.cost.budgets import BudgetStore, Enforcement; s = BudgetStore(sys.argv[1]); "
        "s.create_budget(scope='global', display_name='', limit_usd=5.0, thresholds=(), "
        "enforcement=Enforcement.SOFT, request_id='', now_ns=1); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)
    assert (db.parent / "cost.sqlite3-wal").exists()
    store = BudgetStore(db)
    assert [b.limit_usd for b in store.list_budgets("", 0, 10)[0]] == [5.0]
    store.close()


def test_scheduler_store_corrupt_or_empty_refuses(tmp_path):
    from crucible.scheduler.persistence.jobdb import JobStore

    path = tmp_path / "jobs.sqlite3"
    JobStore(path).close()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE filler (x TEXT)")
    con.executemany("INSERT INTO filler VALUES (?)", [("y" * 300,) for _ in range(300)])
    con.commit()
    con.close()
    _corrupt_one_page(path)
    with pytest.raises(StateFileError) as err:
        JobStore(path)
    assert str(path) in str(err.value) and "scheduler job store" in str(err.value)

    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")
    with pytest.raises(StateFileError, match="empty"):
        JobStore(empty)


def test_detector_cache_corrupt_is_moved_aside_with_a_warning(tmp_path, caplog):
    from crucible.detector.cache import SqliteCache

    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    with caplog.at_level(logging.WARNING, logger="crucible.runtime.statefile"):
        cache = SqliteCache(path)
    assert cache.get_many(["k"]) == {}  # a fresh, working cache
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].stat().st_size == 8192 + 16  # the evidence is kept, not deleted
    assert any(str(path) in r.getMessage() and "moved it to" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------- class 8: cost inputs


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


async def test_price_1e308_is_refused_and_spend_stays_finite(tmp_path):
    async with cost_stub(tmp_path) as stub:
        budget = (
            await stub.CreateBudget(
                pb.CreateBudgetRequest(
                    budget=budget_pb2.Budget(scope="user:alice", limit_usd=100.0, enforcement=budget_pb2.BUDGET_ENFORCEMENT_HARD)
                ),
                timeout=5,
            )
        ).budget
        offers = (await stub.ListOffers(pb.ListOffersRequest(providers=["lambda"], page_size=1), timeout=5)).offers
        for price in (1e308, math.inf, 1e5):
            violations = await _invalid(
                stub.RecordUsage(
                    pb.RecordUsageRequest(
                        job_id="job-1",
                        offer_id=offers[0].offer_id,
                        scope="user:alice",
                        start_time=_ts(T0),
                        end_time=_ts(T0 + 3600),
                        price_usd_per_hour=price,
                    ),
                    timeout=5,
                )
            )
            assert [f for f, _ in violations] == ["price_usd_per_hour"]
        got = (await stub.GetBudget(pb.GetBudgetRequest(budget_id=budget.budget_id), timeout=5)).budget
        assert got.spent_usd == 0.0 and math.isfinite(got.spent_usd)
        # Later admissions and usage still work.
        await stub.CheckAdmission(pb.CheckAdmissionRequest(scope="user:alice", estimated_cost_usd=5.0), timeout=5)
        reply = await stub.RecordUsage(
            pb.RecordUsageRequest(
                job_id="job-1",
                offer_id=offers[0].offer_id,
                scope="user:alice",
                start_time=_ts(T0),
                end_time=_ts(T0 + 3600),
                price_usd_per_hour=2.0,
            ),
            timeout=5,
        )
        assert reply.budgets[0].spent_usd == pytest.approx(2.0)


async def test_every_float_input_is_bounded(tmp_path):
    async with cost_stub(tmp_path) as stub:
        offer_id = (await stub.ListOffers(pb.ListOffersRequest(page_size=1), timeout=5)).offers[0].offer_id
        hour = duration_pb2.Duration(seconds=3600)
        cases = [
            (
                stub.CreateBudget(
                    pb.CreateBudgetRequest(
                        budget=budget_pb2.Budget(scope="global", limit_usd=1e308, enforcement=budget_pb2.BUDGET_ENFORCEMENT_SOFT)
                    )
                ),
                "budget.limit_usd",
            ),
            (stub.CheckAdmission(pb.CheckAdmissionRequest(scope="global", estimated_cost_usd=math.nan)), "estimated_cost_usd"),
            (stub.CheckAdmission(pb.CheckAdmissionRequest(scope="global", estimated_cost_usd=1e300)), "estimated_cost_usd"),
            (
                stub.EstimateCost(pb.EstimateCostRequest(offer_id=offer_id, duration=hour, storage_gb_hours=1e300)),
                "storage_gb_hours",
            ),
            (stub.EstimateCost(pb.EstimateCostRequest(offer_id=offer_id, duration=hour, egress_gb=-1.0)), "egress_gb"),
            (stub.ListOffers(pb.ListOffersRequest(max_price_usd_per_hour=math.inf)), "max_price_usd_per_hour"),
            (stub.ListOffers(pb.ListOffersRequest(min_gpu_memory_gib=math.inf)), "min_gpu_memory_gib"),
            (
                stub.CompareProviders(pb.CompareProvidersRequest(objective=pb.OBJECTIVE_CHEAPEST, max_cost_usd=1e300)),
                "max_cost_usd",
            ),
        ]
        for call, field in cases:
            violations = await _invalid(call)
            assert [f for f, _ in violations] == [field]


async def test_megabyte_scope_and_other_oversized_strings_are_refused(tmp_path):
    big_scope = "user:" + "a" * (1 << 20)
    async with cost_stub(tmp_path) as stub:
        cases = [
            (
                stub.CreateBudget(
                    pb.CreateBudgetRequest(
                        budget=budget_pb2.Budget(scope=big_scope, limit_usd=1.0, enforcement=budget_pb2.BUDGET_ENFORCEMENT_SOFT)
                    )
                ),
                "budget.scope",
            ),
            (stub.CheckAdmission(pb.CheckAdmissionRequest(scope=big_scope)), "scope"),
            (stub.ListBudgets(pb.ListBudgetsRequest(scope=big_scope)), "scope"),
            (
                stub.RecordUsage(
                    pb.RecordUsageRequest(job_id="j", offer_id="x", scope=big_scope, start_time=_ts(T0), end_time=_ts(T0 + 1))
                ),
                "scope",
            ),
            (stub.RecordUsage(pb.RecordUsageRequest(job_id="j" * 100_000, start_time=_ts(T0), end_time=_ts(T0 + 1))), "job_id"),
            (stub.CheckAdmission(pb.CheckAdmissionRequest(scope="global", job_id="j" * 100_000)), "job_id"),
            (stub.GetBudget(pb.GetBudgetRequest(budget_id="b" * 100_000)), "budget_id"),
            (stub.EstimateCost(pb.EstimateCostRequest(offer_id="o" * 100_000)), "offer_id"),
            (
                stub.CreateBudget(
                    pb.CreateBudgetRequest(
                        budget=budget_pb2.Budget(
                            scope="global",
                            display_name="ok\x00\x1b[2J",
                            limit_usd=1.0,
                            enforcement=budget_pb2.BUDGET_ENFORCEMENT_SOFT,
                        )
                    )
                ),
                "budget.display_name",
            ),
            (stub.ListOffers(pb.ListOffersRequest(gpu_names=["A10"] * 1000)), "gpu_names"),
            (stub.ListOffers(pb.ListOffersRequest(providers=["p" * 100_000])), "providers[0]"),
            (
                stub.CompareProviders(
                    pb.CompareProvidersRequest(objective=pb.OBJECTIVE_CHEAPEST, reference_gpu_name="g" * 100_000)
                ),
                "reference_gpu_name",
            ),
            (stub.ListOffers(pb.ListOffersRequest(page_token="t" * 100_000)), "page_token"),
        ]
        for call, field in cases:
            violations = await _invalid(call)
            assert [f for f, _ in violations] == [field]
            assert all(len(d) < 500 for _, d in violations)  # the message does not echo the megabyte back
        # The service still answers normally afterwards.
        assert (await stub.ListBudgets(pb.ListBudgetsRequest(scope="user:alice"), timeout=5)).budgets == []


def test_cost_database_with_infinite_spend_refuses_to_start(tmp_path):
    """A database already poisoned by an unbounded price (before the bound) is refused, not served."""
    db = tmp_path / "state" / "cost.sqlite3"
    store = BudgetStore(db)
    budget = store.create_budget(
        scope="global",
        display_name="",
        limit_usd=10.0,
        thresholds=(),
        enforcement=Enforcement.HARD,
        request_id="",
        now_ns=T0 * NS,
    )
    store.close()
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO usage VALUES ('job-x', ?, ?, 'o', 'global', 1e308, ?, ?)",
        ((T0 + 1) * NS, (T0 + 7200) * NS, math.inf, T0 * NS),
    )
    con.execute("UPDATE budgets SET spent_usd = ?", (math.inf,))
    con.commit()
    con.close()
    with pytest.raises(StateFileError) as err:
        create_server(_config(tmp_path))
    assert str(db) in str(err.value) and "job-x" in str(err.value) and budget.budget_id in str(err.value)


def test_a_folder_or_fifo_is_refused_even_as_a_cache(tmp_path):
    from crucible.detector.cache import SqliteCache

    folder = tmp_path / "cache.sqlite3"
    folder.mkdir()
    with pytest.raises(StateFileError, match="not a regular file"):
        SqliteCache(folder)
    assert folder.is_dir()  # left where it was
    fifo = tmp_path / "cost.sqlite3"
    os.mkfifo(fifo)
    with pytest.raises(StateFileError, match="not a regular file"):
        BudgetStore(fifo)  # refused without opening it (opening a FIFO would block)


def test_crucible_serve_on_a_zero_length_database_exits_with_the_message_not_a_traceback(tmp_path):
    """The command a user runs: exit status 2, the file named on stderr, no Python traceback."""
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir()
    (state / "cost.sqlite3").write_bytes(b"")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible",
            "serve",
            "cost",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--state-dir",
            str(state),
            "--log-format",
            "text",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(state / "cost.sqlite3") in proc.stderr and "Traceback" not in proc.stderr
