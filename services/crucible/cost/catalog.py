"""The price catalog: dated catalog rows from the bundled CSV, the user's CSV, live price APIs and the local rate.

Rows become offers (one per on-demand/spot price); `PriceBook` merges the layers and hands out immutable `Catalog` snapshots.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import enum
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crucible.runtime.errors import InvalidArgument, NotFound

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED_CATALOG = DATA_DIR / "catalog.csv"
GPU_TABLE = DATA_DIR / "gpus.csv"

#: Providers the service always knows, even when the catalog holds no row of theirs.
KNOWN_PROVIDERS = ("lambda", "local", "modal", "paperspace", "replicate", "runpod")

#: Columns of a catalog CSV, in the order the bundled file writes them.
COLUMNS = (
    "provider",
    "instance_type",
    "gpu_name",
    "gpu_count",
    "gpu_memory_gib",
    "vcpus",
    "memory_gib",
    "region",
    "price_usd_per_hour",
    "spot_price_usd_per_hour",
    "storage_price_usd_per_gb_hour",
    "egress_price_usd_per_gb",
    "billing_granularity",
    "source",
    "observed_at",
)
_REQUIRED_COLUMNS = ("provider", "instance_type")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*\Z")  # \Z: `$` also accepts a trailing newline


class CatalogError(ValueError):
    """A catalog file (bundled, user or cached live prices) is malformed; the message names file, line and column."""


class Billing(enum.Enum):
    """How a provider rounds billed runtime; the value is the CSV spelling."""

    PER_SECOND = "per_second"
    PER_MINUTE = "per_minute"
    PER_HOUR = "per_hour"

    @property
    def seconds(self) -> int:
        """Length of one billing unit in seconds."""
        return {"per_second": 1, "per_minute": 60, "per_hour": 3600}[self.value]


class Availability(enum.Enum):
    """Capacity as last reported by the provider; `rank` orders better availability first."""

    AVAILABLE = "available"
    LOW = "low"
    UNKNOWN = "unknown"
    UNAVAILABLE = "unavailable"

    @property
    def rank(self) -> int:
        """0 for AVAILABLE up to 3 for UNAVAILABLE (sort key for ties)."""
        return ("available", "low", "unknown", "unavailable").index(self.value)


class Origin(enum.Enum):
    """Which layer of the catalog a price came from."""

    BUNDLED_CATALOG = "bundled_catalog"
    USER_CATALOG = "user_catalog"
    LIVE_API = "live_api"
    CONFIGURED_RATE = "configured_rate"


@dataclasses.dataclass(frozen=True)
class CatalogRow:
    """One machine shape of one provider in one region, with its on-demand and/or spot price per instance-hour."""

    provider: str
    instance_type: str
    gpu_name: str
    gpu_count: int
    gpu_memory_gib: float
    vcpus: int
    memory_gib: float
    region: str
    price_usd_per_hour: float | None
    spot_price_usd_per_hour: float | None
    storage_price_usd_per_gb_hour: float | None
    egress_price_usd_per_gb: float | None
    billing: Billing
    source: str
    observed_at: dt.datetime | None
    origin: Origin
    availability: Availability = Availability.UNKNOWN
    spot_availability: Availability = Availability.UNKNOWN

    @property
    def key(self) -> tuple[str, str, str]:
        """(provider, instance_type, region): what a user row overrides."""
        return (self.provider, self.instance_type, self.region)


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


# ---------------------------------------------------------------------------------------------------------------- GPUs

_GPU_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), name)
    for p, name in (
        (r"\bH200\b", "H200"),
        (r"\bH100\b", "H100"),
        (r"\bL40S\b", "L40S"),
        (r"\bL4\b", "L4"),
        (r"\bA10G\b", "A10G"),
        (r"\bA10\b", "A10"),
        (r"\bA40\b", "A40"),
        (r"\bA4000\b", "A4000"),
        (r"\bA5000\b", "A5000"),
        (r"\bA6000\b", "A6000"),
        (r"\bRTX[ -]?4090\b|^4090$", "RTX4090"),
        (r"\bRTX[ -]?3090\b|^3090$", "RTX3090"),
        (r"\bT4\b", "T4"),
        (r"\bV100\b", "V100"),
    )
)


def canonical_gpu_name(text: str, memory_gib: float | None = None) -> str:
    """Canonical upper-case GPU model for a provider's description, e.g. 'NVIDIA A100 80GB PCIe' -> 'A100-80GB'.

    A100s are split by memory (from the text, else `memory_gib`); unrecognised models are upper-cased with spaces as '-'.
    """
    upper = text.strip().upper().replace("_", " ")
    if not upper:
        return ""
    if re.search(r"\bA100\b|\bA100-", upper):
        found = re.search(r"(\d+)\s*G", upper.split("A100", 1)[1]) or re.search(r"(\d+)\s*GB", upper)
        mem = float(found.group(1)) if found else memory_gib
        return "A100-80GB" if mem is not None and mem >= 60 else "A100-40GB"
    for pattern, name in _GPU_PATTERNS:
        if pattern.search(upper):
            return name
    cleaned = re.sub(r"^(NVIDIA|GEFORCE|TESLA)\s+", "", upper)
    return re.sub(r"\s+", "-", cleaned)


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """A GPU model's memory and peak dense BF16/FP16 tensor TFLOPS (the basis of relative speed)."""

    name: str
    memory_gib: float
    dense_tflops: float
    source: str


