"""Typed async client of crucible.cost.v1.CostService: offers, estimates, comparisons, budgets and usage.

Requests are built from keyword arguments; responses come back as plain dataclasses (see crucible.clients.plain).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from crucible.api.cost.v1 import cost_service_pb2 as pb
from crucible.api.cost.v1 import cost_service_pb2_grpc as pb_grpc
from crucible.clients.base import ServiceClient
from crucible.clients.plain import request, to_plain


class CostClient(ServiceClient["pb_grpc.CostServiceAsyncStub"]):  # the aio stub type (type-checking only)
    """Client of the cost service. Durations are seconds (floats); money is USD."""

    SERVICE = "crucible.cost.v1.CostService"
    STUB = pb_grpc.CostServiceStub

    async def _unary(self, method: str, req: Any, timeout: float | None) -> Any:
        return to_plain(await getattr(self.stub, method)(req, timeout=self.timeout(timeout)))

    async def list_offers(self, *, timeout: float | None = None, **filters: Any) -> Any:
        """Offers cheapest first; filters: gpu_names, min_gpu_memory_gib, gpu_count, providers, spot_allowed, ..."""
        return await self._unary("ListOffers", request(pb.ListOffersRequest, filters), timeout)

    async def estimate_cost(
        self,
        offer_id: str,
        *,
        hours: float | None = None,
        hours_range: tuple[float, float] | None = None,
        storage_gb_hours: float = 0.0,
        egress_gb: float = 0.0,
        timeout: float | None = None,
    ) -> Any:
        """Cost of running `offer_id` for `hours` (or a (low, high) range), plus storage and egress."""
        if (hours is None) == (hours_range is None):
            raise ValueError("give exactly one of hours or hours_range")
        fields: dict[str, Any] = {"offer_id": offer_id, "storage_gb_hours": storage_gb_hours, "egress_gb": egress_gb}
        if hours is not None:
            fields["duration"] = f"{hours * 3600:.3f}s"
        else:
            low, high = hours_range  # type: ignore[misc]
            fields["duration_range"] = {"low": f"{low * 3600:.3f}s", "high": f"{high * 3600:.3f}s"}
        return await self._unary("EstimateCost", request(pb.EstimateCostRequest, fields), timeout)

    async def compare_providers(self, *, timeout: float | None = None, **fields: Any) -> Any:
        """Ranked feasible offers for requirements and a duration (protobuf JSON field names, e.g. duration="3600s")."""
        return await self._unary("CompareProviders", request(pb.CompareProvidersRequest, fields), timeout)

    async def create_budget(self, *, timeout: float | None = None, request_id: str = "", **budget: Any) -> Any:
        """Create a budget (scope, limit_usd, alert_thresholds_percent, enforcement "BUDGET_ENFORCEMENT_HARD"...)."""
        req = request(pb.CreateBudgetRequest, {"budget": budget, "request_id": request_id})
        return (await self._unary("CreateBudget", req, timeout)).budget

    async def get_budget(self, budget_id: str, *, timeout: float | None = None) -> Any:
        return (await self._unary("GetBudget", pb.GetBudgetRequest(budget_id=budget_id), timeout)).budget

    async def list_budgets(
        self, *, scope: str = "", page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> tuple[list[Any], str]:
        """One page of budgets (oldest first) and the next page token ('' at the end), optionally of one scope."""
        reply = await self._unary(
            "ListBudgets", pb.ListBudgetsRequest(scope=scope, page_size=page_size, page_token=page_token), timeout
        )
        return list(reply.budgets), reply.next_page_token

    async def record_usage(self, *, timeout: float | None = None, **fields: Any) -> Any:
        """Record job usage (job_id, offer_id, scope, start_time, end_time as RFC 3339); idempotent per job+interval."""
        return await self._unary("RecordUsage", request(pb.RecordUsageRequest, fields), timeout)

    async def check_admission(self, *, timeout: float | None = None, **fields: Any) -> Any:
        """Would a job of this estimated cost fit the scope's budgets (FAILED_PRECONDITION when a hard one says no)."""
        return await self._unary("CheckAdmission", request(pb.CheckAdmissionRequest, fields), timeout)

    async def watch_budget(self, budget_id: str, *, timeout: float | None = None) -> AsyncIterator[Any]:
        """The budget's state, then one message per alert as spend crosses thresholds."""
        async for reply in self.stub.WatchBudget(pb.WatchBudgetRequest(budget_id=budget_id), timeout=timeout):
            yield to_plain(reply)
