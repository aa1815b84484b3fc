"""The price catalog: offers made from catalog rows (bundled CSV, user CSV, live price APIs, the local rate).

Rows become offers (one per on-demand/spot price); `PriceBook` merges the layers and hands out immutable `Catalog` snapshots.
The rows, their CSV format and the GPU table are in `rows.py` (re-exported here for the modules that import them from here).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from crucible.cost.rows import _NAME as _NAME
from crucible.cost.rows import BUNDLED_CATALOG as BUNDLED_CATALOG
from crucible.cost.rows import COLUMNS as COLUMNS
from crucible.cost.rows import DATA_DIR as DATA_DIR
from crucible.cost.rows import GPU_TABLE as GPU_TABLE
from crucible.cost.rows import KNOWN_PROVIDERS as KNOWN_PROVIDERS
from crucible.cost.rows import Availability as Availability
from crucible.cost.rows import Billing as Billing
from crucible.cost.rows import CatalogError as CatalogError
from crucible.cost.rows import CatalogRow as CatalogRow
from crucible.cost.rows import GpuInfo as GpuInfo
from crucible.cost.rows import Origin as Origin
from crucible.cost.rows import canonical_gpu_name as canonical_gpu_name
from crucible.cost.rows import load_catalog_file as load_catalog_file
from crucible.cost.rows import load_gpu_table as load_gpu_table
from crucible.cost.rows import parse_catalog_csv as parse_catalog_csv
from crucible.cost.rows import parse_observed_at as parse_observed_at
from crucible.cost.rows import rows_from_records as rows_from_records
from crucible.cost.rows import rows_to_records as rows_to_records
from crucible.runtime.errors import InvalidArgument, NotFound


@dataclasses.dataclass(frozen=True)
class Offer:
    """A purchasable option derived from a catalog row: on-demand or spot, with its price and provenance."""

    offer_id: str
    provider: str
    instance_type: str
    region: str
    gpu_name: str
    gpu_count: int
    gpu_memory_gib: float
    vcpus: int
    memory_gib: float
    spot: bool
    price_usd_per_hour: float
    storage_price_usd_per_gb_hour: float | None
    egress_price_usd_per_gb: float | None
    billing: Billing
    availability: Availability
    origin: Origin
    source: str
    observed_at: dt.datetime | None

    @property
    def sort_key(self) -> tuple[float, int, str]:
        """Cheapest first, better availability first on ties, then by id for a stable order."""
        return (self.price_usd_per_hour, self.availability.rank, self.offer_id)

    def describe(self) -> str:
        """Short human label, e.g. 'lambda gpu_1x_a10 (1 x A10, on-demand)'."""
        hw = f"{self.gpu_count} x {self.gpu_name}" if self.gpu_count else "CPU only"
        where = f" {self.region}" if self.region else ""
        return f"{self.provider} {self.instance_type}{where} ({hw}, {'spot' if self.spot else 'on-demand'})"


def make_offer_id(provider: str, instance_type: str, region: str, spot: bool) -> str:
    """`{provider}/{instance_type}/{region}/{on-demand|spot}` as the contract defines it."""
    return f"{provider}/{instance_type}/{region}/{'spot' if spot else 'on-demand'}"


def offers_from_row(row: CatalogRow) -> list[Offer]:
    """The on-demand and spot offers of a row (one or two)."""
    out = []
    for spot, price, availability in (
        (False, row.price_usd_per_hour, row.availability),
        (True, row.spot_price_usd_per_hour, row.spot_availability),
    ):
        if price is None:
            continue
        out.append(
            Offer(
                offer_id=make_offer_id(row.provider, row.instance_type, row.region, spot),
                provider=row.provider,
                instance_type=row.instance_type,
                region=row.region,
                gpu_name=row.gpu_name,
                gpu_count=row.gpu_count,
                gpu_memory_gib=row.gpu_memory_gib,
                vcpus=row.vcpus,
                memory_gib=row.memory_gib,
                spot=spot,
                price_usd_per_hour=price,
                storage_price_usd_per_gb_hour=row.storage_price_usd_per_gb_hour,
                egress_price_usd_per_gb=row.egress_price_usd_per_gb,
                billing=row.billing,
                availability=availability,
                origin=row.origin,
                source=row.source,
                observed_at=row.observed_at,
            )
        )
    return out


def local_row(
    *,
    gpu_name: str,
    gpu_count: int,
    gpu_memory_gib: float,
    vcpus: int,
    memory_gib: float,
    power_watts: float,
    electricity_usd_per_kwh: float,
    amortisation_usd_per_hour: float,
    observed_at: dt.datetime,
) -> CatalogRow:
    """The `local` provider's one row: power draw times the electricity rate plus hardware amortisation, per second."""
    price = power_watts / 1000.0 * electricity_usd_per_kwh + amortisation_usd_per_hour
    gpu = canonical_gpu_name(gpu_name, gpu_memory_gib or None) if gpu_count else ""
    instance = f"local-{gpu_count}x{gpu.lower()}" if gpu_count else "local-cpu"
    source = (
        f"configured rate: {power_watts:g} W x ${electricity_usd_per_kwh:g}/kWh electricity "
        f"+ ${amortisation_usd_per_hour:g}/h amortisation"
    )
    return CatalogRow(
        provider="local",
        instance_type=instance,
        gpu_name=gpu,
        gpu_count=gpu_count if gpu else 0,
        gpu_memory_gib=gpu_memory_gib if gpu else 0.0,
        vcpus=vcpus,
        memory_gib=memory_gib,
        region="",
        price_usd_per_hour=round(price, 6),
        spot_price_usd_per_hour=None,
        storage_price_usd_per_gb_hour=0.0,
        egress_price_usd_per_gb=0.0,
        billing=Billing.PER_SECOND,
        source=source,
        observed_at=observed_at,
        origin=Origin.CONFIGURED_RATE,
        availability=Availability.AVAILABLE,
    )


