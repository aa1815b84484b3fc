"""Offers, estimates, admission and usage: the scheduler's side of the cost service, or a local fallback without one.

`CostServicePricing` talks to crucible.cost.v1.CostService over gRPC (address, token and TLS from the scheduler's own
config); `UnpricedOfferSource` serves local and dryrun offers with cost unknown when no cost address is configured.
Both are `OfferSource`s. `rank_offers` (pure) applies the job's provider policy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import grpc

from crucible.api.cost.v1 import budget_pb2, cost_service_pb2, cost_service_pb2_grpc, offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.clients.channel import ChannelConfig, open_channel
from crucible.runtime.convert import duration_from_seconds, timestamp_from_unix
from crucible.runtime.errors import FailedPrecondition, NotFound, Unavailable, parse_status_details
from crucible.scheduler.engine.jobspec import expected_seconds

log = logging.getLogger(__name__)

ProviderPolicy = job_pb2.ProviderPolicy
UNKNOWN_COST_NO_SERVICE = "unknown: no cost service configured"
UNKNOWN_COST_NOT_IN_CATALOG = "unknown: the cost catalog has no offer for this provider"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An offer the job may launch on, with its estimated total cost (None when unknown)."""

    offer: offer_pb2.Offer
    estimated_usd: float | None
    relative_speed: float = 1.0

    @property
    def provider(self) -> str:
        """The offer's provider."""
        return self.offer.provider

    @property
    def priced(self) -> bool:
        """True when the cost service knows the offer (usage can be recorded)."""
        return self.estimated_usd is not None


@dataclasses.dataclass(frozen=True)
class UsageResult:
    """What RecordUsage reported: the job's total and any exhausted hard budget."""

    job_spent_usd: float
    hard_budget_exhausted: str = ""  # "budget bud-1 (project:x) limit $5.00 reached" or ""


class OfferSource(Protocol):
    """Where the engine gets offers, estimates, admission and usage records (the cost service, or none)."""

    @property
    def known(self) -> bool:
        """True when costs come from a cost service (usage is recorded), False when they are unknown."""
        ...

    async def candidates(self, spec: job_pb2.JobSpec, usable: Sequence[str], default_max_s: float) -> list[Candidate]:
        """Offers the job may launch on, in launch order."""
        ...

    async def estimate(self, candidate: Candidate, seconds: float) -> tuple[float | None, list[str]]:
        """(estimated total in USD or None when unknown, assumptions)."""
        ...

    async def admit(self, scope: str, estimated_usd: float | None, job_id: str) -> None:
        """Raise FailedPrecondition when a hard budget refuses the job."""
        ...

    async def record(self, job_id: str, offer_id: str, scope: str, start_s: float, end_s: float) -> UsageResult | None:
        """Record usage of [start, end); None when nothing was recorded."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def local_gpu_count() -> int:
    """GPUs the NVIDIA driver exposes on this host (0 without the driver)."""
    path = Path("/proc/driver/nvidia/gpus")
    return len(list(path.iterdir())) if path.is_dir() else 0


def offline_offer(provider: str, gpu_count: int, note: str) -> offer_pb2.Offer:
    """An offer for `local` / `dryrun` that the cost catalog does not price."""
    host = socket.gethostname() if provider == "local" else "dryrun"
    return offer_pb2.Offer(
        offer_id=f"{provider}/{host}//on-demand",
        provider=provider,
        instance_type=host,
        gpu_count=gpu_count,
        vcpus=os.cpu_count() or 0,
        availability=offer_pb2.AVAILABILITY_AVAILABLE,
        price_source=note,
    )


def offline_feasible(provider: str, spec: job_pb2.JobSpec, local_gpus: int) -> bool:
    """Whether `local` can meet the GPU count (dryrun pretends it always can)."""
    return provider == "dryrun" or spec.resources.gpu_count <= local_gpus


def rank_offers(candidates: Sequence[Candidate], spec: job_pb2.JobSpec) -> list[Candidate]:
    """Apply the provider policy: EXPLICIT/ORDERED keep the listed providers in order (cheapest first within one);
    CHEAPEST sorts by estimated total, unknown costs last; FASTEST by relative speed, then total. Price caps filter."""
    out = [c for c in candidates if not spec.providers or c.provider in spec.providers]
    if spec.HasField("max_price_usd_per_hour"):
        out = [c for c in out if not c.priced or c.offer.price_usd_per_hour <= spec.max_price_usd_per_hour]
    if spec.HasField("max_cost_usd"):
        out = [c for c in out if c.estimated_usd is None or c.estimated_usd <= spec.max_cost_usd]
    if not spec.spot_allowed:
        out = [c for c in out if not c.offer.spot]

    def cost(c: Candidate) -> float:
        return c.estimated_usd if c.estimated_usd is not None else math.inf

    if spec.provider_policy == ProviderPolicy.PROVIDER_POLICY_FASTEST:
        return sorted(out, key=lambda c: (-c.relative_speed, cost(c), c.offer.offer_id))
    if spec.provider_policy in (ProviderPolicy.PROVIDER_POLICY_EXPLICIT, ProviderPolicy.PROVIDER_POLICY_ORDERED):
        order = {name: i for i, name in enumerate(spec.providers)}
        return sorted(out, key=lambda c: (order.get(c.provider, len(order)), cost(c), c.offer.offer_id))
    return sorted(out, key=lambda c: (cost(c), c.offer.offer_id))


#: Providers whose launch API requires a region (Lambda: region_name, Paperspace: region).
REGION_REQUIRED = frozenset({"lambda", "paperspace"})


class UnpricedOfferSource:
    """No cost service: `local` and `dryrun` offers with cost unknown; every other provider is infeasible."""

    known = False

    def __init__(self, local_gpus: int) -> None:
        self.local_gpus = local_gpus

    async def candidates(self, spec: job_pb2.JobSpec, usable: Sequence[str], default_max_s: float) -> list[Candidate]:
        """Offline offers for the usable offline providers."""
        out = [
            Candidate(offline_offer(p, spec.resources.gpu_count, UNKNOWN_COST_NO_SERVICE), None)
            for p in ("local", "dryrun")
            if p in usable and offline_feasible(p, spec, self.local_gpus)
        ]
        return rank_offers(out, spec)

    async def estimate(self, candidate: Candidate, seconds: float) -> tuple[float | None, list[str]]:
        """Unknown."""
        return None, [UNKNOWN_COST_NO_SERVICE]

    async def admit(self, scope: str, estimated_usd: float | None, job_id: str) -> None:
        """No budgets without a cost service."""

    async def record(self, job_id: str, offer_id: str, scope: str, start_s: float, end_s: float) -> UsageResult | None:
        """Nothing to record to."""
        return None

    async def close(self) -> None:
        """Nothing to close."""


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

    async def candidates(self, spec: job_pb2.JobSpec, usable: Sequence[str], default_max_s: float) -> list[Candidate]:
        """Feasible catalog offers of usable providers ranked by the cost service, plus unpriced local/dryrun offers."""
        objective = (
            cost_service_pb2.OBJECTIVE_FASTEST
            if spec.provider_policy == ProviderPolicy.PROVIDER_POLICY_FASTEST
            else cost_service_pb2.OBJECTIVE_CHEAPEST
        )
        request = cost_service_pb2.CompareProvidersRequest(
            requirements=spec.resources,
            duration=duration_from_seconds(expected_seconds(spec)),
            spot_allowed=spec.spot_allowed,
            objective=objective,
        )
        if spec.HasField("max_cost_usd"):
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
            Candidate(r.offer, r.cost.total_usd, r.relative_speed or 1.0)
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
