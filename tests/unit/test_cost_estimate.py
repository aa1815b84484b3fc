"""Unit tests of cost estimates and provider comparison: billing rounding, breakdowns, assumptions, ranking.

Golden values are worked out by hand; rankings are checked against a brute-force sort of every candidate.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible.cost.catalog import (
    BUNDLED_CATALOG,
    Availability,
    Billing,
    Offer,
    Origin,
    PriceBook,
    load_catalog_file,
    load_gpu_table,
)
from crucible.cost.compare import Objective, Requirements, compare
from crucible.cost.estimate import NS_PER_HOUR, NS_PER_S, billed_ns, breakdown, estimate, format_duration
from crucible.runtime.errors import InvalidArgument, NotFound

S = NS_PER_S


def _offer(**kw) -> Offer:
    base = dict(
        offer_id="p/x//on-demand",
        provider="p",
        instance_type="x",
        region="",
        gpu_name="A10",
        gpu_count=1,
        gpu_memory_gib=24,
        vcpus=0,
        memory_gib=0,
        spot=False,
        price_usd_per_hour=2.0,
        storage_price_usd_per_gb_hour=None,
        egress_price_usd_per_gb=None,
        billing=Billing.PER_HOUR,
        availability=Availability.UNKNOWN,
        origin=Origin.BUNDLED_CATALOG,
        source="a page",
        observed_at=dt.datetime(2026, 5, 7, tzinfo=dt.UTC),
    )
    base.update(kw)
    return Offer(**base)


@pytest.mark.parametrize(
    ("runtime_s", "billing", "billed_s"),
    [
        (3660, Billing.PER_HOUR, 7200),  # 61 minutes cost two hours
        (3600, Billing.PER_HOUR, 3600),
        (61, Billing.PER_MINUTE, 120),
        (60, Billing.PER_MINUTE, 60),
        (1.5, Billing.PER_SECOND, 2),
        (0, Billing.PER_HOUR, 0),
    ],
)
def test_billing_granularity_rounds_up(runtime_s, billing, billed_s):
    assert billed_ns(round(runtime_s * S), billing) == billed_s * S


@given(st.integers(min_value=1, max_value=10**15), st.sampled_from(list(Billing)))
def test_billed_time_is_the_smallest_whole_number_of_units_covering_the_runtime(runtime_ns, billing):
    unit = billing.seconds * S
    billed = billed_ns(runtime_ns, billing)
    assert billed % unit == 0 and runtime_ns <= billed < runtime_ns + unit


def test_breakdown_golden_values():
    offer = _offer(storage_price_usd_per_gb_hour=0.001, egress_price_usd_per_gb=0.09)
    b = breakdown(offer, 3660 * S, storage_gb_hours=500, egress_gb=10)
    assert b.billed_ns == 7200 * S
    assert b.compute_usd == pytest.approx(4.0)
    assert b.storage_usd == pytest.approx(0.5)
    assert b.network_usd == pytest.approx(0.9)
    assert b.total_usd == pytest.approx(5.4)


def test_estimate_range_and_assumptions():
    result = estimate(_offer(), 30 * 60 * S, 3660 * S, storage_gb_hours=100, egress_gb=0)
    assert result.low.compute_usd == pytest.approx(2.0) and result.high.compute_usd == pytest.approx(4.0)
    text = "\n".join(result.assumptions)
    assert "observed 2026-05-07" in text and "a page" in text
    assert "30m 0s is billed as 1h 0m 0s" in text and "1h 1m 0s is billed as 2h 0m 0s" in text
    assert "no storage rate for p; 100 GB-hours counted as $0" in text
    assert "Egress: none requested" in text
    assert "low and high are priced separately" in text
    undated_spot = estimate(_offer(observed_at=None, spot=True, billing=Billing.PER_SECOND), 10 * S, 10 * S)
    text = "\n".join(undated_spot.assumptions)
    assert "undated" in text and "preempt" in text and "no rounding was needed" in text
    assert undated_spot.low is undated_spot.high
    with pytest.raises(InvalidArgument):
        estimate(_offer(), 2 * S, 1 * S)


def test_format_duration():
    assert format_duration(7200 * S) == "2h 0m 0s"
    assert format_duration(90 * S) == "1m 30s"
    assert format_duration(S // 4) == "0.25s"


def _catalog():
    bundled = load_catalog_file(BUNDLED_CATALOG, origin=Origin.BUNDLED_CATALOG)
    return PriceBook(bundled=bundled, local=[], user=[], gpus=load_gpu_table()).catalog


def test_cheapest_ranking_matches_a_brute_force_sort():
    cat = _catalog()
    req = Requirements(gpu_count=1, min_gpu_memory_gib=40)
    result = compare(cat, req, 3 * NS_PER_HOUR, objective=Objective.CHEAPEST, reference_gpu="A100-80GB")
    expected = []
    for o in cat.offers:
        if o.spot or o.gpu_count != 1 or o.gpu_memory_gib < 40:
            continue
        speed = cat.relative_speed(o.gpu_name, "A100-80GB")
        if speed is None:
            continue  # no datasheet figure for this GPU: compare leaves it out and says so
        runtime = round(3 * 3600 / speed) * S
        expected.append((breakdown(o, runtime).total_usd, o.offer_id))
    expected.sort()
    assert [r.offer.offer_id for r in result.ranked] == [oid for _, oid in expected]
    assert [r.rank for r in result.ranked] == list(range(1, len(expected) + 1))
    assert result.recommended_offer_id == expected[0][1]
    assert result.reason.startswith(f"cheapest total: ${expected[0][0]:.2f}")
    assert any("scaled by peak dense" in a for a in result.assumptions)


def test_fastest_within_cap_and_unscaled_without_reference():
    cat = _catalog()
    req = Requirements(gpu_names=["A100-80GB", "H100"], gpu_count=1)
    result = compare(cat, req, 2 * NS_PER_HOUR, objective=Objective.FASTEST, reference_gpu="A100-80GB", max_cost_usd=3.0)
    assert result.ranked and all(r.cost.total_usd <= 3.0 for r in result.ranked)
    runtimes = [r.cost.runtime_ns for r in result.ranked]
    assert runtimes == sorted(runtimes)
    assert result.ranked[0].offer.gpu_name == "H100"
    assert result.reason.startswith("fastest within max_cost_usd 3.00")
    assert any("left out: total above max_cost_usd" in a for a in result.assumptions)
    flat = compare(cat, req, 2 * NS_PER_HOUR, objective=Objective.FASTEST)
    assert {r.relative_speed for r in flat.ranked} == {1.0}
    assert {r.cost.runtime_ns for r in flat.ranked} == {2 * NS_PER_HOUR}


def test_nothing_feasible_explains_why():
    cat = _catalog()
    result = compare(
        cat, Requirements(gpu_names=["H100"], gpu_count=1), NS_PER_HOUR, objective=Objective.CHEAPEST, max_cost_usd=0.5
    )
    assert result.ranked == () and result.recommended_offer_id == ""
    assert "offers match the requirements but none is feasible" in result.reason and "exceed max_cost_usd 0.50" in result.reason
    none = compare(cat, Requirements(gpu_names=["V100"], gpu_count=1), NS_PER_HOUR, objective=Objective.CHEAPEST)
    assert none.reason == "no offer in the catalog matches the requirements"


def test_unavailable_offers_and_unknown_speeds_are_left_out():
    book = PriceBook(
        bundled=load_catalog_file(BUNDLED_CATALOG, origin=Origin.BUNDLED_CATALOG), local=[], user=[], gpus=load_gpu_table()
    )
    row = next(r for r in book.catalog.rows if r.provider == "modal" and r.gpu_name == "T4")
    book.apply_live(
        "modal",
        [
            dataclasses.replace(row, availability=Availability.UNAVAILABLE, origin=Origin.LIVE_API),
            dataclasses.replace(row, instance_type="X9", gpu_name="X9"),
        ],
    )  # no datasheet figure
    result = compare(
        book.catalog,
        Requirements(gpu_count=1),
        NS_PER_HOUR,
        objective=Objective.CHEAPEST,
        providers=["modal"],
        reference_gpu="T4",
    )
    assert result.ranked == ()
    assert "1 are reported UNAVAILABLE" in result.reason and "1 have no known speed" in result.reason


def test_requirement_errors():
    cat = _catalog()
    with pytest.raises(InvalidArgument) as err:
        compare(cat, Requirements(gpu_names=["A10"], gpu_count=0), NS_PER_HOUR, objective=Objective.CHEAPEST)
    assert err.value.field_violations[0][0] == "requirements.gpu_names"
    with pytest.raises(NotFound, match="reference_gpu_name"):
        compare(cat, Requirements(gpu_count=1), NS_PER_HOUR, objective=Objective.CHEAPEST, reference_gpu="TPU")
    with pytest.raises(NotFound, match=r"requirements.gpu_names\[0\]"):
        compare(cat, Requirements(gpu_names=["TPU"], gpu_count=1), NS_PER_HOUR, objective=Objective.CHEAPEST)


def test_cli_duration_carries_a_fraction_that_rounds_up_to_a_second() -> None:
    from crucible.runtime.convert import duration_from_seconds as _pb_duration  # what the cost CLI sends

    # The old per-module helper produced nanos=1_000_000_000 here, a Duration protobuf rejects as out of range.
    almost = _pb_duration(0.9999999999)
    assert (almost.seconds, almost.nanos) == (1, 0)
    assert (_pb_duration(3600.25).seconds, _pb_duration(3600.25).nanos) == (3600, 250_000_000)
