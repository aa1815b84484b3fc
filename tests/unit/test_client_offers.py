"""Unit tests of crucible.clients.offers.group_offers: one row per provider x GPU type, regions kept for expansion.

Offers as protobuf messages (what the CLI has) and as JSON-like dicts (what the console has after conversion).
"""

from __future__ import annotations

from crucible.api.cost.v1 import cost_service_pb2 as pb
from crucible.api.cost.v1 import offer_pb2
from crucible.clients.offers import group_offers


def _ranked(rank: int, provider: str, gpu: str, region: str, price: float, *, spot: bool = False) -> pb.RankedOffer:
    offer = offer_pb2.Offer(
        offer_id=f"{provider}/{gpu.lower()}/{region}/{'spot' if spot else 'on-demand'}",
        provider=provider,
        gpu_name=gpu,
        gpu_count=1,
        region=region,
        price_usd_per_hour=price,
        spot=spot,
    )
    return pb.RankedOffer(rank=rank, offer=offer)


def test_same_gpu_in_many_regions_is_one_row_with_the_cheapest_region_first() -> None:
    ranked = [
        _ranked(1, "runpod", "A100-80GB", "EU-RO-1", 1.19),
        _ranked(2, "runpod", "A100-80GB", "US-TX-3", 1.19),
        _ranked(3, "lambda", "A100-80GB", "us-east-1", 1.29),
        _ranked(4, "runpod", "A100-80GB", "CA-MTL-1", 1.39),
        _ranked(5, "lambda", "A100-40GB", "us-west-1", 1.10 + 0.4),
        _ranked(6, "runpod", "A100-80GB", "US-TX-3", 0.79, spot=True),
    ]
    groups = group_offers(ranked)
    assert [(g.provider, g.gpu_name, g.spot) for g in groups] == [
        ("runpod", "A100-80GB", False),
        ("lambda", "A100-80GB", False),
        ("lambda", "A100-40GB", False),
        ("runpod", "A100-80GB", True),
    ]
    first = groups[0]
    assert first.best.offer.region == "EU-RO-1"
    assert first.regions == ("EU-RO-1", "US-TX-3") and first.regions_at_price == 2
    assert [m.offer.region for m in first.members] == ["EU-RO-1", "US-TX-3", "CA-MTL-1"]  # all kept for expansion
    assert first.region_count == 3
    assert first.price_usd_per_hour == 1.19
    assert [g.recommended for g in groups] == [True, False, False, False]  # rank 1 by default


def test_recommended_follows_the_given_id_and_empty_means_none() -> None:
    ranked = [_ranked(1, "runpod", "A10", "r1", 0.5), _ranked(2, "lambda", "A10", "us-east-1", 0.75)]
    assert [g.recommended for g in group_offers(ranked, "lambda/a10/us-east-1/on-demand")] == [False, True]
    assert [g.recommended for g in group_offers(ranked, "")] == [False, False]
    assert group_offers([]) == []


def test_plain_dicts_and_bare_offers_group_the_same_way() -> None:
    offers = [
        {"offer_id": "m/a", "provider": "modal", "gpu_name": "H100", "gpu_count": 1, "region": "", "price_usd_per_hour": 3.9},
        {"offer_id": "m/b", "provider": "modal", "gpu_name": "H100", "gpu_count": 2, "region": "", "price_usd_per_hour": 7.8},
        {"offer_id": "m/c", "provider": "modal", "gpu_name": "H100", "gpu_count": 1, "region": "", "price_usd_per_hour": 3.9},
    ]
    groups = group_offers(offers)
    assert [(g.gpu_count, len(g.members)) for g in groups] == [(1, 2), (2, 1)]
    assert groups[0].regions == () and groups[0].regions_at_price == 1  # no regions: counted as one place
