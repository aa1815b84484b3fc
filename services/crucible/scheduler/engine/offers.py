"""Offers a job may launch on, as plain values: `Candidate`, the `OfferSource` the engine asks, `rank_offers` (the
job's provider policy) and `UnpricedOfferSource` (local and dryrun with cost unknown, when no cost service is set).

The cost service's client, the other `OfferSource`, is `pricing.py` (the one engine module that speaks its protobuf).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from crucible.scheduler.domain.job import Offer
from crucible.scheduler.domain.spec import JobSpec, ProviderPolicy

#: `crucible.cost.v1.Availability.AVAILABILITY_AVAILABLE`: what an offline offer always is.
AVAILABILITY_AVAILABLE = 2
UNKNOWN_COST_NO_SERVICE = "unknown: no cost service configured"
UNKNOWN_COST_NOT_IN_CATALOG = "unknown: the cost catalog has no offer for this provider"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An offer the job may launch on, with its estimated total cost (None when unknown)."""

    offer: Offer
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

    async def candidates(self, spec: JobSpec, usable: Sequence[str], default_max_s: float) -> list[Candidate]:
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


def offline_offer(provider: str, gpu_count: int, note: str) -> Offer:
    """An offer for `local` / `dryrun` that the cost catalog does not price."""
    host = socket.gethostname() if provider == "local" else "dryrun"
    return Offer(
        offer_id=f"{provider}/{host}//on-demand",
        provider=provider,
        instance_type=host,
        gpu_count=gpu_count,
        vcpus=os.cpu_count() or 0,
        availability=AVAILABILITY_AVAILABLE,
        price_source=note,
    )


def offline_feasible(provider: str, spec: JobSpec, local_gpus: int) -> bool:
    """Whether `local` can meet the GPU count (dryrun pretends it always can)."""
    return provider == "dryrun" or spec.resources.gpu_count <= local_gpus


def rank_offers(candidates: Sequence[Candidate], spec: JobSpec) -> list[Candidate]:
    """Apply the provider policy: EXPLICIT/ORDERED keep the listed providers in order (cheapest first within one);
    CHEAPEST sorts by estimated total, unknown costs last; FASTEST by relative speed, then total. Price caps filter."""
    out = [c for c in candidates if not spec.providers or c.provider in spec.providers]
    max_price, max_cost = spec.max_price_usd_per_hour, spec.max_cost_usd
    if max_price is not None:
        out = [c for c in out if not c.priced or c.offer.price_usd_per_hour <= max_price]
    if max_cost is not None:
        out = [c for c in out if c.estimated_usd is None or c.estimated_usd <= max_cost]
    if not spec.spot_allowed:
        out = [c for c in out if not c.offer.spot]

    def cost(c: Candidate) -> float:
        return c.estimated_usd if c.estimated_usd is not None else math.inf

    if spec.provider_policy == ProviderPolicy.FASTEST:
        return sorted(out, key=lambda c: (-c.relative_speed, cost(c), c.offer.offer_id))
    if spec.provider_policy in (ProviderPolicy.EXPLICIT, ProviderPolicy.ORDERED):
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

    async def candidates(self, spec: JobSpec, usable: Sequence[str], default_max_s: float) -> list[Candidate]:
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