# ------------------------------------------------------------------------------------------------------ the snapshot


@dataclasses.dataclass(frozen=True)
class OfferFilter:
    """What ListOffers and CompareProviders select on; `field_prefix` names fields in error messages."""

    gpu_names: Sequence[str] = ()
    min_gpu_memory_gib: float = 0.0
    gpu_count: int | None = None
    providers: Sequence[str] = ()
    spot_allowed: bool = False
    max_price_usd_per_hour: float | None = None
    exclude_unavailable: bool = False
    min_vcpus: int = 0
    min_memory_gib: float = 0.0
    gpu_names_field: str = "gpu_names"
    providers_field: str = "providers"


class Catalog:
    """An immutable view of every offer in use, cheapest first, indexed by id; offers that left the catalog on a
    refresh stay resolvable by id (`retired`) so running jobs keep their price."""

    def __init__(
        self,
        rows: Iterable[CatalogRow],
        gpus: Mapping[str, GpuInfo],
        providers: Iterable[str],
        retired: Mapping[str, Offer] | None = None,
    ) -> None:
        self.rows = tuple(rows)
        offers = [o for r in self.rows for o in offers_from_row(r)]
        offers.sort(key=lambda o: o.sort_key)
        self.offers: tuple[Offer, ...] = tuple(offers)
        self.by_id: dict[str, Offer] = {o.offer_id: o for o in offers}
        self.retired: dict[str, Offer] = {k: v for k, v in (retired or {}).items() if k not in self.by_id}
        self.gpus = dict(gpus)
        self.gpu_names = frozenset(self.gpus) | {o.gpu_name for o in offers if o.gpu_name}
        self.providers = frozenset(providers) | {o.provider for o in offers}

    def get(self, offer_id: str, field: str = "offer_id") -> Offer:
        """The offer with this id (current or retired); InvalidArgument when empty, NotFound when unknown."""
        if not offer_id:
            raise InvalidArgument.field(field, "required", reason="MISSING_OFFER_ID")
        offer = self.by_id.get(offer_id) or self.retired.get(offer_id)
        if offer is None:
            raise NotFound(
                f"{field}: no offer {offer_id!r} in the catalog (see ListOffers)",
                reason="OFFER_NOT_FOUND",
                metadata={"offer_id": offer_id},
            )
        return offer

    def check_gpu_names(self, names: Sequence[str], field: str) -> set[str]:
        """Upper-cased names, each checked: empty -> InvalidArgument, not in the catalog -> NotFound.

        A family name matches every variant of it: "A100" is A100-40GB and A100-80GB (names starting "A100-").
        """
        out = set()
        for i, raw in enumerate(names):
            name = raw.strip().upper()
            if not name:
                raise InvalidArgument.field(f"{field}[{i}]", "must not be empty", reason="EMPTY_GPU_NAME")
            family = {g for g in self.gpu_names if g.startswith(name + "-")} if name not in self.gpu_names else set()
            if family:
                out |= family
                continue
            if name not in self.gpu_names:
                raise NotFound(
                    f"{field}[{i}]: GPU {raw!r} is not in the catalog; known: {', '.join(sorted(self.gpu_names))}",
                    reason="GPU_NOT_FOUND",
                    metadata={"gpu_name": raw},
                )
            out.add(name)
        return out

    def check_providers(self, names: Sequence[str], field: str) -> set[str]:
        """Lower-cased provider names, each checked: empty -> InvalidArgument, unknown -> NotFound."""
        out = set()
        for i, raw in enumerate(names):
            name = raw.strip().lower()
            if not name:
                raise InvalidArgument.field(f"{field}[{i}]", "must not be empty", reason="EMPTY_PROVIDER")
            if name not in self.providers:
                raise NotFound(
                    f"{field}[{i}]: unknown provider {raw!r}; known: {', '.join(sorted(self.providers))}",
                    reason="PROVIDER_NOT_FOUND",
                    metadata={"provider": raw},
                )
            out.add(name)
        return out

    def select(self, flt: OfferFilter) -> list[Offer]:
        """Offers matching every filter, cheapest first (the filter's names are checked first)."""
        gpus = self.check_gpu_names(flt.gpu_names, flt.gpu_names_field)
        providers = self.check_providers(flt.providers, flt.providers_field)
        out = []
        for o in self.offers:
            if flt.max_price_usd_per_hour is not None and o.price_usd_per_hour > flt.max_price_usd_per_hour:
                break  # cheapest first: nothing later is cheaper
            if o.spot and not flt.spot_allowed:
                continue
            if gpus and o.gpu_name not in gpus:
                continue
            if providers and o.provider not in providers:
                continue
            if flt.gpu_count is not None and o.gpu_count != flt.gpu_count:
                continue
            if flt.min_gpu_memory_gib > 0 and (not o.gpu_count or o.gpu_memory_gib < flt.min_gpu_memory_gib):
                continue
            if flt.min_vcpus and o.vcpus and o.vcpus < flt.min_vcpus:
                continue
            if flt.min_memory_gib and o.memory_gib and o.memory_gib < flt.min_memory_gib:
                continue
            if flt.exclude_unavailable and o.availability is Availability.UNAVAILABLE:
                continue
            out.append(o)
        return out

    def relative_speed(self, gpu_name: str, reference: str) -> float | None:
        """Peak-throughput ratio of one GPU of `gpu_name` to one of `reference`; None when either is not in the GPU table."""
        a, b = self.gpus.get(gpu_name), self.gpus.get(reference)
        if a is None or b is None:
            return None
        return a.dense_tflops / b.dense_tflops

    def provider_observed_at(self, provider: str) -> dt.datetime | None:
        """Newest observation time among the provider's rows (None when all are undated)."""
        times = [r.observed_at for r in self.rows if r.provider == provider and r.observed_at is not None]
        return max(times) if times else None


