"""Cost estimates: billing-granularity rounding, compute/storage/network breakdowns and the assumptions behind them.

Durations are integer nanoseconds (as protobuf Durations carry them) so rounding up to a billing unit is exact.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from crucible.cost.catalog import Billing, Offer, Origin
from crucible.runtime.errors import InvalidArgument

NS_PER_S = 1_000_000_000
NS_PER_HOUR = 3600 * NS_PER_S


@dataclasses.dataclass(frozen=True)
class Breakdown:
    """Cost of one offer for one runtime, in USD; `runtime_ns` as asked, `billed_ns` rounded up to the billing unit."""

    runtime_ns: int
    billed_ns: int
    compute_usd: float
    storage_usd: float
    network_usd: float

    @property
    def total_usd(self) -> float:
        """Compute + storage + network."""
        return self.compute_usd + self.storage_usd + self.network_usd


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Low and high ends of an estimate (equal for a single duration) and every assumption, one sentence each."""

    offer: Offer
    low: Breakdown
    high: Breakdown
    assumptions: tuple[str, ...]


def check_amount(value: float, field: str) -> float:
    """A finite, non-negative number, or InvalidArgument naming `field`."""
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument.field(field, f"must be a finite number >= 0, got {value!r}", reason="NEGATIVE_OR_NOT_FINITE")
    return value


def billed_ns(runtime_ns: int, billing: Billing) -> int:
    """Runtime rounded up to whole billing units (a zero runtime bills nothing)."""
    if runtime_ns <= 0:
        return 0
    unit = billing.seconds * NS_PER_S
    return -(-runtime_ns // unit) * unit


def breakdown(offer: Offer, runtime_ns: int, storage_gb_hours: float = 0.0, egress_gb: float = 0.0) -> Breakdown:
    """Cost of `offer` for `runtime_ns`, with storage GB-hours and egress GB; unknown storage/egress rates count as 0."""
    billed = billed_ns(runtime_ns, offer.billing)
    return Breakdown(
        runtime_ns=runtime_ns,
        billed_ns=billed,
        compute_usd=offer.price_usd_per_hour * billed / NS_PER_HOUR,
        storage_usd=(offer.storage_price_usd_per_gb_hour or 0.0) * storage_gb_hours,
        network_usd=(offer.egress_price_usd_per_gb or 0.0) * egress_gb,
    )


def format_duration(ns: int) -> str:
    """Human duration: '2h 0m 0s', '1m 30s', '0.25s'."""
    if ns % NS_PER_S:
        if ns < 60 * NS_PER_S:
            return f"{ns / NS_PER_S:g}s"
        ns = -(-ns // NS_PER_S) * NS_PER_S
    total = ns // NS_PER_S
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


@functools.lru_cache(maxsize=4096)
def price_provenance(offer: Offer) -> str:
    """One sentence: which price, from where, observed when (or undated). Memoised: offers are immutable values."""
    when = f"observed {offer.observed_at.date().isoformat()}" if offer.observed_at else "undated"
    if offer.origin is Origin.LIVE_API and offer.observed_at:
        when = f"fetched {offer.observed_at.isoformat(timespec='seconds')}"
    origin = {
        Origin.BUNDLED_CATALOG: "the bundled catalog",
        Origin.USER_CATALOG: "the user catalog",
        Origin.LIVE_API: "the provider's price API",
        Origin.CONFIGURED_RATE: "the configured local rate",
    }[offer.origin]
    return f"Price ${offer.price_usd_per_hour:.4g}/h for {offer.describe()} comes from {origin} ({offer.source}), {when}."


_BILLING_TEXT = {
    Billing.PER_SECOND: "Compute is billed per second",
    Billing.PER_MINUTE: "Compute is billed per started minute",
    Billing.PER_HOUR: "Compute is billed per started hour",
}


def assumptions_for(offer: Offer, runtimes_ns: tuple[int, ...], storage_gb_hours: float, egress_gb: float) -> list[str]:
    """Every assumption behind an estimate of `offer` for the given runtimes, one sentence each."""
    out = [price_provenance(offer)]
    rounding = []
    for ns in dict.fromkeys(runtimes_ns):
        billed = billed_ns(ns, offer.billing)
        if billed != ns:
            rounding.append(f"{format_duration(ns)} is billed as {format_duration(billed)}")
    text = _BILLING_TEXT[offer.billing]
    out.append(f"{text}: {'; '.join(rounding)}." if rounding else f"{text}; no rounding was needed.")
    if len(set(runtimes_ns)) > 1:
        out.append(
            f"Runtime range {format_duration(min(runtimes_ns))} to {format_duration(max(runtimes_ns))}: "
            "low and high are priced separately."
        )
    for amount, rate, what, unit, qty_unit in (
        (storage_gb_hours, offer.storage_price_usd_per_gb_hour, "Storage", "GB-hour", "GB-hours"),
        (egress_gb, offer.egress_price_usd_per_gb, "Egress", "GB", "GB"),
    ):
        if amount == 0:
            out.append(f"{what}: none requested (0 {qty_unit}).")
        elif rate is None:
            out.append(
                f"{what}: the catalog has no {what.lower()} rate for {offer.provider}; {amount:g} {qty_unit} "
                "counted as $0 (add the rate to the user catalog to include it)."
            )
        else:
            out.append(f"{what}: {amount:g} {qty_unit} at ${rate:g} per {unit}.")
    if offer.spot:
        out.append("Spot offer: the provider may preempt the instance; restarts and lost work are not included.")
    if offer.origin is Origin.CONFIGURED_RATE:
        out.append("Local cost is the configured electricity and amortisation rate, not a provider bill.")
    out.append("Provisioning time, minimum charges and taxes are not included.")
    return out


def estimate(offer: Offer, low_ns: int, high_ns: int, storage_gb_hours: float = 0.0, egress_gb: float = 0.0) -> Estimate:
    """Price `offer` at both ends of a runtime range (low == high for a single duration)."""
    if low_ns < 0 or high_ns < low_ns:
        raise InvalidArgument.field("duration_range", "needs 0 <= low <= high", reason="BAD_DURATION_RANGE")
    low = breakdown(offer, low_ns, storage_gb_hours, egress_gb)
    high = low if high_ns == low_ns else breakdown(offer, high_ns, storage_gb_hours, egress_gb)
    return Estimate(offer, low, high, tuple(assumptions_for(offer, (low_ns, high_ns), storage_gb_hours, egress_gb)))