def load_gpu_table(path: Path = GPU_TABLE) -> dict[str, GpuInfo]:
    """The GPU table shipped with the catalog, by canonical name."""
    table: dict[str, GpuInfo] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for line, rec in enumerate(csv.DictReader(handle), start=2):
            try:
                info = GpuInfo(
                    rec["gpu_name"].strip().upper(),
                    float(rec["memory_gib"]),
                    float(rec["dense_bf16_tflops"]),
                    rec["source"].strip(),
                )
            except (KeyError, ValueError, AttributeError) as err:
                raise CatalogError(f"{path}:{line}: {err}") from None
            if info.dense_tflops <= 0:
                raise CatalogError(f"{path}:{line}: dense_bf16_tflops must be positive")
            table[info.name] = info
    return table


# ---------------------------------------------------------------------------------------------------------- CSV files


def _parse_float(value: str, where: str, *, minimum: float = 0.0) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise CatalogError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < minimum:
        raise CatalogError(f"{where}: must be a finite number >= {minimum:g}, got {value!r}")
    return number


def _parse_int(value: str, where: str) -> int | None:
    number = _parse_float(value, where)
    if number is None:
        return None
    if number != int(number):
        raise CatalogError(f"{where}: expected a whole number, got {value!r}")
    return int(number)


def parse_observed_at(value: str) -> dt.datetime | None:
    """An ISO date or date-time ('2026-05-07', '2026-05-07T12:00:00Z'); naive times are UTC; '' means undated."""
    value = value.strip()
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_catalog_csv(text: str, *, origin: Origin, name: str) -> list[CatalogRow]:
    """Rows of a catalog CSV (the bundled one or a user's). Raises CatalogError naming `name`, line and column.

    Only `provider`, `instance_type` and one of the two price columns are required; unknown columns are errors
    (a typo must not silently drop a price).
    """
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise CatalogError(f"{name}:1: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(COLUMNS)}")
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    if missing or not {"price_usd_per_hour", "spot_price_usd_per_hour"} & set(header):
        raise CatalogError(f"{name}:1: header needs provider, instance_type and price_usd_per_hour or spot_price_usd_per_hour")
    reader.fieldnames = header
    rows: list[CatalogRow] = []
    seen: dict[tuple[str, str, str], int] = {}
    for line, rec in enumerate(reader, start=2):
        if not any((v or "").strip() for v in rec.values()):
            continue
        if None in rec:
            raise CatalogError(f"{name}:{line}: more fields than columns")
        row = _row_from_record({k: (v or "") for k, v in rec.items()}, origin=origin, where=f"{name}:{line}")
        if row.key in seen:
            raise CatalogError(f"{name}:{line}: duplicate of line {seen[row.key]} (same provider, instance_type and region)")
        seen[row.key] = line
        rows.append(row)
    return rows


