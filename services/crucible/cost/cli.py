"""`crucible cost offers|estimate|compare|refresh|budget ...`: the cost service for people who don't speak protobuf.

Each command calls a running cost service (--address, default 127.0.0.1:50055) and prints a table, or with --json one
JSON object per line (proto field names): one line per offer, row or budget of a list, one line for a single answer.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from crucible.clients.channel import add_connection_arguments
from crucible.clients.cli_common import (
    message_dict,
    parse_duration,
    parse_duration_range,
    parse_gpus,
    print_json_line,
    report_rpc_error,
)
from crucible.clients.offers import group_offers, short_source
from crucible.clients.tables import format_table
from crucible.runtime.convert import duration_from_seconds, timestamp_from_datetime

DEFAULT_ADDRESS = "127.0.0.1:50055"
__all__ = ["add_commands", "parse_duration", "parse_duration_range"]  # the parsers live in crucible.clients.cli_common


def _parse_time(text: str) -> timestamp_pb2.Timestamp:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO time such as 2026-05-07T12:00:00Z, got {text!r}") from None
    return timestamp_from_datetime(when)  # naive means UTC


def _fmt_seconds(d: duration_pb2.Duration) -> str:
    total = d.seconds + d.nanos / 1e9
    hours, rest = divmod(round(total), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _money(x: float) -> str:
    return f"${x:,.2f}" if abs(x) >= 0.01 or x == 0 else f"${x:.4f}"


def _enum(enum_type: Any, value: int, prefix: str) -> str:
    return enum_type.Name(value).removeprefix(prefix).lower().replace("_", "-")


def _observed(offer: Any) -> str:
    return offer.price_observed_at.ToDatetime().date().isoformat() if offer.HasField("price_observed_at") else "undated"


def _source(offer: Any) -> str:
    """'skypilot-catalog 2026-12-03': where the price came from, in a few words, and the day it was read."""
    return f"{short_source(offer.price_source)} {_observed(offer)}"


# --------------------------------------------------------------------------------------------------------- commands


async def _offers(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import cost_service_pb2 as pb
    from crucible.api.cost.v1 import offer_pb2

    if args.gpus is not None:
        args.gpu = [*args.gpu, *args.gpus[0]]
        args.gpu_count = args.gpus[1]
    request = pb.ListOffersRequest(
        gpu_names=args.gpu,
        min_gpu_memory_gib=args.min_gpu_memory,
        providers=args.provider,
        spot_allowed=args.spot,
        exclude_unavailable=args.available_only,
        page_size=args.limit,
    )
    if args.gpu_count is not None:
        request.gpu_count = args.gpu_count
    if args.max_price is not None:
        request.max_price_usd_per_hour = args.max_price
    reply = await stub.ListOffers(request, timeout=args.timeout)
    if args.json:
        for offer in reply.offers:
            print_json_line(offer)
        return 0
    rows = [
        (
            o.offer_id,
            o.gpu_name or "-",
            o.gpu_count,
            f"{o.gpu_memory_gib:g}",
            f"{o.price_usd_per_hour:.4g}",
            _enum(offer_pb2.BillingGranularity, o.billing_granularity, "BILLING_GRANULARITY_"),
            _enum(offer_pb2.Availability, o.availability, "AVAILABILITY_"),
            _enum(offer_pb2.PriceOrigin, o.price_origin, "PRICE_ORIGIN_"),
            _source(o),
        )
        for o in reply.offers
    ]
    print(format_table(("offer", "gpu", "n", "GiB", "$/h", "billing", "availability", "origin", "source"), rows))
    if reply.next_page_token:
        print(f"(more offers: raise --limit, now {args.limit})")
    return 0


async def _estimate(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import cost_service_pb2 as pb
    from crucible.api.cost.v1 import offer_pb2

    low, high = args.duration
    request = pb.EstimateCostRequest(offer_id=args.offer_id, storage_gb_hours=args.storage_gb_hours, egress_gb=args.egress_gb)
    if low == high:
        request.duration.CopyFrom(duration_from_seconds(low))
    else:
        request.duration_range.CopyFrom(offer_pb2.DurationRange(low=duration_from_seconds(low), high=duration_from_seconds(high)))
    reply = await stub.EstimateCost(request, timeout=args.timeout)
    if args.json:
        print_json_line(reply)
        return 0
    o = reply.offer
    print(f"{o.offer_id}: {_money(o.price_usd_per_hour)}/h, source {_source(o)}")
    ends = [("estimate", reply.low)] if low == high else [("low", reply.low), ("high", reply.high)]
    rows = [
        (
            name,
            _fmt_seconds(b.runtime),
            _fmt_seconds(b.billed_duration),
            _money(b.compute_usd),
            _money(b.storage_usd),
            _money(b.network_usd),
            _money(b.total_usd),
        )
        for name, b in ends
    ]
    print(format_table(("", "runtime", "billed", "compute", "storage", "network", "total"), rows))
    print("assumptions:")
    for line in reply.assumptions:
        print(f"  - {line}")
    return 0


async def _compare(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import cost_service_pb2 as pb
    from crucible.api.cost.v1 import offer_pb2

    if args.gpus is not None:
        args.gpu = [*args.gpu, *args.gpus[0]]
        args.gpu_count = args.gpus[1]
    request = pb.CompareProvidersRequest(
        requirements=offer_pb2.ResourceRequirements(
            gpu_names=args.gpu,
            gpu_count=args.gpu_count,
            min_gpu_memory_gib=args.min_gpu_memory,
            min_vcpus=args.min_vcpus,
            min_memory_gib=args.min_memory,
        ),
        duration=duration_from_seconds(args.duration),
        reference_gpu_name=args.reference_gpu,
        providers=args.provider,
        spot_allowed=args.spot,
        objective=pb.OBJECTIVE_FASTEST if args.objective == "fastest" else pb.OBJECTIVE_CHEAPEST,
        storage_gb_hours=args.storage_gb_hours,
        egress_gb=args.egress_gb,
    )
    if args.max_cost is not None:
        request.max_cost_usd = args.max_cost
    reply = await stub.CompareProviders(request, timeout=args.timeout)
    found = 0 if reply.recommended_offer_id else 1
    groups = group_offers(reply.offers, reply.recommended_offer_id)
    if args.regions:
        shown = list(reply.offers)
        total = len(shown)
        if args.json:
            for r in shown[: args.limit]:
                print_json_line({**message_dict(r), "recommended": r.offer.offer_id == reply.recommended_offer_id})
            return found
        rows = [
            (
                "*" if r.offer.offer_id == reply.recommended_offer_id else "",
                r.rank,
                r.offer.offer_id,
                r.offer.region or "-",
                f"{r.offer.price_usd_per_hour:.4g}",
                f"{r.relative_speed:.2f}x",
                _fmt_seconds(r.cost.runtime),
                _money(r.cost.total_usd),
                _source(r.offer),
            )
            for r in shown[: args.limit]
        ]
        print(format_table(("", "rank", "offer", "region", "$/h", "speed", "runtime", "total", "source"), rows))
    else:
        total = len(groups)
        if args.json:
            for g in groups[: args.limit]:
                print_json_line(
                    {
                        **message_dict(g.best),
                        "recommended": g.recommended,
                        "regions_at_price": g.regions_at_price,
                        "regions": list(g.regions),
                        "region_count": g.region_count,
                    }
                )
            return found
        rows = []
        for g in groups[: args.limit]:
            r = g.best
            where = r.offer.region or "-"
            if g.regions_at_price > 1:
                where += f" (+{g.regions_at_price - 1} at this price)"
            if g.region_count > g.regions_at_price:
                where += f", {g.region_count} regions"
            rows.append(
                (
                    "*" if g.recommended else "",
                    r.offer.provider,
                    f"{g.gpu_count}x {g.gpu_name}" if g.gpu_name else "CPU",
                    f"{r.offer.price_usd_per_hour:.4g}" + (" spot" if g.spot else ""),
                    where,
                    f"{r.relative_speed:.2f}x",
                    _fmt_seconds(r.cost.runtime),
                    _money(r.cost.total_usd),
                    _source(r.offer),
                )
            )
        print(format_table(("", "provider", "gpu", "$/h", "cheapest region", "speed", "runtime", "total", "source"), rows))
    if total > args.limit:
        print(f"({total - args.limit} more; raise --limit)")
    if not args.regions and len(reply.offers) > len(groups):
        print(f"(one row per provider and GPU: {len(reply.offers)} offers in all; --regions lists each region)")
    print(f"* recommended: {reply.recommended_offer_id or 'none'} -- {reply.recommendation_reason}")
    print("assumptions:")
    for line in reply.assumptions:
        print(f"  - {line}")
    return found


async def _refresh(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import cost_service_pb2 as pb

    reply = await stub.RefreshPrices(pb.RefreshPricesRequest(providers=args.provider), timeout=args.timeout)
    if args.json:
        for result in reply.results:
            print_json_line(result)
        return 0
    rows = [
        (
            r.provider,
            _enum(pb.RefreshOutcome, r.outcome, "REFRESH_OUTCOME_"),
            r.offers_updated,
            r.user_edited_rows_skipped,
            r.prices_observed_at.ToJsonString() if r.HasField("prices_observed_at") else "undated",
            r.error or "-",
        )
        for r in reply.results
    ]
    print(format_table(("provider", "outcome", "offers updated", "user rows kept", "prices observed", "error"), rows))
    return 0


def _budget_rows(budgets: Sequence[Any]) -> str:
    from crucible.api.cost.v1 import budget_pb2

    rows = [
        (
            b.budget_id,
            b.scope,
            b.display_name or "-",
            _money(b.limit_usd),
            _money(b.spent_usd),
            f"{100 * b.spent_usd / b.limit_usd:.1f}%" if b.limit_usd else "-",
            _enum(budget_pb2.BudgetEnforcement, b.enforcement, "BUDGET_ENFORCEMENT_"),
            ",".join(f"{t:g}" for t in b.alert_thresholds_percent),
            ",".join(f"{t:g}" for t in b.crossed_thresholds_percent) or "-",
        )
        for b in budgets
    ]
    return format_table(("budget", "scope", "name", "limit", "spent", "used", "enforcement", "alerts at %", "crossed"), rows)


async def _budget_create(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import budget_pb2
    from crucible.api.cost.v1 import cost_service_pb2 as pb

    budget = budget_pb2.Budget(
        scope=args.scope,
        display_name=args.name,
        limit_usd=args.limit,
        alert_thresholds_percent=args.thresholds,
        enforcement=budget_pb2.BUDGET_ENFORCEMENT_HARD if args.hard else budget_pb2.BUDGET_ENFORCEMENT_SOFT,
    )
    reply = await stub.CreateBudget(pb.CreateBudgetRequest(budget=budget, request_id=args.request_id), timeout=args.timeout)
    if args.json:
        print_json_line(reply.budget)
        return 0
    print(_budget_rows([reply.budget]))
    return 0


async def _budget_list(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import cost_service_pb2 as pb

    budgets: list[Any] = []
    token = ""
    while True:
        reply = await stub.ListBudgets(
            pb.ListBudgetsRequest(scope=args.scope, page_size=1000, page_token=token), timeout=args.timeout
        )
        budgets.extend(reply.budgets)
        token = reply.next_page_token
        if not token:
            break
    if args.json:
        for b in budgets:
            print_json_line(b)
        return 0
    print(_budget_rows(budgets))
    return 0


async def _budget_get(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import cost_service_pb2 as pb

    reply = await stub.GetBudget(pb.GetBudgetRequest(budget_id=args.budget_id), timeout=args.timeout)
    if args.json:
        print_json_line(reply.budget)
        return 0
    print(_budget_rows([reply.budget]))
    return 0


async def _budget_watch(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import cost_service_pb2 as pb

    stream = stub.WatchBudget(pb.WatchBudgetRequest(budget_id=args.budget_id))
    async for message in stream:
        if args.json:
            print_json_line(message)
            continue
        b = message.budget
        if message.HasField("alert"):
            a = message.alert
            print(
                f"{a.time.ToJsonString()} ALERT {a.budget_id} ({a.scope}): crossed {a.threshold_percent:g}% -- spent "
                f"{_money(a.spent_usd)} of {_money(a.limit_usd)} (job {a.job_id})",
                flush=True,
            )
        else:
            print(_budget_rows([b]), flush=True)
            print("watching for threshold crossings; Ctrl-C stops", flush=True)
    return 0


async def _budget_check(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import budget_pb2
    from crucible.api.cost.v1 import cost_service_pb2 as pb

    reply = await stub.CheckAdmission(
        pb.CheckAdmissionRequest(scope=args.scope, estimated_cost_usd=args.cost, job_id=args.job_id), timeout=args.timeout
    )
    if args.json:
        print_json_line(reply)
        return 0
    rows = [
        (
            c.budget_id,
            _enum(budget_pb2.BudgetEnforcement, c.enforcement, "BUDGET_ENFORCEMENT_"),
            _money(c.limit_usd),
            _money(c.spent_usd),
            _money(c.projected_usd),
            "yes" if c.would_exceed else "no",
        )
        for c in reply.checks
    ]
    print(format_table(("budget", "enforcement", "limit", "spent", "projected", "would exceed"), rows))
    print("admitted" + (" (no budget covers this scope)" if not rows else ""))
    return 0


async def _budget_record(stub: Any, args: argparse.Namespace) -> int:
    from crucible.api.cost.v1 import cost_service_pb2 as pb

    request = pb.RecordUsageRequest(
        job_id=args.job_id, offer_id=args.offer_id, scope=args.scope, start_time=args.start, end_time=args.end
    )
    if args.price is not None:
        request.price_usd_per_hour = args.price
    reply = await stub.RecordUsage(request, timeout=args.timeout)
    if args.json:
        print_json_line(reply)
        return 0
    u = reply.usage
    state = "already recorded (nothing added)" if reply.already_recorded else "recorded"
    print(
        f"{state}: job {u.job_id} on {u.offer_id}: {_money(u.cost_usd)} at {_money(u.price_usd_per_hour)}/h; "
        f"job total {_money(reply.job_spent_usd)}"
    )
    if reply.budgets:
        print(_budget_rows(reply.budgets))
    return 0


# ------------------------------------------------------------------------------------------------------- plumbing


def _run(command: Callable[[Any, argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from crucible.api.cost.v1 import cost_service_pb2_grpc
        from crucible.clients.channel import cli_channel_config, open_channel

        async def go() -> int:
            async with open_channel(config, "crucible.cost.v1.CostService") as channel:
                return await command(cost_service_pb2_grpc.CostServiceStub(channel), args)

        try:
            config = cli_channel_config("cost", args)  # address, token, TLS, deadline from flags, then TOML/env
        except ValueError as err:
            print(f"crucible cost: {err}", file=sys.stderr)
            return 2
        args.timeout = config.timeout_s
        try:
            return asyncio.run(go())  # a closed stdout (`| head`) ends quietly in crucible.cli.main
        except KeyboardInterrupt:
            return 130
        except grpc.RpcError as err:
            return report_rpc_error(err, "crucible cost", "cost", ",".join(config.addresses))

    return handler


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _thresholds(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated percentages such as 50,80,100, got {text!r}") from None


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `crucible cost ...` to the crucible command line."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=None,
        help=f"cost service host:port (default $CRUCIBLE_COST_ADDRESS, the client config, or {DEFAULT_ADDRESS})",
    )
    common.add_argument(
        "--timeout", type=float, default=None, help="deadline of each call in seconds (default $CRUCIBLE_CLIENT_TIMEOUT_S or 30)"
    )
    common.add_argument(
        "--token",
        default=None,
        help="bearer token when the service has auth on (default $CRUCIBLE_CLIENT_TOKEN, "
        "$CRUCIBLE_AUTH_TOKEN or the client config)",
    )
    add_connection_arguments(common, address=False, token=False, timeout=False)  # --token-file, --tls, --ca-file
    common.add_argument(
        "--json", action="store_true", help="print the service's answer as JSON (proto field names) instead of a table"
    )
    cost = subparsers.add_parser("cost", help="GPU prices, estimates, provider comparison and budgets (cost service)")
    sub = cost.add_subparsers(dest="cost_command", required=True, metavar="ACTION")

    p = sub.add_parser("offers", parents=[common], help="list catalog offers, cheapest first")
    p.add_argument("--gpu", action="append", default=[], help="GPU model or family, e.g. A100 or A100-80GB (repeatable)")
    p.add_argument("--min-gpu-memory", type=float, default=0.0, metavar="GIB", help="minimum memory per GPU")
    p.add_argument("--gpu-count", type=int, default=None, help="exact GPUs per instance")
    p.add_argument(
        "--gpus", type=parse_gpus, default=None, metavar="NAME[:COUNT]", help="GPU model and count in one, e.g. A100:1 or H100:8"
    )
    p.add_argument("--provider", action="append", default=[], help="provider, e.g. lambda (repeatable)")
    p.add_argument("--spot", action="store_true", help="include spot offers")
    p.add_argument("--max-price", type=float, default=None, metavar="USD", help="highest price per instance-hour")
    p.add_argument("--available-only", action="store_true", help="leave out offers known to have no capacity")
    p.add_argument("--limit", type=_positive, default=50, help="offers to show (default 50)")
    p.set_defaults(handler=_run(_offers))

    p = sub.add_parser("estimate", parents=[common], help="estimate the cost of one offer for a runtime")
    p.add_argument("offer_id", help="offer id from `crucible cost offers`")
    p.add_argument("--duration", type=parse_duration_range, required=True, help="runtime such as 3h, 1h30m, or a range 1h..3h")
    p.add_argument("--storage-gb-hours", type=float, default=0.0, help="persistent storage in GB-hours")
    p.add_argument("--egress-gb", type=float, default=0.0, help="outbound traffic in GB")
    p.set_defaults(handler=_run(_estimate))

    p = sub.add_parser("compare", parents=[common], help="rank every feasible offer for requirements and a runtime")
    p.add_argument(
        "--gpu",
        action="append",
        default=[],
        help="acceptable GPU model or family, e.g. A100 or A100-80GB (repeatable); none = any",
    )
    p.add_argument("--gpu-count", type=int, default=1, help="GPUs per instance (default 1; 0 = CPU only)")
    p.add_argument(
        "--gpus", type=parse_gpus, default=None, metavar="NAME[:COUNT]", help="GPU model and count in one, e.g. A100:1 or H100:8"
    )
    p.add_argument("--min-gpu-memory", type=float, default=0.0, metavar="GIB")
    p.add_argument("--min-vcpus", type=int, default=0)
    p.add_argument("--min-memory", type=float, default=0.0, metavar="GIB", help="minimum host memory")
    p.add_argument("--duration", type=parse_duration, default=3600.0, help="runtime on the reference GPU (default 1h)")
    p.add_argument("--reference-gpu", default="", help="GPU the duration was measured on; scales runtimes by speed")
    p.add_argument("--provider", action="append", default=[])
    p.add_argument("--spot", action="store_true", help="consider spot offers too")
    p.add_argument("--objective", choices=("cheapest", "fastest"), default="cheapest")
    p.add_argument("--max-cost", type=float, default=None, metavar="USD", help="cost cap for the whole run")
    p.add_argument("--storage-gb-hours", type=float, default=0.0)
    p.add_argument("--egress-gb", type=float, default=0.0)
    p.add_argument("--limit", type=_positive, default=20, help="rows to show, with --json too (default 20)")
    p.add_argument(
        "--regions", action="store_true", help="one row per offer and region (default: one per provider and GPU, cheapest region)"
    )
    p.set_defaults(handler=_run(_compare))

    p = sub.add_parser("refresh", parents=[common], help="pull live prices (Lambda, RunPod) into the catalog")
    p.add_argument("--provider", action="append", default=[], help="provider to refresh (repeatable); none = all")
    p.set_defaults(handler=_run(_refresh))

    budget = sub.add_parser("budget", help="budgets and spend")
    bsub = budget.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    p = bsub.add_parser("create", parents=[common], help="create a budget")
    p.add_argument("--scope", required=True, help="user:NAME, project:NAME or global")
    p.add_argument("--limit", type=float, required=True, metavar="USD")
    p.add_argument("--thresholds", type=_thresholds, default=[], help="alert percentages, default 50,80,100")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--hard", action="store_true", help="refuse jobs that would exceed it (default: soft, alerts only)")
    mode.add_argument("--soft", action="store_true", help="alerts only (the default)")
    p.add_argument("--name", default="", help="label shown in tables")
    p.add_argument("--request-id", default="", help="idempotency key: retrying with it never creates a second budget")
    p.set_defaults(handler=_run(_budget_create))
    p = bsub.add_parser("list", parents=[common], help="list budgets with their spend")
    p.add_argument("--scope", default="")
    p.set_defaults(handler=_run(_budget_list))
    p = bsub.add_parser("get", parents=[common], help="show one budget")
    p.add_argument("budget_id")
    p.set_defaults(handler=_run(_budget_get))
    p = bsub.add_parser("watch", parents=[common], help="print alerts as spend crosses thresholds (until Ctrl-C)")
    p.add_argument("budget_id")
    p.set_defaults(handler=_run(_budget_watch))
    p = bsub.add_parser("check", parents=[common], help="would a job of this cost be admitted?")
    p.add_argument("--scope", default="")
    p.add_argument("--cost", type=float, required=True, metavar="USD", help="estimated cost of the job")
    p.add_argument("--job-id", default="")
    p.set_defaults(handler=_run(_budget_check))
    p = bsub.add_parser("record", parents=[common], help="record usage by hand (the scheduler does this for its jobs)")
    p.add_argument("--job-id", required=True)
    p.add_argument("--offer-id", required=True)
    p.add_argument("--scope", default="")
    p.add_argument("--start", type=_parse_time, required=True, help="ISO time, e.g. 2026-05-07T12:00:00Z")
    p.add_argument("--end", type=_parse_time, required=True)
    p.add_argument("--price", type=float, default=None, metavar="USD_PER_HOUR", help="price actually charged")
    p.set_defaults(handler=_run(_budget_record))