class PriceBook:
    """The catalog's layers: bundled rows, the configured local rate, live rows per provider, and the user's rows.

    Effective rows: bundled, with a provider's rows replaced wholesale by its live rows once a refresh succeeded; then
    user rows replace rows with the same (provider, instance_type, region) or add new ones. User rows always win.
    """

    def __init__(
        self,
        *,
        bundled: Sequence[CatalogRow],
        local: Sequence[CatalogRow],
        user: Sequence[CatalogRow],
        gpus: Mapping[str, GpuInfo],
        live: Mapping[str, Sequence[CatalogRow]] | None = None,
    ) -> None:
        self._bundled = list(bundled)
        self._local = list(local)
        self._user = list(user)
        self._live: dict[str, list[CatalogRow]] = {p: list(r) for p, r in (live or {}).items()}
        self._gpus = dict(gpus)
        self._retired: dict[str, Offer] = {}
        self.catalog = self._build()

    @property
    def user_rows(self) -> list[CatalogRow]:
        """The user's rows currently in force."""
        return list(self._user)

    @property
    def live_rows(self) -> dict[str, list[CatalogRow]]:
        """Live rows per provider (what the live-price cache stores)."""
        return {p: list(r) for p, r in self._live.items()}

    def _build(self) -> Catalog:
        by_key: dict[tuple[str, str, str], CatalogRow] = {}
        for row in self._bundled:
            if row.provider not in self._live:
                by_key[row.key] = row
        for rows in self._live.values():
            for row in rows:
                by_key[row.key] = row
        for row in self._local:
            by_key[row.key] = row
        for row in self._user:
            by_key[row.key] = row
        previous = getattr(self, "catalog", None)
        if previous is not None:
            self._retired.update(previous.retired)
            self._retired.update(previous.by_id)
        return Catalog(by_key.values(), self._gpus, KNOWN_PROVIDERS, self._retired)

    def user_keys(self) -> set[tuple[str, str, str]]:
        """Keys of the user's rows, which RefreshPrices never overwrites."""
        return {r.key for r in self._user}

    def apply_live(self, provider: str, rows: Sequence[CatalogRow]) -> tuple[int, int]:
        """Replace the provider's rows with freshly fetched ones (rows the user edited are skipped and counted).

        Returns (offers updated, user-edited rows skipped) and swaps in a new snapshot.
        """
        user = self.user_keys()
        kept = [r for r in rows if r.key not in user]
        self._live[provider] = kept
        self.catalog = self._build()
        return sum(len(offers_from_row(r)) for r in kept), len(rows) - len(kept)

    def set_user_rows(self, rows: Sequence[CatalogRow]) -> None:
        """Replace the user layer (after the user's file was re-read) and swap in a new snapshot."""
        self._user = list(rows)
        self.catalog = self._build()