def _row_from_record(rec: Mapping[str, str], *, origin: Origin, where: str) -> CatalogRow:
    def col(column: str) -> str:
        return rec.get(column, "").strip()

    provider = col("provider").lower()
    if not _NAME.match(provider):
        raise CatalogError(f"{where}: provider: must be lower-case letters, digits, '-', '_' or '.', got {provider!r}")
    instance_type = col("instance_type")
    region = col("region")
    for column, value in (("instance_type", instance_type), ("region", region)):
        if "/" in value:
            raise CatalogError(f"{where}: {column}: must not contain '/', got {value!r}")
    if not instance_type:
        raise CatalogError(f"{where}: instance_type: required")
    gpu_memory = _parse_float(col("gpu_memory_gib"), f"{where}: gpu_memory_gib") or 0.0
    gpu_name = canonical_gpu_name(col("gpu_name"), gpu_memory or None)
    gpu_count = _parse_int(col("gpu_count"), f"{where}: gpu_count")
    if gpu_count is None:
        gpu_count = 1 if gpu_name else 0
    if gpu_count == 0 and gpu_name:
        raise CatalogError(f"{where}: gpu_count: 0 GPUs with gpu_name {gpu_name!r}")
    if gpu_count > 0 and not gpu_name:
        raise CatalogError(f"{where}: gpu_name: required when gpu_count is {gpu_count}")
    price = _parse_float(col("price_usd_per_hour"), f"{where}: price_usd_per_hour")
    spot = _parse_float(col("spot_price_usd_per_hour"), f"{where}: spot_price_usd_per_hour")
    if price is None and spot is None:
        raise CatalogError(f"{where}: price_usd_per_hour or spot_price_usd_per_hour: at least one price is required")
    billing_text = col("billing_granularity").lower() or "per_second"
    try:
        billing = Billing(billing_text)
    except ValueError:
        raise CatalogError(
            f"{where}: billing_granularity: must be per_second, per_minute or per_hour, got {billing_text!r}"
        ) from None
    try:
        observed_at = parse_observed_at(col("observed_at"))
    except ValueError:
        raise CatalogError(f"{where}: observed_at: expected an ISO date such as 2026-05-07, got {col('observed_at')!r}") from None
    source = col("source")
    if not source:
        source = "user catalog (no source given)" if origin is Origin.USER_CATALOG else "unknown source"
    return CatalogRow(
        provider=provider,
        instance_type=instance_type,
        gpu_name=gpu_name,
        gpu_count=gpu_count,
        gpu_memory_gib=gpu_memory,
        vcpus=_parse_int(col("vcpus"), f"{where}: vcpus") or 0,
        memory_gib=_parse_float(col("memory_gib"), f"{where}: memory_gib") or 0.0,
        region=region,
        price_usd_per_hour=price,
        spot_price_usd_per_hour=spot,
        storage_price_usd_per_gb_hour=_parse_float(
            col("storage_price_usd_per_gb_hour"), f"{where}: storage_price_usd_per_gb_hour"
        ),
        egress_price_usd_per_gb=_parse_float(col("egress_price_usd_per_gb"), f"{where}: egress_price_usd_per_gb"),
        billing=billing,
        source=source,
        observed_at=observed_at,
        origin=origin,
    )


def load_catalog_file(path: Path, *, origin: Origin) -> list[CatalogRow]:
    """Read and parse a catalog CSV file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CatalogError(f"{path}: cannot read: {err.strerror or err}") from None
    return parse_catalog_csv(text, origin=origin, name=str(path))


def rows_to_records(rows: Iterable[CatalogRow]) -> list[dict[str, object]]:
    """JSON-friendly records of rows (for the live-price cache), with availability kept."""
    out = []
    for r in rows:
        out.append(
            {
                **{
                    f.name: getattr(r, f.name)
                    for f in dataclasses.fields(r)
                    if f.name not in ("billing", "observed_at", "origin", "availability", "spot_availability")
                },
                "billing": r.billing.value,
                "origin": r.origin.value,
                "availability": r.availability.value,
                "spot_availability": r.spot_availability.value,
                "observed_at": r.observed_at.isoformat() if r.observed_at else None,
            }
        )
    return out


def rows_from_records(records: Sequence[Mapping[str, object]]) -> list[CatalogRow]:
    """Inverse of rows_to_records; raises CatalogError on anything malformed."""
    rows = []
    for i, rec in enumerate(records):
        try:
            values: dict[str, Any] = dict(rec)  # CatalogRow(**values) rejects (TypeError) what does not fit
            values["billing"] = Billing(values["billing"])
            values["origin"] = Origin(values["origin"])
            values["availability"] = Availability(values["availability"])
            values["spot_availability"] = Availability(values["spot_availability"])
            observed = values["observed_at"]
            values["observed_at"] = parse_observed_at(str(observed)) if observed else None
            rows.append(CatalogRow(**values))
        except (KeyError, TypeError, ValueError) as err:
            raise CatalogError(f"record {i}: {err}") from None
    return rows


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
