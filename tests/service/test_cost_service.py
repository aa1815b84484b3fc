"""The cost service on port 0 over real gRPC: offers, estimates, comparison, budgets, watch, admission, restarts, CLI.

Each test starts its own server on a temporary state folder; no provider is contacted (RefreshPrices is tested in
test_cost_refresh.py against loopback fakes).
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from crucible.api.cost.v1 import budget_pb2, offer_pb2
from crucible.api.cost.v1 import cost_service_pb2 as pb
from crucible.api.cost.v1 import cost_service_pb2_grpc as pb_grpc
from crucible.cost.config import CostConfig
from crucible.cost.server import create_server
from crucible.runtime.config import load_config
from crucible.runtime.errors import ConfigError, parse_status_details

USER_CATALOG = (
    "provider,instance_type,gpu_name,gpu_count,gpu_memory_gib,region,price_usd_per_hour,spot_price_usd_per_hour,"
    "storage_price_usd_per_gb_hour,egress_price_usd_per_gb,billing_granularity,source,observed_at\n"
    "modal,A100-80GB,A100-80GB,1,80,any,2.10,,0.0002,0.05,per_second,our negotiated rate,2026-11-01\n"
    "onprem,dgx-a100,A100-80GB,8,80,lab,6.00,,,,per_hour,finance estimate,\n"
    "onprem,a10-box,A10,1,24,lab,0.86,,,,per_second,finance estimate,2026-11-01\n"
)
T0 = 1_900_000_000


@contextlib.asynccontextmanager
async def cost_server(tmp_path, **settings):
    """A running cost server and a stub; state in tmp_path unless overridden."""
    user = tmp_path / "user-catalog.csv"
    if not user.exists():
        user.write_text(USER_CATALOG)
    values = dict(
        port=0,
        metrics_port=0,
        state_dir=str(tmp_path / "state"),
        user_catalog_file=str(user),
        local_gpu_name="RTX4090",
        local_gpu_count=1,
        local_gpu_memory_gib=24,
        local_power_watts=500,
        local_electricity_usd_per_kwh=0.3,
        grace_period_s=0.5,
    )
    values.update(settings)
    config = load_config(CostConfig, "cost", env={}, **values)
    server, port = create_server(config)
    await server.start()
    await server.wait_ready(10)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield server, pb_grpc.CostServiceStub(channel)
    finally:
        await server.stop(0)


async def _error(coro):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await coro
    info, violations = parse_status_details(err.value)
    return err.value.code(), info, violations


def _hours(h: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(h * 3600))


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


async def test_list_offers_filters_pages_and_provenance(tmp_path):
    async with cost_server(tmp_path) as (_, stub):
        reply = await stub.ListOffers(pb.ListOffersRequest(gpu_names=["a100-80gb"], gpu_count=1), timeout=5)
        offers = reply.offers
        assert [o.price_usd_per_hour for o in offers] == sorted(o.price_usd_per_hour for o in offers)
        by_id = {o.offer_id: o for o in offers}
        modal = by_id["modal/A100-80GB/any/on-demand"]
        assert (modal.price_usd_per_hour, modal.price_origin, modal.price_source) == (
            2.10,
            offer_pb2.PRICE_ORIGIN_USER_CATALOG,
            "our negotiated rate",
        )
        paperspace = by_id["paperspace/A100-80G/ny2/on-demand"]
        assert paperspace.HasField("price_observed_at") and "paperspace.com/pricing" in paperspace.price_source
        runpod = by_id["runpod/NVIDIA A100 80GB PCIe/US-TX-1/on-demand"]
        assert runpod.HasField("price_observed_at") and runpod.price_origin == offer_pb2.PRICE_ORIGIN_BUNDLED_CATALOG
        assert runpod.region == "US-TX-1" and "skypilot-catalog@" in runpod.price_source
        eight = await stub.ListOffers(pb.ListOffersRequest(providers=["onprem"], gpu_count=8), timeout=5)
        assert [o.offer_id for o in eight.offers] == ["onprem/dgx-a100/lab/on-demand"]
        local = await stub.ListOffers(pb.ListOffersRequest(providers=["local"]), timeout=5)
        (lo,) = local.offers
        assert lo.price_usd_per_hour == pytest.approx(0.15) and lo.price_origin == offer_pb2.PRICE_ORIGIN_CONFIGURED_RATE
        assert (lo.gpu_name, lo.availability) == ("RTX4090", offer_pb2.AVAILABILITY_AVAILABLE)
        cheap = await stub.ListOffers(pb.ListOffersRequest(max_price_usd_per_hour=0.6), timeout=5)
        assert cheap.offers and all(o.price_usd_per_hour <= 0.6 for o in cheap.offers)
        none = await stub.ListOffers(pb.ListOffersRequest(gpu_names=["T4"], min_gpu_memory_gib=40), timeout=5)
        assert list(none.offers) == [] and none.next_page_token == ""
        # Pages: walking them yields the same offers as one big page.
        everything = (await stub.ListOffers(pb.ListOffersRequest(providers=["lambda"], page_size=1000), timeout=5)).offers
        assert 100 < len(everything) < 1000
        walked, token = [], ""
        while True:
            page = await stub.ListOffers(pb.ListOffersRequest(providers=["lambda"], page_size=7, page_token=token), timeout=5)
            walked.extend(page.offers)
            token = page.next_page_token
            if not token:
                break
        assert [o.offer_id for o in walked] == [o.offer_id for o in everything]
        first = await stub.ListOffers(pb.ListOffersRequest(page_size=2), timeout=5)
        code, info, _ = await _error(
            stub.ListOffers(pb.ListOffersRequest(page_size=2, providers=["modal"], page_token=first.next_page_token), timeout=5)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and info.reason == "PAGE_TOKEN_MISMATCH"


async def test_list_offers_bad_input(tmp_path):
    async with cost_server(tmp_path) as (_, stub):
        code, info, _ = await _error(stub.ListOffers(pb.ListOffersRequest(gpu_names=["A100-80GB", "B300"]), timeout=5))
        assert code == grpc.StatusCode.NOT_FOUND and info.reason == "GPU_NOT_FOUND" and info.metadata["gpu_name"] == "B300"
        code, info, _ = await _error(stub.ListOffers(pb.ListOffersRequest(providers=["aws"]), timeout=5))
        assert code == grpc.StatusCode.NOT_FOUND and info.reason == "PROVIDER_NOT_FOUND"
        for request, field in (
            (pb.ListOffersRequest(min_gpu_memory_gib=-1), "min_gpu_memory_gib"),
            (pb.ListOffersRequest(max_price_usd_per_hour=float("nan")), "max_price_usd_per_hour"),
            (pb.ListOffersRequest(page_size=-1), "page_size"),
            (pb.ListOffersRequest(page_token="garbage!"), "page_token"),
            (pb.ListOffersRequest(gpu_names=[""]), "gpu_names[0]"),
        ):
            code, _, violations = await _error(stub.ListOffers(request, timeout=5))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and violations[0][0] == field


async def test_estimate_cost(tmp_path):
    async with cost_server(tmp_path) as (_, stub):
        hourly = await stub.EstimateCost(
            pb.EstimateCostRequest(offer_id="paperspace/H100/ny2/on-demand", duration=duration_pb2.Duration(seconds=3660)),
            timeout=5,
        )
        assert hourly.low.billed_duration.seconds == 7200 and hourly.low.compute_usd == pytest.approx(11.90)
        assert hourly.high == hourly.low and hourly.offer.offer_id == "paperspace/H100/ny2/on-demand"
        assert any("billed as 2h 0m 0s" in a for a in hourly.assumptions)
        assert any("observed 2026-11-01" in a for a in hourly.assumptions)
        ranged = await stub.EstimateCost(
            pb.EstimateCostRequest(
                offer_id="modal/A100-80GB/any/on-demand",
                duration_range=offer_pb2.DurationRange(low=_hours(1), high=_hours(3)),
                storage_gb_hours=1000,
                egress_gb=10,
            ),
            timeout=5,
        )
        assert ranged.low.compute_usd == pytest.approx(2.10) and ranged.high.compute_usd == pytest.approx(6.30)
        assert ranged.high.storage_usd == pytest.approx(0.2) and ranged.high.network_usd == pytest.approx(0.5)
        assert ranged.high.total_usd == pytest.approx(7.0)
        assert any("our negotiated rate" in a and "2026-11-01" in a for a in ranged.assumptions)
        cases = (
            (pb.EstimateCostRequest(offer_id="modal/H100/any/on-demand"), grpc.StatusCode.INVALID_ARGUMENT, "duration"),
            (
                pb.EstimateCostRequest(offer_id="modal/H100/any/on-demand", duration=duration_pb2.Duration(seconds=-5)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "duration",
            ),
            (
                pb.EstimateCostRequest(
                    offer_id="modal/H100/any/on-demand", duration_range=offer_pb2.DurationRange(low=_hours(3), high=_hours(1))
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "duration_range.low",
            ),
            (
                pb.EstimateCostRequest(offer_id="modal/H100/any/on-demand", duration=_hours(1), egress_gb=-1),
                grpc.StatusCode.INVALID_ARGUMENT,
                "egress_gb",
            ),
            (pb.EstimateCostRequest(offer_id="", duration=_hours(1)), grpc.StatusCode.INVALID_ARGUMENT, "offer_id"),
            (pb.EstimateCostRequest(offer_id="modal/B200//on-demand", duration=_hours(1)), grpc.StatusCode.NOT_FOUND, None),
        )
        for request, want, field in cases:
            code, info, violations = await _error(stub.EstimateCost(request, timeout=5))
            assert code == want, request
            if field:
                assert violations[0][0] == field
            else:
                assert info.reason == "OFFER_NOT_FOUND"


async def test_compare_providers(tmp_path):
    async with cost_server(tmp_path) as (_, stub):
        reply = await stub.CompareProviders(
            pb.CompareProvidersRequest(
                requirements=offer_pb2.ResourceRequirements(gpu_count=1, min_gpu_memory_gib=80),
                duration=_hours(4),
                reference_gpu_name="A100-80GB",
                objective=pb.OBJECTIVE_CHEAPEST,
            ),
            timeout=5,
        )
        totals = [r.cost.total_usd for r in reply.offers]
        assert totals == sorted(totals) and [r.rank for r in reply.offers] == list(range(1, len(totals) + 1))
        assert reply.recommended_offer_id == reply.offers[0].offer.offer_id
        assert reply.recommendation_reason.startswith("cheapest total:")
        h100 = next(r for r in reply.offers if r.offer.gpu_name == "H100")
        assert h100.relative_speed > 2 and h100.cost.runtime.seconds < 2 * 3600
        capped = await stub.CompareProviders(
            pb.CompareProvidersRequest(
                requirements=offer_pb2.ResourceRequirements(gpu_names=["H100"], gpu_count=1),
                objective=pb.OBJECTIVE_FASTEST,
                max_cost_usd=0.01,
            ),
            timeout=5,
        )
        assert not capped.offers and capped.recommended_offer_id == ""
        assert "exceed max_cost_usd 0.01" in capped.recommendation_reason
        code, _, violations = await _error(stub.CompareProviders(pb.CompareProvidersRequest(), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and violations[0][0] == "objective"
        code, _, violations = await _error(
            stub.CompareProviders(
                pb.CompareProvidersRequest(
                    requirements=offer_pb2.ResourceRequirements(gpu_names=["A10"]), objective=pb.OBJECTIVE_CHEAPEST
                ),
                timeout=5,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and violations[0][0] == "requirements.gpu_names"
        code, info, _ = await _error(
            stub.CompareProviders(
                pb.CompareProvidersRequest(
                    requirements=offer_pb2.ResourceRequirements(gpu_count=1),
                    reference_gpu_name="TPUv5",
                    objective=pb.OBJECTIVE_CHEAPEST,
                ),
                timeout=5,
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND and info.reason == "GPU_NOT_FOUND"


def _budget_request(scope="project:nano", limit=10.0, hard=True, thresholds=(), request_id=""):
    enforcement = budget_pb2.BUDGET_ENFORCEMENT_HARD if hard else budget_pb2.BUDGET_ENFORCEMENT_SOFT
    return pb.CreateBudgetRequest(
        budget=budget_pb2.Budget(scope=scope, limit_usd=limit, enforcement=enforcement, alert_thresholds_percent=thresholds),
        request_id=request_id,
    )


def _usage(job="job-1", start=T0, hours=1.0, scope="project:nano", offer="onprem/a10-box/lab/on-demand", price=None):
    request = pb.RecordUsageRequest(
        job_id=job, offer_id=offer, scope=scope, start_time=_ts(start), end_time=_ts(start + int(hours * 3600))
    )
    if price is not None:
        request.price_usd_per_hour = price
    return request


async def test_budgets_usage_watch_and_admission(tmp_path):
    async with cost_server(tmp_path) as (_, stub):
        created = (await stub.CreateBudget(_budget_request(request_id="r-1"), timeout=5)).budget
        assert list(created.alert_thresholds_percent) == [50, 80, 100] and created.budget_id.startswith("bud-")
        retry = (await stub.CreateBudget(_budget_request(request_id="r-1"), timeout=5)).budget
        assert retry.budget_id == created.budget_id
        code, _, _ = await _error(stub.CreateBudget(_budget_request(limit=99, request_id="r-1"), timeout=5))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        soft_global = (await stub.CreateBudget(_budget_request(scope="global", limit=100, hard=False), timeout=5)).budget

        watch = stub.WatchBudget(pb.WatchBudgetRequest(budget_id=created.budget_id), timeout=20)
        first = await watch.read()
        assert not first.HasField("alert") and first.budget.spent_usd == 0

        # $0.86/h x 6 h = $5.16: crosses 50 %.
        used = await stub.RecordUsage(_usage(hours=6), timeout=5)
        assert used.usage.cost_usd == pytest.approx(5.16) and not used.already_recorded
        assert {b.budget_id for b in used.budgets} == {created.budget_id, soft_global.budget_id}
        alert = await asyncio.wait_for(watch.read(), 5)
        assert alert.alert.threshold_percent == 50 and alert.alert.job_id == "job-1"
        assert alert.budget.spent_usd == pytest.approx(5.16)
        assert list(alert.budget.crossed_thresholds_percent) == [50]

        again = await stub.RecordUsage(_usage(hours=6), timeout=5)  # a retried report
        assert again.already_recorded and again.job_spent_usd == pytest.approx(5.16)
        code, info, _ = await _error(stub.RecordUsage(_usage(start=T0 + 3600, hours=1), timeout=5))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "USAGE_OVERLAP"

        # Admission: 5.16 + 4.84 = 10.00 fits exactly; a cent more does not.
        ok = await stub.CheckAdmission(pb.CheckAdmissionRequest(scope="project:nano", estimated_cost_usd=4.84), timeout=5)
        assert [(c.budget_id, c.would_exceed) for c in ok.checks] == [(created.budget_id, False), (soft_global.budget_id, False)]
        code, info, _ = await _error(
            stub.CheckAdmission(
                pb.CheckAdmissionRequest(scope="project:nano", estimated_cost_usd=4.85, job_id="job-2"), timeout=5
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and info.reason == "BUDGET_EXCEEDED"
        assert info.metadata["budget_id"] == created.budget_id and float(info.metadata["projected_usd"]) == pytest.approx(10.01)
        other = await stub.CheckAdmission(pb.CheckAdmissionRequest(scope="user:bob", estimated_cost_usd=500), timeout=5)
        assert [(c.budget_id, c.would_exceed) for c in other.checks] == [(soft_global.budget_id, True)]

        # Provider-reported price, crossing 80 and 100 at once.
        await stub.RecordUsage(_usage(job="job-2", start=T0 + 7 * 3600, hours=1, price=5.0), timeout=5)
        a80 = await asyncio.wait_for(watch.read(), 5)
        a100 = await asyncio.wait_for(watch.read(), 5)
        assert (a80.alert.threshold_percent, a100.alert.threshold_percent) == (80, 100)
        assert a100.alert.enforcement == budget_pb2.BUDGET_ENFORCEMENT_HARD
        watch.cancel()

        got = (await stub.GetBudget(pb.GetBudgetRequest(budget_id=created.budget_id), timeout=5)).budget
        assert got.spent_usd == pytest.approx(10.16) and list(got.crossed_thresholds_percent) == [50, 80, 100]
        listed = await stub.ListBudgets(pb.ListBudgetsRequest(page_size=1), timeout=5)
        assert [b.budget_id for b in listed.budgets] == [created.budget_id] and listed.next_page_token
        rest = await stub.ListBudgets(pb.ListBudgetsRequest(page_size=1, page_token=listed.next_page_token), timeout=5)
        assert [b.budget_id for b in rest.budgets] == [soft_global.budget_id] and not rest.next_page_token


async def test_budget_and_usage_bad_input(tmp_path):
    async with cost_server(tmp_path) as (_, stub):
        bad_budgets = (
            (pb.CreateBudgetRequest(), "budget"),
            (_budget_request(scope="Project Nano"), "budget.scope"),
            (_budget_request(limit=-5), "budget.limit_usd"),
            (_budget_request(thresholds=[50, 150]), "budget.alert_thresholds_percent[1]"),
            (pb.CreateBudgetRequest(budget=budget_pb2.Budget(scope="global", limit_usd=1)), "budget.enforcement"),
        )
        for request, field in bad_budgets:
            code, _, violations = await _error(stub.CreateBudget(request, timeout=5))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and violations[0][0] == field, field
        code, _, _ = await _error(stub.GetBudget(pb.GetBudgetRequest(budget_id="bud-unknown"), timeout=5))
        assert code == grpc.StatusCode.NOT_FOUND
        watch = stub.WatchBudget(pb.WatchBudgetRequest(budget_id="bud-unknown"), timeout=5)
        code, _, _ = await _error(watch.read())
        assert code == grpc.StatusCode.NOT_FOUND
        no_end = pb.RecordUsageRequest(job_id="j", offer_id="modal/H100/any/on-demand", start_time=_ts(T0))
        bad_usage = (
            (_usage(job=""), grpc.StatusCode.INVALID_ARGUMENT),
            (no_end, grpc.StatusCode.INVALID_ARGUMENT),
            (_usage(hours=-1), grpc.StatusCode.INVALID_ARGUMENT),
            (_usage(price=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
            (_usage(scope="nano"), grpc.StatusCode.INVALID_ARGUMENT),
            (_usage(offer="lambda/gpu_9x_z//on-demand"), grpc.StatusCode.NOT_FOUND),
        )
        for request, want in bad_usage:
            code, _, _ = await _error(stub.RecordUsage(request, timeout=5))
            assert code == want, request
        code, _, violations = await _error(stub.CheckAdmission(pb.CheckAdmissionRequest(estimated_cost_usd=-1), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and violations[0][0] == "estimated_cost_usd"


async def test_spend_survives_a_restart(tmp_path):
    async with cost_server(tmp_path) as (_, stub):
        budget = (await stub.CreateBudget(_budget_request(limit=2.0), timeout=5)).budget
        await stub.RecordUsage(_usage(hours=2), timeout=5)  # $1.72
    async with cost_server(tmp_path) as (_, stub):
        got = (await stub.GetBudget(pb.GetBudgetRequest(budget_id=budget.budget_id), timeout=5)).budget
        assert got.spent_usd == pytest.approx(1.72) and list(got.crossed_thresholds_percent) == [50, 80]
        assert (await stub.RecordUsage(_usage(hours=2), timeout=5)).already_recorded
        code, _, _ = await _error(
            stub.CheckAdmission(pb.CheckAdmissionRequest(scope="project:nano", estimated_cost_usd=0.5), timeout=5)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION


async def test_watch_ends_with_unavailable_on_shutdown(tmp_path):
    async with cost_server(tmp_path) as (server, stub):
        budget = (await stub.CreateBudget(_budget_request(), timeout=5)).budget
        watch = stub.WatchBudget(pb.WatchBudgetRequest(budget_id=budget.budget_id), timeout=20)
        await watch.read()
        stopping = asyncio.create_task(server.stop(0.5))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(watch.read(), 10)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        await stopping


def test_malformed_user_catalog_stops_the_service_naming_the_setting(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("provider,instance_type,price_usd_per_hour\nmyco,box,free\n")
    config = load_config(CostConfig, "cost", env={}, port=0, state_dir=str(tmp_path), user_catalog_file=str(bad))
    with pytest.raises(ConfigError) as err:
        create_server(config)
    assert err.value.field == "user_catalog_file" and "bad.csv:2" in str(err.value)


async def test_cli_prints_tables_and_reports_errors(tmp_path, capsys):
    from crucible.cli import main

    async with cost_server(tmp_path) as (server, _):
        address = ["--address", server.address]
        assert await asyncio.to_thread(main, ["cost", "offers", "--gpu", "H100", *address]) == 0
        out = capsys.readouterr().out
        assert "lambda/gpu_1x_h100_pcie/us-east-1/on-demand" in out and "2026-12-03" in out and "$/h" in out
        rc = await asyncio.to_thread(main, ["cost", "estimate", "paperspace/H100/ny2/on-demand", "--duration", "1h1m", *address])
        out = capsys.readouterr().out
        assert rc == 0 and "$11.90" in out and "billed per started hour" in out
        rc = await asyncio.to_thread(
            main, ["cost", "compare", "--gpu-count", "1", "--duration", "2h", "--reference-gpu", "A100-80GB", *address]
        )
        assert rc == 0 and "recommended:" in capsys.readouterr().out
        rc = await asyncio.to_thread(
            main, ["cost", "budget", "create", "--scope", "user:alice", "--limit", "1", "--hard", *address]
        )
        assert rc == 0 and "user:alice" in capsys.readouterr().out
        rc = await asyncio.to_thread(main, ["cost", "budget", "check", "--scope", "user:alice", "--cost", "2", *address])
        captured = capsys.readouterr()
        assert rc == 1 and "FAILED_PRECONDITION" in captured.err and "budget_id=bud-" in captured.err
        rc = await asyncio.to_thread(main, ["cost", "offers", "--gpu", "B300", *address])
        assert rc == 1 and "NOT_FOUND" in capsys.readouterr().err


async def test_budget_spend_is_exported_for_the_alert_rules(tmp_path):
    import urllib.request

    async with cost_server(tmp_path) as (server, stub):
        created = (await stub.CreateBudget(_budget_request(request_id="m-1"), timeout=5)).budget
        await stub.RecordUsage(_usage(hours=6), timeout=5)  # $5.16 of $10

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as reply:
                return reply.read().decode()

        text = await asyncio.to_thread(scrape)
    line = next(
        line for line in text.splitlines() if line.startswith("crucible_cost_budget_spent_ratio{") and created.budget_id in line
    )
    assert 'scope="project:nano"' in line and 'enforcement="hard"' in line
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(0.516)


async def test_cli_json_lists_offers_with_regions_and_dated_sources(tmp_path, capsys):
    """Issue 14: `crucible cost offers --provider lambda|runpod --json` gives rows with a region and a dated source."""
    import json
    import re

    from crucible.cli import main

    async with cost_server(tmp_path) as (server, _):
        address = ["--address", server.address]
        for provider, region in (("lambda", r"[a-z]+-[a-z]+-\d"), ("runpod", r"[A-Z]+-[A-Z]+-\d")):
            rc = await asyncio.to_thread(main, ["cost", "offers", "--provider", provider, "--limit", "1000", "--json", *address])
            offers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # one offer per line
            assert rc == 0 and len(offers) > 100
            for o in offers:
                assert o["provider"] == provider and re.fullmatch(region, o["region"]), o
                assert o["offer_id"] == f"{provider}/{o['instance_type']}/{o['region']}/on-demand"
                assert re.fullmatch(
                    r"github\.com/skypilot-org/skypilot-catalog@[0-9a-f]{40}:catalogs/v7/" + provider + "/vms.csv",
                    o["price_source"],
                ), o
                assert o["price_observed_at"].startswith("2026-12-03")
        rc = await asyncio.to_thread(
            main, ["cost", "budget", "create", "--scope", "user:alice", "--limit", "3", "--json", *address]
        )
        created = json.loads(capsys.readouterr().out)
        assert rc == 0 and created["scope"] == "user:alice" and created["enforcement"] == "BUDGET_ENFORCEMENT_SOFT"
        for argv, key in (
            (["budget", "list"], "budget_id"),
            (["budget", "get", created["budget_id"]], "budget_id"),
            (["estimate", "modal/H100/any/on-demand", "--duration", "1h"], "assumptions"),
            (["budget", "check", "--scope", "user:alice", "--cost", "1"], "checks"),
            (["compare", "--gpu", "H100", "--duration", "1h"], "recommended"),
            (["refresh", "--provider", "modal"], "outcome"),
        ):
            rc = await asyncio.to_thread(main, ["cost", *argv, "--json", *address])
            lines = capsys.readouterr().out.splitlines()  # one JSON object per line
            assert rc == 0 and lines and all(key in json.loads(line) for line in lines), argv


async def test_cli_into_a_closed_pipe_ends_quietly(tmp_path):
    """`crucible cost offers | head -1`: no traceback, no BrokenPipeError message, the SIGPIPE exit status."""
    import subprocess
    import sys

    async with cost_server(tmp_path) as (server, _):
        command = (
            f"{sys.executable} -m crucible cost offers --limit 1000 --json --address {server.address} | head -c 10;"
            ' echo " rc=${PIPESTATUS[0]}"'
        )
        done = await asyncio.to_thread(subprocess.run, ["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("{") and "rc=141" in done.stdout, done
    assert done.stderr == "", done.stderr
