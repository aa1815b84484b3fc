"""Offer ranking by the job's provider policy (engine/offers.py, on domain offers and specs)."""

from __future__ import annotations

import dataclasses

from crucible.scheduler.domain.job import Offer
from crucible.scheduler.domain.spec import JobSpec, ProviderPolicy
from crucible.scheduler.engine.offers import Candidate, rank_offers


def _offer(provider: str, price: float, region: str = "r", spot: bool = False) -> Offer:
    return Offer(
        offer_id=f"{provider}/x/{region}/{'spot' if spot else 'on-demand'}",
        provider=provider,
        region=region,
        price_usd_per_hour=price,
        spot=spot,
        price_source="test catalog",
    )


def test_rank_offers_by_policy() -> None:
    cands = [
        Candidate(_offer("lambda", 2.0), 2.0, 1.0),
        Candidate(_offer("runpod", 1.0), 1.0, 0.5),
        Candidate(_offer("modal", 3.0), 3.0, 2.0),
        Candidate(_offer("runpod", 0.5, spot=True), 0.5, 0.5),
    ]
    spec = JobSpec(provider_policy=ProviderPolicy.CHEAPEST)
    assert [c.provider for c in rank_offers(cands, spec)] == ["runpod", "lambda", "modal"]  # spot excluded
    spec = dataclasses.replace(spec, spot_allowed=True)
    assert rank_offers(cands, spec)[0].offer.spot
    spec = JobSpec(provider_policy=ProviderPolicy.FASTEST)
    assert rank_offers(cands, spec)[0].provider == "modal"
    spec = JobSpec(provider_policy=ProviderPolicy.ORDERED, providers=("modal", "lambda"))
    assert [c.provider for c in rank_offers(cands, spec)] == ["modal", "lambda"]
    spec = JobSpec(provider_policy=ProviderPolicy.CHEAPEST, max_price_usd_per_hour=1.5)
    assert [c.provider for c in rank_offers(cands, spec)] == ["runpod"]
