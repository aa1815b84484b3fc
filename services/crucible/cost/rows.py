"""Catalog rows, the price catalog's input: the CSV format (bundled file, user file), its checks, and GPU names.

A row is one machine shape of one provider in one region with its prices; `catalog.py` turns rows into offers.
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
