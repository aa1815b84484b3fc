"""gRPC servicer of the cost service: protobuf <-> domain translation only.

The logic lives in catalog.py, estimate.py, compare.py, budgets.py and refresh.py (no grpc there).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from crucible.api.cost.v1 import budget_pb2, cost_service_pb2, cost_service_pb2_grpc, offer_pb2
from crucible.cost import limits, paging
from crucible.cost.budgets import Alert, AlertHub, Budget, BudgetStore, Enforcement, check_scope
from crucible.cost.catalog import Availability, Billing, Offer, OfferFilter, Origin, PriceBook
from crucible.cost.compare import Objective, Requirements, compare
from crucible.cost.estimate import NS_PER_HOUR, Breakdown, estimate
from crucible.cost.refresh import Outcome, Refresher
from crucible.runtime.convert import duration_from_ns, timestamp_from_datetime, timestamp_from_ns
from crucible.runtime.errors import InvalidArgument, Unavailable
from crucible.runtime.validation import duration_ns
from crucible.runtime.validation import timestamp_ns as checked_timestamp_ns

SERVICE_DESCRIPTOR = cost_service_pb2.DESCRIPTOR.services_by_name["CostService"]

_BILLING = {
    Billing.PER_SECOND: offer_pb2.BILLING_GRANULARITY_PER_SECOND,
    Billing.PER_MINUTE: offer_pb2.BILLING_GRANULARITY_PER_MINUTE,
    Billing.PER_HOUR: offer_pb2.BILLING_GRANULARITY_PER_HOUR,
}
_AVAILABILITY = {
    Availability.UNKNOWN: offer_pb2.AVAILABILITY_UNKNOWN,
    Availability.AVAILABLE: offer_pb2.AVAILABILITY_AVAILABLE,
    Availability.LOW: offer_pb2.AVAILABILITY_LOW,
    Availability.UNAVAILABLE: offer_pb2.AVAILABILITY_UNAVAILABLE,
}
_ORIGIN = {
    Origin.BUNDLED_CATALOG: offer_pb2.PRICE_ORIGIN_BUNDLED_CATALOG,
    Origin.USER_CATALOG: offer_pb2.PRICE_ORIGIN_USER_CATALOG,
    Origin.LIVE_API: offer_pb2.PRICE_ORIGIN_LIVE_API,
    Origin.CONFIGURED_RATE: offer_pb2.PRICE_ORIGIN_CONFIGURED_RATE,
}
_ENFORCEMENT = {Enforcement.SOFT: budget_pb2.BUDGET_ENFORCEMENT_SOFT, Enforcement.HARD: budget_pb2.BUDGET_ENFORCEMENT_HARD}
_ENFORCEMENT_IN = {v: k for k, v in _ENFORCEMENT.items()}
_OBJECTIVE_IN = {cost_service_pb2.OBJECTIVE_CHEAPEST: Objective.CHEAPEST, cost_service_pb2.OBJECTIVE_FASTEST: Objective.FASTEST}
_OUTCOME = {
    Outcome.REFRESHED: cost_service_pb2.REFRESH_OUTCOME_REFRESHED,
    Outcome.KEPT_LAST_GOOD: cost_service_pb2.REFRESH_OUTCOME_KEPT_LAST_GOOD,
    Outcome.NO_PRICE_API: cost_service_pb2.REFRESH_OUTCOME_NO_PRICE_API,
}

# ------------------------------------------------------------------------------------------------------ conversions


def timestamp_ns(msg: Any, name: str) -> int:
    """A required Timestamp field as nanoseconds since the epoch; InvalidArgument when unset or out of range."""
    if not msg.HasField(name):
        raise InvalidArgument.field(name, "required", reason="MISSING_TIME")
    return checked_timestamp_ns(getattr(msg, name), name)


def _offer_pb(offer: Offer) -> offer_pb2.Offer:
    msg = offer_pb2.Offer(
        offer_id=offer.offer_id,
        provider=offer.provider,
        instance_type=offer.instance_type,
        region=offer.region,
        gpu_name=offer.gpu_name,
        gpu_count=offer.gpu_count,
        gpu_memory_gib=offer.gpu_memory_gib,
        vcpus=offer.vcpus,
        memory_gib=offer.memory_gib,
        spot=offer.spot,
        price_usd_per_hour=offer.price_usd_per_hour,
        storage_price_usd_per_gb_hour=offer.storage_price_usd_per_gb_hour or 0.0,
        egress_price_usd_per_gb=offer.egress_price_usd_per_gb or 0.0,
        billing_granularity=_BILLING[offer.billing],
        availability=_AVAILABILITY[offer.availability],
        price_origin=_ORIGIN[offer.origin],
        price_source=offer.source,
    )
    if offer.observed_at is not None:
        msg.price_observed_at.CopyFrom(timestamp_from_datetime(offer.observed_at))
    return msg


def _breakdown_pb(b: Breakdown) -> offer_pb2.CostBreakdown:
    return offer_pb2.CostBreakdown(
        runtime=duration_from_ns(b.runtime_ns),
        billed_duration=duration_from_ns(b.billed_ns),
        compute_usd=b.compute_usd,
        storage_usd=b.storage_usd,
        network_usd=b.network_usd,
        total_usd=b.total_usd,
    )


def _budget_pb(b: Budget) -> budget_pb2.Budget:
    return budget_pb2.Budget(
        budget_id=b.budget_id,
        scope=b.scope,
        display_name=b.display_name,
        limit_usd=b.limit_usd,
        alert_thresholds_percent=b.thresholds,
        enforcement=_ENFORCEMENT[b.enforcement],
        spent_usd=b.spent_usd,
        crossed_thresholds_percent=b.crossed,
        create_time=timestamp_from_ns(b.create_ns),
        update_time=timestamp_from_ns(b.update_ns),
    )


def _alert_pb(a: Alert) -> budget_pb2.BudgetAlert:
    return budget_pb2.BudgetAlert(
        budget_id=a.budget_id,
        scope=a.scope,
        threshold_percent=a.threshold,
        spent_usd=a.spent_usd,
        limit_usd=a.limit_usd,
        enforcement=_ENFORCEMENT[a.enforcement],
        job_id=a.job_id,
        time=timestamp_from_ns(a.time_ns),
    )


def _amount(value: float, field: str, maximum: float) -> float:
    return limits.amount(value, field, maximum)


def _page_token(token: str, field: str = "page_token") -> str:
    return limits.text(token, field, limits.MAX_PAGE_TOKEN)


class CostServicer(cost_service_pb2_grpc.CostServiceServicer):
    """Translates CostService calls to the catalog, estimator, comparison, refresher and budget store."""

    def __init__(
        self, book: PriceBook, store: BudgetStore, hub: AlertHub, refresher: Refresher, clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self.book = book
        self.store = store
        self.hub = hub
        self.refresher = refresher
        self.clock_ns = clock_ns
        self._offer_cache: dict[str, tuple[Offer, offer_pb2.Offer]] = {}

    def offer_pb(self, offer: Offer) -> offer_pb2.Offer:
        """The Offer message of an offer, built once per offer version."""
        cached = self._offer_cache.get(offer.offer_id)
        if cached is None or cached[0] is not offer:
            cached = self._offer_cache[offer.offer_id] = (offer, _offer_pb(offer))
        return cached[1]

    async def ListOffers(
        self, request: cost_service_pb2.ListOffersRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.ListOffersResponse:
        """Catalog offers matching the filters, cheapest first, one page."""
        size = paging.page_size(request.page_size)
        _page_token(request.page_token)
        max_price = None
        if request.HasField("max_price_usd_per_hour"):
            max_price = _amount(request.max_price_usd_per_hour, "max_price_usd_per_hour", limits.MAX_PRICE_USD_PER_HOUR)
        flt = OfferFilter(
            gpu_names=limits.names(request.gpu_names, "gpu_names"),
            min_gpu_memory_gib=_amount(request.min_gpu_memory_gib, "min_gpu_memory_gib", limits.MAX_MEMORY_GIB),
            gpu_count=request.gpu_count if request.HasField("gpu_count") else None,
            providers=limits.names(request.providers, "providers"),
            spot_allowed=request.spot_allowed,
            max_price_usd_per_hour=max_price,
            exclude_unavailable=request.exclude_unavailable,
        )
        key_msg = cost_service_pb2.ListOffersRequest()
        key_msg.CopyFrom(request)
        key_msg.ClearField("page_size")
        key_msg.ClearField("page_token")
        key = paging.filter_key(key_msg.SerializeToString(deterministic=True))
        offset = paging.decode_token(request.page_token, key)
        matching = self.book.catalog.select(flt)
        page = matching[offset : offset + size]
        more = offset + size < len(matching)
        return cost_service_pb2.ListOffersResponse(
            offers=[self.offer_pb(o) for o in page],
            next_page_token=paging.encode_token(offset + size, key) if more else "",
        )

    async def EstimateCost(
        self, request: cost_service_pb2.EstimateCostRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.EstimateCostResponse:
        """Cost of one offer for a duration or a range, with storage, egress and assumptions."""
        limits.text(request.offer_id, "offer_id", limits.MAX_OFFER_ID)
        which = request.WhichOneof("runtime")
        if which == "duration":
            low = high = duration_ns(request.duration, "duration")
        elif which == "duration_range":
            low = duration_ns(request.duration_range.low, "duration_range.low")
            high = duration_ns(request.duration_range.high, "duration_range.high")
            if low > high:
                raise InvalidArgument.field(
                    "duration_range.low", "must not be larger than duration_range.high", reason="BAD_DURATION_RANGE"
                )
        else:
            raise InvalidArgument.field("duration", "required: set duration or duration_range", reason="MISSING_RUNTIME")
        storage = _amount(request.storage_gb_hours, "storage_gb_hours", limits.MAX_QUANTITY_GB)
        egress = _amount(request.egress_gb, "egress_gb", limits.MAX_QUANTITY_GB)
        offer = self.book.catalog.get(request.offer_id)
        result = estimate(offer, low, high, storage, egress)
        low_pb = _breakdown_pb(result.low)
        return cost_service_pb2.EstimateCostResponse(
            offer=self.offer_pb(offer),
            low=low_pb,
            high=low_pb if result.high is result.low else _breakdown_pb(result.high),
            assumptions=result.assumptions,
        )

    async def CompareProviders(
        self, request: cost_service_pb2.CompareProvidersRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.CompareProvidersResponse:
        """Every feasible offer ranked under the objective, with the recommendation and its reason."""
        objective = _OBJECTIVE_IN.get(request.objective)
        if objective is None:
            raise InvalidArgument.field("objective", "must be OBJECTIVE_CHEAPEST or OBJECTIVE_FASTEST", reason="BAD_OBJECTIVE")
        runtime = duration_ns(request.duration, "duration") if request.HasField("duration") else NS_PER_HOUR
        r = request.requirements
        req = Requirements(
            gpu_names=limits.names(r.gpu_names, "requirements.gpu_names"),
            gpu_count=r.gpu_count,
            min_gpu_memory_gib=_amount(r.min_gpu_memory_gib, "requirements.min_gpu_memory_gib", limits.MAX_MEMORY_GIB),
            min_vcpus=r.min_vcpus,
            min_memory_gib=_amount(r.min_memory_gib, "requirements.min_memory_gib", limits.MAX_MEMORY_GIB),
        )
        max_cost = _amount(request.max_cost_usd, "max_cost_usd", limits.MAX_USD) if request.HasField("max_cost_usd") else None
        result = compare(
            self.book.catalog,
            req,
            runtime,
            objective=objective,
            reference_gpu=limits.text(request.reference_gpu_name, "reference_gpu_name", limits.MAX_NAME),
            providers=limits.names(request.providers, "providers"),
            spot_allowed=request.spot_allowed,
            max_cost_usd=max_cost,
            storage_gb_hours=_amount(request.storage_gb_hours, "storage_gb_hours", limits.MAX_QUANTITY_GB),
            egress_gb=_amount(request.egress_gb, "egress_gb", limits.MAX_QUANTITY_GB),
        )
        return cost_service_pb2.CompareProvidersResponse(
            offers=[
                cost_service_pb2.RankedOffer(
                    rank=x.rank, offer=self.offer_pb(x.offer), relative_speed=x.relative_speed, cost=_breakdown_pb(x.cost)
                )
                for x in result.ranked
            ],
            recommended_offer_id=result.recommended_offer_id,
            recommendation_reason=result.reason,
            assumptions=result.assumptions,
        )

    async def RefreshPrices(
        self, request: cost_service_pb2.RefreshPricesRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.RefreshPricesResponse:
        """Pull live prices from providers with a price API; failures keep the last good prices."""
        catalog = self.book.catalog
        providers = catalog.check_providers(limits.names(request.providers, "providers"), "providers") or set(catalog.providers)
        results = await self.refresher.refresh(sorted(providers))
        out = []
        for r in results:
            msg = cost_service_pb2.ProviderRefreshResult(
                provider=r.provider,
                outcome=_OUTCOME[r.outcome],
                offers_updated=r.offers_updated,
                user_edited_rows_skipped=r.user_edited_rows_skipped,
                error=r.error,
            )
            if r.prices_observed_at is not None:
                msg.prices_observed_at.CopyFrom(timestamp_from_datetime(r.prices_observed_at))
            out.append(msg)
        return cost_service_pb2.RefreshPricesResponse(results=out)

    async def CreateBudget(
        self, request: cost_service_pb2.CreateBudgetRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.CreateBudgetResponse:
        """Validate and store a budget (idempotent on request_id)."""
        if not request.HasField("budget"):
            raise InvalidArgument.field("budget", "required", reason="MISSING_BUDGET")
        b = request.budget
        enforcement = _ENFORCEMENT_IN.get(b.enforcement)
        if enforcement is None:
            raise InvalidArgument.field(
                "budget.enforcement", "must be BUDGET_ENFORCEMENT_SOFT or BUDGET_ENFORCEMENT_HARD", reason="BAD_ENFORCEMENT"
            )
        budget = self.store.create_budget(
            scope=b.scope,
            display_name=b.display_name,
            limit_usd=b.limit_usd,
            thresholds=list(b.alert_thresholds_percent),
            enforcement=enforcement,
            request_id=request.request_id,
            now_ns=self.clock_ns(),
        )
        return cost_service_pb2.CreateBudgetResponse(budget=_budget_pb(budget))

    async def GetBudget(
        self, request: cost_service_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.GetBudgetResponse:
        """One budget with its spend."""
        return cost_service_pb2.GetBudgetResponse(budget=_budget_pb(self.store.get_budget(request.budget_id)))

    async def ListBudgets(
        self, request: cost_service_pb2.ListBudgetsRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.ListBudgetsResponse:
        """Budgets oldest first, optionally of one scope, one page."""
        size = paging.page_size(request.page_size)
        _page_token(request.page_token)
        check_scope(request.scope, "scope", allow_empty=True)
        key = paging.filter_key(request.scope.encode())
        offset = paging.decode_token(request.page_token, key)
        budgets, more = self.store.list_budgets(request.scope, offset, size)
        return cost_service_pb2.ListBudgetsResponse(
            budgets=[_budget_pb(b) for b in budgets],
            next_page_token=paging.encode_token(offset + size, key) if more else "",
        )

    async def RecordUsage(
        self, request: cost_service_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.RecordUsageResponse:
        """Charge one interval of a job to its scope's and the global budgets; idempotent per job and interval."""
        limits.text(request.job_id, "job_id", limits.MAX_JOB_ID, required=True)
        limits.text(request.offer_id, "offer_id", limits.MAX_OFFER_ID)
        check_scope(request.scope, "scope", allow_empty=True)
        start = timestamp_ns(request, "start_time")
        end = timestamp_ns(request, "end_time")
        if end < start:
            raise InvalidArgument.field("end_time", "must not be before start_time", reason="END_BEFORE_START")
        if request.HasField("price_usd_per_hour"):
            price = _amount(request.price_usd_per_hour, "price_usd_per_hour", limits.MAX_PRICE_USD_PER_HOUR)
            offer_id = request.offer_id
            self.book.catalog.get(offer_id)  # the offer must still be known (current or retired)
        else:
            offer = self.book.catalog.get(request.offer_id)
            offer_id, price = offer.offer_id, offer.price_usd_per_hour
        result = self.store.record_usage(
            job_id=request.job_id,
            offer_id=offer_id,
            scope=request.scope,
            start_ns=start,
            end_ns=end,
            price_usd_per_hour=price,
            now_ns=self.clock_ns(),
        )
        self.hub.publish(result.alerts)
        u = result.usage
        return cost_service_pb2.RecordUsageResponse(
            usage=budget_pb2.UsageRecord(
                job_id=u.job_id,
                offer_id=u.offer_id,
                scope=u.scope,
                start_time=timestamp_from_ns(u.start_ns),
                end_time=timestamp_from_ns(u.end_ns),
                price_usd_per_hour=u.price_usd_per_hour,
                cost_usd=u.cost_usd,
                record_time=timestamp_from_ns(u.record_ns),
            ),
            already_recorded=result.already_recorded,
            job_spent_usd=result.job_spent_usd,
            budgets=[_budget_pb(b) for b in result.budgets],
        )

    async def WatchBudget(
        self, request: cost_service_pb2.WatchBudgetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cost_service_pb2.WatchBudgetResponse]:
        """The budget's state, then one message per threshold crossing until the client cancels."""
        if not request.budget_id:
            raise InvalidArgument.field("budget_id", "required", reason="MISSING_BUDGET_ID")
        limits.text(request.budget_id, "budget_id", limits.MAX_BUDGET_ID)
        with self.hub.watch(request.budget_id) as queue:  # subscribe first so no crossing falls between read and watch
            budget = self.store.get_budget(request.budget_id)
            yield cost_service_pb2.WatchBudgetResponse(budget=_budget_pb(budget))
            while True:
                item = await queue.get()
                if item is AlertHub.CLOSED:
                    raise Unavailable("the cost service is shutting down; watch again", reason="SHUTTING_DOWN")
                alert, after = item
                if alert.threshold in budget.crossed:
                    continue  # already reported by the first message
                yield cost_service_pb2.WatchBudgetResponse(budget=_budget_pb(after), alert=_alert_pb(alert))

    async def CheckAdmission(
        self, request: cost_service_pb2.CheckAdmissionRequest, context: grpc.aio.ServicerContext
    ) -> cost_service_pb2.CheckAdmissionResponse:
        """Budget projections for a job; FAILED_PRECONDITION when a hard budget would be passed."""
        checks = self.store.check_admission(request.scope, request.estimated_cost_usd, request.job_id)
        return cost_service_pb2.CheckAdmissionResponse(
            checks=[
                budget_pb2.BudgetCheck(
                    budget_id=c.budget.budget_id,
                    enforcement=_ENFORCEMENT[c.budget.enforcement],
                    limit_usd=c.budget.limit_usd,
                    spent_usd=c.budget.spent_usd,
                    projected_usd=c.projected_usd,
                    would_exceed=c.would_exceed,
                )
                for c in checks
            ]
        )
