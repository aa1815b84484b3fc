"""The cost service's client: `CostServicePricing`, the `OfferSource` that asks crucible.cost.v1.CostService over gRPC
for offers, estimates, admission and usage (address, token and TLS from the scheduler's own config).

The API edge towards the cost service: its messages become the domain `Offer`s of `offers.py` here (`convert.offer`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from crucible.api.cost.v1 import budget_pb2, cost_service_pb2, cost_service_pb2_grpc, offer_pb2
from crucible.clients.channel import ChannelConfig, open_channel
from crucible.runtime.convert import duration_from_seconds, timestamp_from_unix
from crucible.runtime.errors import FailedPrecondition, NotFound, Unavailable, parse_status_details
from crucible.scheduler import convert
from crucible.scheduler.domain.spec import JobSpec, ProviderPolicy
from crucible.scheduler.engine.jobspec import expected_seconds
from crucible.scheduler.engine.offers import (
    REGION_REQUIRED,
    UNKNOWN_COST_NOT_IN_CATALOG,
    Candidate,
    UsageResult,
    offline_feasible,
    offline_offer,
    rank_offers,
)

log = logging.getLogger(__name__)


class CostServicePricing:
    """The cost service over one long-lived channel: CompareProviders/ListOffers, EstimateCost, CheckAdmission, RecordUsage."""

    known = True

    def __init__(self, channel: ChannelConfig, *, local_gpus: int = 0) -> None:
        """`channel`: the cost service's address, deadline, bearer token and TLS, from the scheduler's config
        (`cost_channel_config()`: --cost-address, --cost-timeout-s, --cost-token-file, --cost-tls, --cost-ca-file)."""
        self.address = ", ".join(channel.addresses)
        self.timeout_s = channel.timeout_s
        self.local_gpus = local_gpus
        self._channel = open_channel(channel, "crucible.cost.v1.CostService")
        self._stub = cost_service_pb2_grpc.CostServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    def _unavailable(self, what: str, err: grpc.aio.AioRpcError) -> Unavailable:
        return Unavailable(
            f"cost service at {self.address} failed {what}: {err.code().name}: {err.details()}", reason="COST_SERVICE_UNAVAILABLE"
        )

    async def candidates(self, spec: JobSpec, usable: Sequence[str], default_max_s: float) -> list[Candidate]:
        """Feasible catalog offers of usable providers ranked by the cost service, plus unpriced local/dryrun offers."""
        objective = (
            cost_service_pb2.OBJECTIVE_FASTEST
            if spec.provider_policy == ProviderPolicy.FASTEST
            else cost_service_pb2.OBJECTIVE_CHEAPEST
        )
        r = spec.resources
        request = cost_service_pb2.CompareProvidersRequest(
            requirements=offer_pb2.ResourceRequirements(
                gpu_names=r.gpu_names,
                gpu_count=r.gpu_count,
                min_gpu_memory_gib=r.min_gpu_memory_gib,
                min_vcpus=r.min_vcpus,
                min_memory_gib=r.min_memory_gib,
            ),
            duration=duration_from_seconds(expected_seconds(spec)),
            spot_allowed=spec.spot_allowed,
            objective=objective,
        )
        if spec.max_cost_usd is not None:
            request.max_cost_usd = spec.max_cost_usd
        try:
            reply = await self._stub.CompareProviders(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:  # an unknown GPU name in the requirements
                raise NotFound(f"spec.resources: {err.details()}", reason="UNKNOWN_GPU") from None
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise FailedPrecondition(
                    f"the cost service rejected the requirements: {err.details()}", reason="NO_FEASIBLE_OFFER"
                ) from None
            raise self._unavailable("CompareProviders", err) from None
        # Lambda and Paperspace launch only into a named region: a catalog row without one cannot be launched.
        out = [
            Candidate(convert.offer(r.offer), r.cost.total_usd, r.relative_speed or 1.0)
            for r in reply.offers
            if r.offer.provider in usable and (r.offer.region or r.offer.provider not in REGION_REQUIRED)
        ]
        priced_providers = {r.offer.provider for r in reply.offers}
        for p in ("local", "dryrun"):
            if p in usable and p not in priced_providers and offline_feasible(p, spec, self.local_gpus):
                out.append(Candidate(offline_offer(p, spec.resources.gpu_count, UNKNOWN_COST_NOT_IN_CATALOG), None))
        return rank_offers(out, spec)

    async def estimate(self, candidate: Candidate, seconds: float) -> tuple[float | None, list[str]]:
        """EstimateCost of the chosen offer: (total, assumptions)."""
        if not candidate.priced:
            return None, [candidate.offer.price_source]
        try:
            reply = await self._stub.EstimateCost(
                cost_service_pb2.EstimateCostRequest(offer_id=candidate.offer.offer_id, duration=duration_from_seconds(seconds)),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise self._unavailable("EstimateCost", err) from None
        return reply.high.total_usd, list(reply.assumptions)

    async def admit(self, scope: str, estimated_usd: float | None, job_id: str) -> None:
        """CheckAdmission; a refusing hard budget becomes FAILED_PRECONDITION BUDGET_EXCEEDED with its metadata."""
        try:
            await self._stub.CheckAdmission(
                cost_service_pb2.CheckAdmissionRequest(scope=scope, estimated_cost_usd=estimated_usd or 0.0, job_id=job_id),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                info, _ = parse_status_details(err)
                metadata = dict(info.metadata) if info is not None else {}
                raise FailedPrecondition(
                    f"admission refused by a hard budget: {err.details()}", reason="BUDGET_EXCEEDED", metadata=metadata
                ) from None
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise FailedPrecondition(
                    f"budget scope refused by the cost service: {err.details()}", reason="INVALID_BUDGET_SCOPE"
                ) from None
            raise self._unavailable("CheckAdmission", err) from None

    async def record(self, job_id: str, offer_id: str, scope: str, start_s: float, end_s: float) -> UsageResult | None:
        """RecordUsage of [start, end); returns the job's spend and whether a hard budget is now exhausted."""
        try:
            reply = await self._stub.RecordUsage(
                cost_service_pb2.RecordUsageRequest(
                    job_id=job_id,
                    offer_id=offer_id,
                    scope=scope,
                    start_time=timestamp_from_unix(start_s),
                    end_time=timestamp_from_unix(end_s),
                ),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            log.warning("RecordUsage failed for %s: %s %s", job_id, err.code().name, err.details())
            return None
        exhausted = ""
        for b in reply.budgets:
            if b.enforcement == budget_pb2.BUDGET_ENFORCEMENT_HARD and b.spent_usd >= b.limit_usd:
                exhausted = f"hard budget {b.budget_id} ({b.scope}) limit ${b.limit_usd:.2f} reached"
                break
        return UsageResult(reply.job_spent_usd, exhausted)
