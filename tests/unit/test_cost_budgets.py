"""Unit tests of the budget store: validation, idempotent usage, threshold alerts, admission and persistence.

Each test uses its own SQLite file; "restart" closes the store and opens the same file again.
"""

from __future__ import annotations

import asyncio

import pytest

from crucible.cost.budgets import AlertHub, BudgetStore, Enforcement
from crucible.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

H = 3600 * 10**9  # one hour in ns
T0 = 1_800_000_000 * 10**9


@pytest.fixture
def store(tmp_path):
    s = BudgetStore(tmp_path / "cost.sqlite3")
    yield s
    s.close()


def _budget(store, scope="user:alice", limit=10.0, thresholds=(), enforcement=Enforcement.SOFT, request_id="", now=T0, name=""):
    return store.create_budget(
        scope=scope,
        display_name=name,
        limit_usd=limit,
        thresholds=list(thresholds),
        enforcement=enforcement,
        request_id=request_id,
        now_ns=now,
    )


def _use(store, job="j1", start=T0, end=T0 + H, price=1.0, scope="user:alice", offer="p/x//on-demand"):
    return store.record_usage(
        job_id=job, offer_id=offer, scope=scope, start_ns=start, end_ns=end, price_usd_per_hour=price, now_ns=end
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(scope=""), "budget.scope"),
        (dict(scope="alice"), "budget.scope"),
        (dict(scope="User:Alice"), "budget.scope"),
        (dict(limit=0.0), "budget.limit_usd"),
        (dict(limit=float("nan")), "budget.limit_usd"),
        (dict(thresholds=(50, 0)), "budget.alert_thresholds_percent[1]"),
        (dict(thresholds=(50, 101)), "budget.alert_thresholds_percent[1]"),
        (dict(thresholds=(50, 50)), "budget.alert_thresholds_percent[1]"),
        (dict(name="x" * 201), "budget.display_name"),
        (dict(request_id="r" * 129), "request_id"),
    ],
)
def test_create_budget_rejects_malformed_input_naming_the_field(store, kwargs, field):
    with pytest.raises(InvalidArgument) as err:
        _budget(store, **kwargs)
    assert err.value.field_violations[0][0] == field


def test_create_defaults_and_request_id_idempotency(store):
    b = _budget(store, scope="global", thresholds=(100, 25.5), request_id="r1")
    assert b.thresholds == (25.5, 100.0) and b.spent_usd == 0 and b.budget_id.startswith("bud-")
    assert _budget(store, scope="global", thresholds=(100, 25.5), request_id="r1") == b
    with pytest.raises(AlreadyExists):
        _budget(store, scope="global", limit=20, request_id="r1")
    assert _budget(store).thresholds == (50.0, 80.0, 100.0)
    assert store.get_budget(b.budget_id) == b
    with pytest.raises(NotFound):
        store.get_budget("bud-nope")
    with pytest.raises(InvalidArgument):
        store.get_budget("")


