"""Offer ranking by the job's provider policy (engine/pricing.py)."""

from __future__ import annotations

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.scheduler.engine.pricing import Candidate, rank_offers


def _offer(provider: str, price: float, region: str = "r", spot: bool = False) -> offer_pb2.Offer:
    return offer_pb2.Offer(
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
    spec = job_pb2.JobSpec(provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST)
    assert [c.provider for c in rank_offers(cands, spec)] == ["runpod", "lambda", "modal"]  # spot excluded
    spec.spot_allowed = True
    assert rank_offers(cands, spec)[0].offer.spot
    spec = job_pb2.JobSpec(provider_policy=job_pb2.PROVIDER_POLICY_FASTEST)
    assert rank_offers(cands, spec)[0].provider == "modal"
    spec = job_pb2.JobSpec(provider_policy=job_pb2.PROVIDER_POLICY_ORDERED, providers=["modal", "lambda"])
    assert [c.provider for c in rank_offers(cands, spec)] == ["modal", "lambda"]
    spec = job_pb2.JobSpec(provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST, max_price_usd_per_hour=1.5)
    assert [c.provider for c in rank_offers(cands, spec)] == ["runpod"]
