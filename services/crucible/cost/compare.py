"""Provider comparison: every feasible offer for a set of requirements and a runtime, ranked, with a recommendation.

Runtimes are scaled by relative GPU throughput when a reference GPU is given; costs reuse `estimate.breakdown`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Sequence

from crucible.cost.catalog import Availability, Catalog, Offer, OfferFilter, Origin
from crucible.cost.estimate import Breakdown, breakdown, format_duration
from crucible.runtime.errors import InvalidArgument, NotFound


class Objective(enum.Enum):
    """What the recommendation optimises."""

    CHEAPEST = "cheapest"
    FASTEST = "fastest"


@dataclasses.dataclass(frozen=True)
class Requirements:
    """Hardware one instance must have (see ResourceRequirements in offer.proto)."""

    gpu_names: Sequence[str] = ()
    gpu_count: int = 0
    min_gpu_memory_gib: float = 0.0
    min_vcpus: int = 0
    min_memory_gib: float = 0.0


@dataclasses.dataclass(frozen=True)
class Ranked:
    """One feasible offer with its estimated runtime and cost."""

    rank: int
    offer: Offer
    relative_speed: float
    cost: Breakdown


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The ranking (best first), the recommended offer id ('' when none is feasible), the reason and assumptions."""

    ranked: tuple[Ranked, ...]
    recommended_offer_id: str
    reason: str
    assumptions: tuple[str, ...]


def offer_filter(req: Requirements, providers: Sequence[str], spot_allowed: bool, prefix: str = "requirements") -> OfferFilter:
    """The catalog filter for requirements; validates the CPU-only form. Shared with the scheduler-facing checks."""
    if req.gpu_count == 0:
        if req.gpu_names:
            raise InvalidArgument.field(
                f"{prefix}.gpu_names", "must be empty when gpu_count is 0 (a CPU-only machine)", reason="GPU_NAMES_WITHOUT_GPUS"
            )
        if req.min_gpu_memory_gib:
            raise InvalidArgument.field(
                f"{prefix}.min_gpu_memory_gib",
                "must be 0 when gpu_count is 0 (a CPU-only machine)",
                reason="GPU_MEMORY_WITHOUT_GPUS",
            )
    return OfferFilter(
        gpu_names=req.gpu_names,
        min_gpu_memory_gib=req.min_gpu_memory_gib,
        gpu_count=req.gpu_count,
        providers=providers,
        spot_allowed=spot_allowed,
        min_vcpus=req.min_vcpus,
        min_memory_gib=req.min_memory_gib,
        gpu_names_field=f"{prefix}.gpu_names",
        providers_field="providers",
    )


def _scaled(duration_ns: int, speed: float) -> int:
    """Runtime on a GPU `speed` times as fast as the reference, to the whole second (sub-second when under a second)."""
    ns = duration_ns / speed
    return round(ns / 1e9) * 1_000_000_000 if ns >= 1e9 else round(ns)