def test_usage_is_charged_once_per_job_and_interval(store):
    alice = _budget(store)
    bob = _budget(store, scope="user:bob")
    everyone = _budget(store, scope="global")
    first = _use(store, price=2.5, end=T0 + H // 2)
    assert first.usage.cost_usd == pytest.approx(1.25) and not first.already_recorded
    assert {b.budget_id for b in first.budgets} == {alice.budget_id, everyone.budget_id}
    again = _use(store, price=99.0, end=T0 + H // 2)  # same job and interval: the original stands
    assert again.already_recorded and again.usage == first.usage and again.alerts == ()
    assert store.get_budget(alice.budget_id).spent_usd == pytest.approx(1.25)
    second = _use(store, start=T0 + H // 2, end=T0 + H, price=2.5)  # adjacent, not overlapping
    assert second.job_spent_usd == pytest.approx(2.5)
    assert store.get_budget(everyone.budget_id).spent_usd == pytest.approx(2.5)
    assert store.get_budget(bob.budget_id).spent_usd == 0
    _use(store, job="j2", scope="", price=1.0)  # no scope: only global budgets
    assert store.get_budget(everyone.budget_id).spent_usd == pytest.approx(3.5)
    assert store.get_budget(alice.budget_id).spent_usd == pytest.approx(2.5)


def test_overlapping_and_reversed_intervals(store):
    _use(store, start=T0, end=T0 + H)
    with pytest.raises(FailedPrecondition) as err:
        _use(store, start=T0 + H // 2, end=T0 + 2 * H)
    assert err.value.reason == "USAGE_OVERLAP"
    with pytest.raises(InvalidArgument) as bad:
        _use(store, start=T0 + 2 * H, end=T0 + H)
    assert bad.value.field_violations[0][0] == "end_time"
    with pytest.raises(InvalidArgument):
        _use(store, job="")
    with pytest.raises(InvalidArgument):
        _use(store, job="j9", price=-1.0)
    with pytest.raises(InvalidArgument):
        _use(store, job="j9", scope="bad scope")


def test_budgets_count_only_usage_ending_after_their_creation(store):
    _use(store, start=T0, end=T0 + H, price=3.0)
    later = _budget(store, now=T0 + 2 * H)
    assert later.spent_usd == 0
    _use(store, start=T0 + H, end=T0 + 3 * H, price=1.0)
    assert store.get_budget(later.budget_id).spent_usd == pytest.approx(2.0)
    straddling = _budget(store, now=T0 + H // 2)  # usage ending after creation counts in full
    assert straddling.spent_usd == pytest.approx(5.0)


def test_thresholds_alert_once_each_even_when_several_are_crossed_at_once(store):
    b = _budget(store, limit=10.0, thresholds=(50, 80, 100))
    r1 = _use(store, price=4.0)  # 40 %
    assert r1.alerts == ()
    r2 = _use(store, start=T0 + H, end=T0 + 2 * H, price=4.5)  # 85 %: crosses 50 and 80 together
    assert [a.threshold for a, _ in r2.alerts] == [50.0, 80.0]
    assert r2.alerts[-1][1].crossed == (50.0, 80.0) and r2.alerts[-1][0].job_id == "j1"
    r3 = _use(store, job="j2", start=T0, end=T0 + H, price=0.5)  # 90 %: nothing new
    assert r3.alerts == ()
    for i in range(10):  # ten $0.10 intervals: float sums must still reach exactly 100 %
        _use(store, job="j3", start=T0 + i * H, end=T0 + (i + 1) * H, price=0.1)
    final = store.get_budget(b.budget_id)
    assert final.crossed == (50.0, 80.0, 100.0) and final.spent_usd == pytest.approx(10.0)


def test_admission_against_hard_and_soft_budgets(store):
    hard = _budget(store, limit=10.0, enforcement=Enforcement.HARD)
    soft = _budget(store, scope="global", limit=5.0)
    _use(store, price=4.0)
    checks = store.check_admission("user:alice", 6.0, "job-a")  # 10 of 10: not over the hard limit
    assert [(c.budget.budget_id, c.projected_usd, c.would_exceed) for c in checks] == [
        (hard.budget_id, pytest.approx(10.0), False),
        (soft.budget_id, pytest.approx(10.0), True),
    ]
    with pytest.raises(FailedPrecondition) as err:
        store.check_admission("user:alice", 6.5, "job-b")
    assert err.value.reason == "BUDGET_EXCEEDED"
    assert err.value.metadata["budget_id"] == hard.budget_id
    assert float(err.value.metadata["projected_usd"]) == pytest.approx(10.5)
    assert float(err.value.metadata["limit_usd"]) == 10.0
    assert [c.budget.budget_id for c in store.check_admission("user:carol", 100.0)] == [soft.budget_id]
    with pytest.raises(InvalidArgument):
        store.check_admission("user:alice", -1.0)


def test_spend_and_alerts_survive_a_restart(tmp_path):
    path = tmp_path / "state" / "cost.sqlite3"
    s1 = BudgetStore(path)
    b = _budget(s1, limit=2.0)
    _use(s1, price=1.5)
    s1.close()
    s2 = BudgetStore(path)
    try:
        again = _use(s2, price=1.5)
        assert again.already_recorded
        got = s2.get_budget(b.budget_id)
        assert got.spent_usd == pytest.approx(1.5) and got.crossed == (50.0,)
        r = _use(s2, start=T0 + H, end=T0 + 2 * H, price=1.0)
        assert [a.threshold for a, _ in r.alerts] == [80.0, 100.0]
    finally:
        s2.close()


def test_list_budgets_pages_in_creation_order(store):
    ids = [_budget(store, scope=f"project:p{i % 2}", now=T0 + i).budget_id for i in range(5)]
    page, more = store.list_budgets("", 0, 2)
    assert [b.budget_id for b in page] == ids[:2] and more
    page, more = store.list_budgets("", 4, 2)
    assert [b.budget_id for b in page] == ids[4:] and not more
    page, _ = store.list_budgets("project:p1", 0, 10)
    assert [b.budget_id for b in page] == ids[1::2]
    with pytest.raises(InvalidArgument):
        store.list_budgets("nope", 0, 10)


async def test_alert_hub_delivers_to_the_budgets_watchers_and_closes(store):
    b1, b2 = _budget(store, limit=1.0), _budget(store, scope="user:bob", limit=1.0)
    hub = AlertHub()
    with hub.watch(b1.budget_id) as q1, hub.watch(b2.budget_id) as q2:
        hub.publish(_use(store, price=0.6).alerts)  # alice at 60 %
        alert, after = q1.get_nowait()
        assert (alert.budget_id, alert.threshold, after.spent_usd) == (b1.budget_id, 50.0, pytest.approx(0.6))
        assert q1.empty() and q2.empty()
        hub.close()
        assert await asyncio.wait_for(q2.get(), 1) is AlertHub.CLOSED
    assert hub.watcher_count(b1.budget_id) == 0
