"""Offers grouped the way people compare them: one row per provider x GPU type, cheapest region first.

Shared by `crucible cost compare` and the web console's Providers page; works on protobuf messages and SDK dataclasses.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Two prices closer than this (USD per hour) are "the same price" (catalog prices have at most 4 decimals).
_SAME_PRICE_USD = 1e-9


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a protobuf message, an SDK dataclass or a JSON dict, by its proto field name."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def offer_of(item: Any) -> Any:
    """The Offer inside a RankedOffer (compare), or the item itself when it already is an Offer (list offers)."""
    inner = _get(item, "offer")
    return item if inner is None else inner


@dataclasses.dataclass(frozen=True)
class OfferGroup:
    """The offers of one provider for one GPU type (and count, and spot or not), in the order they were given.

    `best` is the first of them (the cheapest, or the best under the comparison's objective); `regions` are the regions
    offering that same price; `members` keeps every offer of the group for an expanded, per-region view.
    """

    provider: str
    gpu_name: str
    gpu_count: int
    spot: bool
    best: Any
    regions: tuple[str, ...]
    members: tuple[Any, ...]
    recommended: bool

    @property
    def price_usd_per_hour(self) -> float:
        """Price per instance-hour of the best offer."""
        return float(_get(offer_of(self.best), "price_usd_per_hour", 0.0))

    @property
    def regions_at_price(self) -> int:
        """How many regions offer the best price (1 when the provider has no regions)."""
        return max(1, len(self.regions))

    @property
    def region_count(self) -> int:
        """How many distinct regions the group has at any price."""
        return len({_get(offer_of(m), "region", "") for m in self.members})


def group_offers(offers: Iterable[Any], recommended_offer_id: str | None = None) -> list[OfferGroup]:
    """Group offers (ranked best first, or an offer list cheapest first) into one row per provider x GPU type.

    A group keeps its first offer as `best`; groups come in the order of their best offer, so a ranking stays a ranking.
    The group holding `recommended_offer_id` is marked recommended; None means the first offer given (rank 1 of a
    comparison), "" means none is.
    """
    items = list(offers)
    if recommended_offer_id is None:
        recommended_offer_id = str(_get(offer_of(items[0]), "offer_id", "")) if items else ""
    keyed: dict[tuple[str, str, int, bool], list[Any]] = {}
    for item in items:
        o = offer_of(item)
        key = (
            str(_get(o, "provider", "")),
            str(_get(o, "gpu_name", "")),
            int(_get(o, "gpu_count", 0) or 0),
            bool(_get(o, "spot", False)),
        )
        keyed.setdefault(key, []).append(item)
    groups = []
    for (provider, gpu_name, gpu_count, spot), members in keyed.items():
        best = members[0]
        price = float(_get(offer_of(best), "price_usd_per_hour", 0.0))
        regions: list[str] = []
        for m in members:
            o = offer_of(m)
            region = str(_get(o, "region", ""))
            if abs(float(_get(o, "price_usd_per_hour", 0.0)) - price) <= _SAME_PRICE_USD and region and region not in regions:
                regions.append(region)
        ids = {str(_get(offer_of(m), "offer_id", "")) for m in members}
        groups.append(
            OfferGroup(
                provider=provider,
                gpu_name=gpu_name,
                gpu_count=gpu_count,
                spot=spot,
                best=best,
                regions=tuple(regions),
                members=tuple(members),
                recommended=bool(recommended_offer_id) and recommended_offer_id in ids,
            )
        )
    return groups


_URL = re.compile(r"(?:https?://)?(?:www\.)?([a-z0-9.-]+\.[a-z]{2,})(/[^\s(),;]*)?", re.IGNORECASE)


def short_source(source: str) -> str:
    """A price source in a few words: 'skypilot-catalog' for a SkyPilot catalog file, the site for a web page, the
    provider's API as 'provider API'; anything else cut at its first clause. The full text stays on the offer."""
    text = (source or "").strip()
    if not text:
        return "unknown"
    if text.lower().startswith("github.com/"):
        repo = text.split("/")[2] if text.count("/") >= 2 else text
        return repo.split("@", 1)[0]
    found = _URL.match(text)
    if found:
        return found.group(1).lower()
    first = re.split(r"[;(]", text, maxsplit=1)[0].strip().rstrip(",")
    if len(first) > 40:
        first = first.split(",", 1)[0].strip()
    return first if len(first) <= 40 else first[:39].rstrip() + "…"