def _money(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def compare(
    catalog: Catalog,
    req: Requirements,
    duration_ns: int,
    *,
    objective: Objective,
    reference_gpu: str = "",
    providers: Sequence[str] = (),
    spot_allowed: bool = False,
    max_cost_usd: float | None = None,
    storage_gb_hours: float = 0.0,
    egress_gb: float = 0.0,
) -> Comparison:
    """Rank every feasible offer for `req` run for `duration_ns` (scaled by relative speed to `reference_gpu`)."""
    ref = reference_gpu.strip().upper()
    if ref and ref not in catalog.gpus:
        raise NotFound(
            f"reference_gpu_name: no relative throughput is known for {reference_gpu!r}; known: "
            f"{', '.join(sorted(catalog.gpus))}",
            reason="GPU_NOT_FOUND",
            metadata={"gpu_name": reference_gpu},
        )
    matching = catalog.select(offer_filter(req, providers, spot_allowed))
    no_speed: Counter[str] = Counter()
    unavailable = over_cap = 0
    rows: list[tuple[Offer, float, Breakdown]] = []
    for offer in matching:
        speed = 1.0
        if ref:
            found = catalog.relative_speed(offer.gpu_name, ref)
            if found is None:
                no_speed[offer.gpu_name or "CPU"] += 1
                continue
            speed = found
        if offer.availability is Availability.UNAVAILABLE:
            unavailable += 1
            continue
        cost = breakdown(offer, _scaled(duration_ns, speed), storage_gb_hours, egress_gb)
        if max_cost_usd is not None and cost.total_usd > max_cost_usd:
            over_cap += 1
            continue
        rows.append((offer, speed, cost))
    if objective is Objective.CHEAPEST:
        rows.sort(key=lambda r: (r[2].total_usd, r[2].runtime_ns, r[0].availability.rank, r[0].offer_id))
    else:
        rows.sort(key=lambda r: (r[2].runtime_ns, r[2].total_usd, r[0].availability.rank, r[0].offer_id))
    ranked = tuple(Ranked(i + 1, o, s, c) for i, (o, s, c) in enumerate(rows))
    reason = _reason(ranked, objective, len(matching), unavailable, over_cap, sum(no_speed.values()), max_cost_usd)
    assumptions = _assumptions(
        ranked, ref, duration_ns, no_speed, unavailable, over_cap, storage_gb_hours, egress_gb, spot_allowed
    )
    return Comparison(ranked, ranked[0].offer.offer_id if ranked else "", reason, tuple(assumptions))


def _reason(
    ranked: Sequence[Ranked],
    objective: Objective,
    matching: int,
    unavailable: int,
    over_cap: int,
    no_speed: int,
    max_cost_usd: float | None,
) -> str:
    if ranked:
        best = ranked[0]
        what = f"{format_duration(best.cost.runtime_ns)} on {best.offer.describe()}"
        if objective is Objective.CHEAPEST:
            return f"cheapest total: {_money(best.cost.total_usd)} for {what}"
        cap = f"within max_cost_usd {max_cost_usd:.2f}" if max_cost_usd is not None else "with no cost cap"
        return f"fastest {cap}: {what} for {_money(best.cost.total_usd)}"
    if matching == 0:
        return "no offer in the catalog matches the requirements"
    parts = []
    if over_cap:
        parts.append(f"{over_cap} exceed max_cost_usd {max_cost_usd:.2f}")
    if unavailable:
        parts.append(f"{unavailable} are reported UNAVAILABLE")
    if no_speed:
        parts.append(f"{no_speed} have no known speed relative to the reference GPU")
    return f"{matching} offers match the requirements but none is feasible: {'; '.join(parts)}"


def _assumptions(
    ranked: Sequence[Ranked],
    ref: str,
    duration_ns: int,
    no_speed: Counter[str],
    unavailable: int,
    over_cap: int,
    storage_gb_hours: float,
    egress_gb: float,
    spot_allowed: bool,
) -> list[str]:
    out = []
    if ref:
        out.append(
            f"Runtimes are {format_duration(duration_ns)} on {ref} scaled by peak dense BF16/FP16 tensor throughput "
            "(GPU datasheets); memory- or communication-bound jobs speed up less than the ratio says."
        )
    else:
        out.append(f"Every offer is costed at {format_duration(duration_ns)}, unscaled (no reference GPU given).")
    out.append("Each offer's compute is rounded up to its provider's billing granularity.")
    origins: Counter[Origin] = Counter(r.offer.origin for r in ranked)
    undated = sum(1 for r in ranked if r.offer.observed_at is None)
    dates = sorted(r.offer.observed_at.date().isoformat() for r in ranked if r.offer.observed_at is not None)
    if ranked:
        span = f"observed {dates[0]}..{dates[-1]}" if dates else "all undated"
        out.append(
            f"Prices: {', '.join(f'{n} from {o.value}' for o, n in sorted(origins.items(), key=lambda x: x[0].value))}; "
            f"{span}{f', {undated} undated' if undated and dates else ''}; each offer carries its source."
        )
    for amount, what, attr in (
        (storage_gb_hours, "storage", "storage_price_usd_per_gb_hour"),
        (egress_gb, "egress", "egress_price_usd_per_gb"),
    ):
        if amount:
            unknown = sorted({r.offer.provider for r in ranked if getattr(r.offer, attr) is None})
            if unknown:
                out.append(f"No {what} rate in the catalog for {', '.join(unknown)}: their {what} is counted as $0.")
    if spot_allowed:
        out.append("Spot offers may be preempted; restarts and lost work are not included.")
    for gpu, n in sorted(no_speed.items()):
        out.append(f"{n} offer(s) with {gpu} left out: no relative throughput known for it.")
    if unavailable:
        out.append(f"{unavailable} offer(s) left out: the provider reports no capacity.")
    if over_cap:
        out.append(f"{over_cap} offer(s) left out: total above max_cost_usd.")
    out.append("Provisioning time, minimum charges and taxes are not included.")
    return out
