"""Unit tests of the cost catalog: the bundled CSV, user rows, live rows, offer selection and the local rate.

Pure domain code: no server, no network.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest

from crucible.cost.catalog import (
    BUNDLED_CATALOG,
    KNOWN_PROVIDERS,
    Availability,
    Billing,
    Catalog,
    CatalogError,
    OfferFilter,
    Origin,
    PriceBook,
    canonical_gpu_name,
    load_catalog_file,
    load_gpu_table,
    local_row,
    parse_catalog_csv,
)
from crucible.runtime.errors import InvalidArgument, NotFound

HEADER = (
    "provider,instance_type,gpu_name,gpu_count,gpu_memory_gib,region,price_usd_per_hour,spot_price_usd_per_hour,"
    "billing_granularity,source,observed_at\n"
)
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _rows(body: str, origin: Origin = Origin.USER_CATALOG):
    return parse_catalog_csv(HEADER + body, origin=origin, name="test.csv")


def _local(**kw):
    args = dict(
        gpu_name="RTX4090",
        gpu_count=1,
        gpu_memory_gib=24,
        vcpus=16,
        memory_gib=64,
        power_watts=450,
        electricity_usd_per_kwh=0.2,
        amortisation_usd_per_hour=0.1,
        observed_at=NOW,
    )
    args.update(kw)
    return local_row(**args)


def _book(user_body: str = "", live=None) -> PriceBook:
    bundled = load_catalog_file(BUNDLED_CATALOG, origin=Origin.BUNDLED_CATALOG)
    user = _rows(user_body) if user_body else []
    return PriceBook(bundled=bundled, local=[_local()], user=user, gpus=load_gpu_table(), live=live)


SKYPILOT = "github.com/skypilot-org/skypilot-catalog@"


def test_bundled_catalog_has_a_region_a_source_and_a_date_on_every_row():
    rows = load_catalog_file(BUNDLED_CATALOG, origin=Origin.BUNDLED_CATALOG)
    assert {r.provider for r in rows} >= {"lambda", "modal", "paperspace", "runpod", "replicate"}
    for r in rows:
        assert r.source and r.region and r.observed_at is not None, r
        assert r.price_usd_per_hour and r.price_usd_per_hour > 0
        assert r.gpu_name and r.gpu_count >= 1 and r.gpu_memory_gib > 0
        if r.provider in ("lambda", "runpod"):  # from SkyPilot's published file: repository, commit and path
            assert re.fullmatch(SKYPILOT + r"[0-9a-f]{40}:catalogs/v7/" + r.provider + "/vms.csv", r.source), r.source
        else:  # from a price page: its address
            assert "https://" in r.source, r.source
    by_key = {(r.provider, r.instance_type, r.region): r for r in rows}
    a10 = by_key[("lambda", "gpu_1x_a10", "us-east-1")]
    assert (a10.price_usd_per_hour, a10.billing) == (0.75, Billing.PER_MINUTE)
    assert a10.observed_at == dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    # Every Lambda GPU type in all 17 regions SkyPilot lists; RunPod per data center, named as its API takes them.
    assert len({r.region for r in rows if r.provider == "lambda"}) == 17
    assert {r.region for r in rows if r.instance_type == "NVIDIA A40"} >= {"US-TX-1", "EU-SE-1", "CA-MTL-1"}
    assert by_key[("runpod", "2x NVIDIA A40", "US-TX-1")].gpu_count == 2
    assert by_key[("runpod", "NVIDIA H100 80GB HBM3", "US-GA-1")].spot_price_usd_per_hour == 2.69
    assert by_key[("modal", "H100", "any")].billing is Billing.PER_SECOND
    assert by_key[("paperspace", "H100", "ny2")].observed_at == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert BUNDLED_CATALOG.stat().st_size < 600_000  # GPU rows only: the file stays small


@pytest.mark.parametrize(
    ("text", "memory", "expected"),
    [
        ("NVIDIA A100 80GB PCIe", None, "A100-80GB"),
        ("A100 (40 GB SXM4)", None, "A100-40GB"),
        ("NVIDIA A100-SXM4-80GB", None, "A100-80GB"),
        ("a100", 80, "A100-80GB"),
        ("A10 (24 GB PCIe)", None, "A10"),
        ("NVIDIA A10G", None, "A10G"),
        ("NVIDIA H100 80GB HBM3", None, "H100"),
        ("NVIDIA GeForce RTX 4090", None, "RTX4090"),
        ("NVIDIA RTX A6000", None, "A6000"),
        ("NVIDIA L40S", None, "L40S"),
        ("NVIDIA L4", None, "L4"),
        ("Tesla T4", None, "T4"),
        ("NVIDIA B200", None, "B200"),
        ("", None, ""),
    ],
)
def test_canonical_gpu_names(text, memory, expected):
    assert canonical_gpu_name(text, memory) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("lambda,x,A10,1,24,,abc,,per_second,s,2026-01-01\n", "test.csv:2: price_usd_per_hour: expected a number"),
        ("lambda,x,A10,1,24,,-1,,per_second,s,2026-01-01\n", "price_usd_per_hour: must be a finite number >= 0"),
        ("lambda,x,A10,1,24,,,,per_second,s,2026-01-01\n", "at least one price is required"),
        ("lambda,x,A10,1,24,,1,,hourly,s,2026-01-01\n", "billing_granularity"),
        ("lambda,x,A10,1,24,,1,,per_hour,s,yesterday\n", "observed_at"),
        ("lambda,x,A10,0,24,,1,,per_hour,s,\n", "gpu_count: 0 GPUs"),
        ("Lambda Labs,x,A10,1,24,,1,,per_hour,s,\n", "provider"),
        ("lambda,a/b,A10,1,24,,1,,per_hour,s,\n", "instance_type: must not contain '/'"),
        ("lambda,x,A10,1,24,,1,,per_hour,s,\nlambda,x,A10,1,24,,2,,per_hour,s,\n", "test.csv:3: duplicate of line 2"),
        ("lambda,x,A10,1,24,,1,,per_hour,s,,extra\n", "more fields than columns"),
    ],
)
def test_malformed_catalog_rows_are_rejected_with_line_and_column(body, message):
    with pytest.raises(CatalogError, match=message.replace("(", r"\(")):
        _rows(body)


def test_unknown_columns_and_missing_price_columns_are_rejected():
    with pytest.raises(CatalogError, match="unknown column"):
        parse_catalog_csv("provider,instance_type,price_per_hour\nx,y,1\n", origin=Origin.USER_CATALOG, name="u.csv")
    with pytest.raises(CatalogError, match="header needs"):
        parse_catalog_csv("provider,instance_type\nx,y\n", origin=Origin.USER_CATALOG, name="u.csv")


def test_minimal_user_row_gets_defaults():
    (row,) = parse_catalog_csv(
        "provider,instance_type,gpu_name,price_usd_per_hour\nmyco,box1,a100,1.5\n", origin=Origin.USER_CATALOG, name="u.csv"
    )
    assert (row.gpu_name, row.gpu_count, row.billing, row.observed_at) == ("A100-40GB", 1, Billing.PER_SECOND, None)
    assert row.source == "user catalog (no source given)"


def test_user_rows_override_and_extend_the_bundled_catalog():
    book = _book(
        "lambda,gpu_1x_a10,A10,1,24,us-east-1,0.55,,per_minute,my contract,2026-10-01\n"
        "myco,box1,H100,2,80,eu,4.0,2.0,per_hour,invoice,2026-10-02\n"
    )
    cat = book.catalog
    a10 = cat.get("lambda/gpu_1x_a10/us-east-1/on-demand")
    assert (a10.price_usd_per_hour, a10.origin, a10.source) == (0.55, Origin.USER_CATALOG, "my contract")
    assert cat.get("lambda/gpu_1x_a10/us-west-1/on-demand").origin is Origin.BUNDLED_CATALOG  # other regions stay
    assert cat.get("myco/box1/eu/spot").price_usd_per_hour == 2.0
    assert "myco" in cat.providers
    assert sum(1 for o in cat.offers if o.offer_id == "lambda/gpu_1x_a10/us-east-1/on-demand") == 1


def test_live_rows_replace_a_provider_but_never_user_rows_and_retired_offers_stay_resolvable():
    book = _book("lambda,gpu_1x_a10,A10,1,24,us-west-1,0.55,,per_minute,my contract,2026-10-01\n")
    live_row = dataclasses.replace(
        book.catalog.rows[0],
        provider="lambda",
        instance_type="gpu_1x_a10",
        region="us-east-1",
        gpu_name="A10",
        price_usd_per_hour=0.86,
        origin=Origin.LIVE_API,
        observed_at=NOW,
        availability=Availability.AVAILABLE,
        spot_price_usd_per_hour=None,
    )
    user_clash = dataclasses.replace(live_row, region="us-west-1", price_usd_per_hour=0.99)
    updated, skipped = book.apply_live("lambda", [live_row, user_clash])
    assert (updated, skipped) == (1, 1)
    cat = book.catalog
    assert cat.get("lambda/gpu_1x_a10/us-west-1/on-demand").price_usd_per_hour == 0.55  # the user's row
    assert cat.get("lambda/gpu_1x_a10/us-east-1/on-demand").origin is Origin.LIVE_API
    # Bundled Lambda rows are gone from listings (the live answer is the whole list) but resolve by id.
    assert "lambda/gpu_1x_h100_pcie/us-east-1/on-demand" not in cat.by_id
    assert cat.get("lambda/gpu_1x_h100_pcie/us-east-1/on-demand").price_usd_per_hour == 2.49
    assert {o.provider for o in cat.offers if o.origin is Origin.BUNDLED_CATALOG} >= {"modal", "runpod"}


def test_select_filters_and_orders_cheapest_first():
    cat = _book().catalog
    everything = cat.select(OfferFilter(spot_allowed=True))
    assert [o.sort_key for o in everything] == sorted(o.sort_key for o in everything)
    h100 = cat.select(OfferFilter(gpu_names=["h100"], gpu_count=1, max_price_usd_per_hour=4.0))
    assert h100 and all(o.gpu_name == "H100" and o.gpu_count == 1 and o.price_usd_per_hour <= 4.0 for o in h100)
    assert {o.provider for o in h100} == {"lambda", "runpod", "modal"}
    big = cat.select(OfferFilter(min_gpu_memory_gib=48, providers=["PaperSpace"]))
    assert {(o.instance_type, o.region) for o in big} == {(t, r) for t in ("A100-80G", "H100") for r in ("ny2", "ca1", "ams1")}
    assert cat.select(OfferFilter(gpu_names=["T4"], max_price_usd_per_hour=0.1)) == []
    assert all(not o.spot for o in cat.select(OfferFilter()))


def test_ties_put_better_availability_first():
    base = _rows("a,x,A10,1,24,,1.0,,per_second,s,\n")[0]
    rows = [
        dataclasses.replace(base, provider=p, availability=a)
        for p, a in (("a", Availability.UNAVAILABLE), ("b", Availability.UNKNOWN), ("c", Availability.AVAILABLE))
    ]
    cat = Catalog(rows, load_gpu_table(), KNOWN_PROVIDERS)
    assert [o.provider for o in cat.offers] == ["c", "b", "a"]
    assert [o.provider for o in cat.select(OfferFilter(exclude_unavailable=True))] == ["c", "b"]


def test_unknown_names_are_not_found_and_empty_names_invalid():
    cat = _book().catalog
    with pytest.raises(NotFound) as err:
        cat.select(OfferFilter(gpu_names=["A10", "B300"]))
    assert "gpu_names[1]" in err.value.message and err.value.reason == "GPU_NOT_FOUND"
    with pytest.raises(NotFound, match="providers\\[0\\]"):
        cat.select(OfferFilter(providers=["aws"]))
    with pytest.raises(InvalidArgument) as bad:
        cat.select(OfferFilter(providers=["lambda", " "]))
    assert bad.value.field_violations == [("providers[1]", "must not be empty")]
    with pytest.raises(NotFound):
        cat.get("lambda/nope//on-demand")
    with pytest.raises(InvalidArgument):
        cat.get("")


def test_local_rate_is_power_times_electricity_plus_amortisation():
    row = _local()
    assert row.price_usd_per_hour == pytest.approx(0.45 * 0.2 + 0.1)
    assert (row.provider, row.instance_type, row.gpu_name, row.origin) == (
        "local",
        "local-1xrtx4090",
        "RTX4090",
        Origin.CONFIGURED_RATE,
    )
    assert "450 W" in row.source and row.observed_at == NOW
    cpu = _local(gpu_name="", gpu_count=0)
    assert (cpu.instance_type, cpu.gpu_count, cpu.gpu_name) == ("local-cpu", 0, "")


def test_relative_speed_uses_the_gpu_table():
    cat = _book().catalog
    assert cat.relative_speed("A100-80GB", "A100-80GB") == 1.0
    assert cat.relative_speed("H100", "A100-80GB") > 2
    assert cat.relative_speed("B300", "A100-80GB") is None
