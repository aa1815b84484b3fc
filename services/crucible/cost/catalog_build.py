"""Regenerates the shipped price catalog from SkyPilot's published per-provider CSVs and hand-copied price-page figures.

Run: `python -m crucible.cost.catalog_build --lambda vms.csv --lambda-commit SHA --runpod vms.csv --runpod-commit SHA`.
"""

from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import datetime as dt
import io
import logging
import math
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from crucible.cost.catalog import (
    BUNDLED_CATALOG,
    COLUMNS,
    DATA_DIR,
    Billing,
    CatalogError,
    CatalogRow,
    Origin,
    canonical_gpu_name,
    load_catalog_file,
    parse_catalog_csv,
)

log = logging.getLogger(__name__)

#: Figures copied by hand from providers' price pages (Modal, Replicate, Paperspace), each row with its page and date.
PRICE_PAGES = DATA_DIR / "price_pages.csv"
SKYPILOT_REPO = "github.com/skypilot-org/skypilot-catalog"
LAMBDA_PATH = "catalogs/v7/lambda/vms.csv"
RUNPOD_PATH = "catalogs/v7/runpod/vms.csv"

LAMBDA_COLUMNS = (
    "InstanceType",
    "AcceleratorName",
    "AcceleratorCount",
    "vCPUs",
    "MemoryGiB",
    "Price",
    "Region",
    "GpuInfo",
    "SpotPrice",
)
RUNPOD_COLUMNS = (
    "InstanceType",
    "AcceleratorName",
    "AcceleratorCount",
    "vCPUs",
    "MemoryGiB",
    "GpuInfo",
    "Region",
    "SpotPrice",
    "Price",
    "AvailabilityZone",
)

#: SkyPilot's RunPod accelerator name -> (RunPod `gpuTypeId`, the id `podFindAndDeployOnDemand` takes; canonical GPU
#: name; memory per GPU in GiB). The ids and memory sizes are RunPod's published GPU types (checked against a dated
#: 2026-02-26 `gpuTypes { id displayName memoryInGb }` answer quoted in a public repository); SkyPilot's file carries
#: neither (its MemoryGiB column is host memory).
RUNPOD_GPU_TYPES: dict[str, tuple[str, str, float]] = {
    "A100-80GB": ("NVIDIA A100 80GB PCIe", "A100-80GB", 80),
    "A100-80GB-SXM": ("NVIDIA A100-SXM4-80GB", "A100-80GB", 80),
    "A40": ("NVIDIA A40", "A40", 48),
    "B200": ("NVIDIA B200", "B200", 180),
    "H100": ("NVIDIA H100 PCIe", "H100", 80),
    "H100-NVL": ("NVIDIA H100 NVL", "H100-NVL", 94),
    "H100-SXM": ("NVIDIA H100 80GB HBM3", "H100", 80),
    "H200-SXM": ("NVIDIA H200", "H200", 141),
    "L4": ("NVIDIA L4", "L4", 24),
    "L40": ("NVIDIA L40", "L40", 48),
    "L40S": ("NVIDIA L40S", "L40S", 48),
    "MI300X": ("AMD Instinct MI300X OAM", "MI300X", 192),
    "RTX3090": ("NVIDIA GeForce RTX 3090", "RTX3090", 24),
    "RTX4000-Ada": ("NVIDIA RTX 4000 Ada Generation", "RTX4000-ADA", 20),
    "RTX4090": ("NVIDIA GeForce RTX 4090", "RTX4090", 24),
    "RTX6000-Ada": ("NVIDIA RTX 6000 Ada Generation", "RTX6000-ADA", 48),
    "RTXA4000": ("NVIDIA RTX A4000", "A4000", 16),
    "RTXA4500": ("NVIDIA RTX A4500", "A4500", 20),
    "RTXA5000": ("NVIDIA RTX A5000", "A5000", 24),
    "RTXA6000": ("NVIDIA RTX A6000", "A6000", 48),
}
_COMMIT = re.compile(r"^[0-9a-f]{40}\Z")


class BuildError(ValueError):
    """An input file is not what the builder expects; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class SkyPilotFile:
    """One SkyPilot catalog CSV as read: its text, and where it came from (commit and path in the repository)."""

    text: str
    commit: str
    path: str
    name: str

    @property
    def source(self) -> str:
        """`github.com/skypilot-org/skypilot-catalog@<commit>:<path>` (what every row built from it records)."""
        return f"{SKYPILOT_REPO}@{self.commit}:{self.path}"


def runpod_instance_type(gpu_type_id: str, gpu_count: int) -> str:
    """The catalog's RunPod instance type: the gpuTypeId for one GPU, `{n}x {gpuTypeId}` for n GPUs."""
    return gpu_type_id if gpu_count == 1 else f"{gpu_count}x {gpu_type_id}"


def parse_runpod_instance_type(instance_type: str) -> tuple[str, int]:
    """Inverse of runpod_instance_type: (gpuTypeId, GPU count) for a launch request."""
    found = re.match(r"^(\d+)x (.+)\Z", instance_type)
    return (found.group(2), int(found.group(1))) if found else (instance_type, 1)


def _records(file: SkyPilotFile, columns: Sequence[str]) -> Iterable[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(file.text))
    header = tuple(reader.fieldnames or ())
    missing = [c for c in columns if c not in header]
    if missing:
        raise BuildError(f"{file.name}:1: not a SkyPilot v7 catalog: missing column(s) {', '.join(missing)}")
    for line, rec in enumerate(reader, start=2):
        yield line, {k: (v or "").strip() for k, v in rec.items() if k is not None}


def _number(value: str, where: str) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise BuildError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise BuildError(f"{where}: expected a finite number >= 0, got {value!r}")
    return number


def _prices(rec: dict[str, str], where: str, warned: set[str]) -> tuple[float | None, float | None]:
    price = _number(rec["Price"], f"{where}: Price")
    spot = _number(rec["SpotPrice"], f"{where}: SpotPrice")
    if price is not None and spot is not None and spot > price:
        if rec["InstanceType"] not in warned:  # once per instance type, not once per region
            warned.add(rec["InstanceType"])
            log.warning(
                "%s: %s: spot price %s above the on-demand price %s (columns swapped?); the spot price is "
                "dropped in every region",
                where,
                rec["InstanceType"],
                spot,
                price,
            )
        spot = None
    return price, spot


def _row(
    *,
    provider: str,
    instance_type: str,
    gpu_name: str,
    gpu_count: int,
    gpu_memory_gib: float,
    vcpus: float | None,
    memory_gib: float | None,
    region: str,
    price: float | None,
    spot: float | None,
    billing: Billing,
    source: str,
    observed: dt.date,
) -> CatalogRow:
    return CatalogRow(
        provider=provider,
        instance_type=instance_type,
        gpu_name=gpu_name,
        gpu_count=gpu_count,
        gpu_memory_gib=gpu_memory_gib,
        vcpus=int(vcpus or 0),
        memory_gib=memory_gib or 0.0,
        region=region,
        price_usd_per_hour=price,
        spot_price_usd_per_hour=spot,
        storage_price_usd_per_gb_hour=None,
        egress_price_usd_per_gb=None,
        billing=billing,
        source=source,
        observed_at=dt.datetime.combine(observed, dt.time(), dt.UTC),
        origin=Origin.BUNDLED_CATALOG,
    )


def lambda_rows(file: SkyPilotFile, observed: dt.date) -> list[CatalogRow]:
    """GPU rows of SkyPilot's Lambda catalog, one per instance type and region (CPU-only types are left out)."""
    rows: dict[tuple[str, str], CatalogRow] = {}
    warned: set[str] = set()
    for line, rec in _records(file, LAMBDA_COLUMNS):
        where = f"{file.name}:{line}"
        if not rec["AcceleratorName"]:
            continue  # CPU-only instance type
        count = int(_number(rec["AcceleratorCount"], f"{where}: AcceleratorCount") or 0)
        try:
            info = ast.literal_eval(rec["GpuInfo"]) if rec["GpuInfo"] else {}
            mib = float(info["Gpus"][0]["MemoryInfo"]["SizeInMiB"]) if info else 0.0
        except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
            raise BuildError(f"{where}: GpuInfo: cannot read the GPU memory from {rec['GpuInfo'][:80]!r}") from None
        memory = mib / 1024
        price, spot = _prices(rec, where, warned)
        if (price is None and spot is None) or count <= 0 or not rec["Region"]:
            log.warning("%s: %s has no price, GPU count or region; left out", where, rec["InstanceType"])
            continue
        row = _row(
            provider="lambda",
            instance_type=rec["InstanceType"],
            gpu_name=canonical_gpu_name(rec["AcceleratorName"], memory),
            gpu_count=count,
            gpu_memory_gib=memory,
            vcpus=_number(rec["vCPUs"], f"{where}: vCPUs"),
            memory_gib=_number(rec["MemoryGiB"], f"{where}: MemoryGiB"),
            region=rec["Region"],
            price=price,
            spot=spot,
            billing=Billing.PER_MINUTE,
            source=file.source,
            observed=observed,
        )
        rows.setdefault((row.instance_type, row.region), row)
    return list(rows.values())


def runpod_rows(file: SkyPilotFile, observed: dt.date) -> list[CatalogRow]:
    """GPU rows of SkyPilot's RunPod catalog, one per GPU type, count and data center (`region` is the data center id
    RunPod's `dataCenterId` takes, e.g. US-TX-1; SkyPilot's country column is dropped)."""
    rows: dict[tuple[str, str], CatalogRow] = {}
    warned: set[str] = set()
    for line, rec in _records(file, RUNPOD_COLUMNS):
        where = f"{file.name}:{line}"
        name = rec["AcceleratorName"]
        if not name:
            continue  # CPU-only instance type
        known = RUNPOD_GPU_TYPES.get(name)
        if known is None:
            log.warning("%s: RunPod GPU %r has no known gpuTypeId; left out (add it to RUNPOD_GPU_TYPES)", where, name)
            continue
        gpu_type_id, gpu_name, memory = known
        gpu_name = canonical_gpu_name(gpu_name, memory)  # what the catalog loader would make of it (H100-NVL -> H100)
        count = int(_number(rec["AcceleratorCount"], f"{where}: AcceleratorCount") or 0)
        zone = rec["AvailabilityZone"]
        price, spot = _prices(rec, where, warned)
        if (price is None and spot is None) or count <= 0 or not zone:
            log.warning("%s: %s has no price, GPU count or data center; left out", where, rec["InstanceType"])
            continue
        row = _row(
            provider="runpod",
            instance_type=runpod_instance_type(gpu_type_id, count),
            gpu_name=gpu_name,
            gpu_count=count,
            gpu_memory_gib=memory,
            vcpus=_number(rec["vCPUs"], f"{where}: vCPUs"),
            memory_gib=_number(rec["MemoryGiB"], f"{where}: MemoryGiB"),
            region=zone,
            price=price,
            spot=spot,
            billing=Billing.PER_SECOND,
            source=file.source,
            observed=observed,
        )
        rows.setdefault((row.instance_type, row.region), row)
    return list(rows.values())


def page_rows(path: Path = PRICE_PAGES) -> list[CatalogRow]:
    """The hand-copied price-page rows; each must name its page and date and have a region."""
    rows = load_catalog_file(path, origin=Origin.BUNDLED_CATALOG)
    for row in rows:
        if row.observed_at is None or not row.source or not row.region:
            raise BuildError(
                f"{path}: {row.provider}/{row.instance_type}: every price-page row needs source, observed_at and region"
            )
    return rows


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def render(rows: Iterable[CatalogRow]) -> str:
    """The catalog CSV (the bundled file's columns), sorted by provider, instance type and region."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in sorted(rows, key=lambda r: (r.provider, r.gpu_name, r.gpu_count, r.instance_type, r.region)):
        writer.writerow(
            [
                r.provider,
                r.instance_type,
                r.gpu_name,
                r.gpu_count,
                _fmt(r.gpu_memory_gib),
                r.vcpus or "",
                _fmt(r.memory_gib or None),
                r.region,
                _fmt(r.price_usd_per_hour),
                _fmt(r.spot_price_usd_per_hour),
                _fmt(r.storage_price_usd_per_gb_hour),
                _fmt(r.egress_price_usd_per_gb),
                r.billing.value,
                r.source,
                r.observed_at.date().isoformat() if r.observed_at else "",
            ]
        )
    return out.getvalue()


def build(
    *, lambda_file: SkyPilotFile | None, runpod_file: SkyPilotFile | None, observed: dt.date, pages: Path = PRICE_PAGES
) -> str:
    """The catalog text from the given inputs; the result parses as a catalog (checked before it is returned)."""
    rows: list[CatalogRow] = []
    if lambda_file is not None:
        rows += lambda_rows(lambda_file, observed)
    if runpod_file is not None:
        rows += runpod_rows(runpod_file, observed)
    rows += page_rows(pages)
    text = render(rows)
    try:
        parse_catalog_csv(text, origin=Origin.BUNDLED_CATALOG, name="built catalog")
    except CatalogError as err:
        raise BuildError(f"the built catalog does not parse: {err}") from None
    return text


def _skypilot(path: str | None, commit: str | None, repo_path: str, flag: str) -> SkyPilotFile | None:
    if path is None:
        return None
    if commit is None or not _COMMIT.match(commit):
        raise BuildError(f"--{flag}-commit: the 40-hex commit of {SKYPILOT_REPO} the file was read at is required")
    return SkyPilotFile(Path(path).read_text(encoding="utf-8"), commit, repo_path, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: read the inputs, write the catalog (to --out, default the shipped file)."""
    parser = argparse.ArgumentParser(prog="python -m crucible.cost.catalog_build", description=__doc__)
    parser.add_argument("--lambda", dest="lambda_file", help=f"SkyPilot {LAMBDA_PATH}")
    parser.add_argument("--lambda-commit", help="commit of skypilot-catalog the Lambda file was read at (40 hex)")
    parser.add_argument("--runpod", dest="runpod_file", help=f"SkyPilot {RUNPOD_PATH}")
    parser.add_argument("--runpod-commit", help="commit of skypilot-catalog the RunPod file was read at (40 hex)")
    parser.add_argument(
        "--observed",
        default=dt.date.today().isoformat(),
        help="date the SkyPilot files were read (ISO, default today); every row built from them records it",
    )
    parser.add_argument("--pages", default=str(PRICE_PAGES), help="hand-copied price-page rows (default: the shipped file)")
    parser.add_argument("--out", default=str(BUNDLED_CATALOG), help="where to write the catalog ('-' for stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        observed = dt.date.fromisoformat(args.observed)
        text = build(
            lambda_file=_skypilot(args.lambda_file, args.lambda_commit, LAMBDA_PATH, "lambda"),
            runpod_file=_skypilot(args.runpod_file, args.runpod_commit, RUNPOD_PATH, "runpod"),
            observed=observed,
            pages=Path(args.pages),
        )
    except (BuildError, CatalogError, OSError, ValueError) as err:
        print(f"catalog_build: {err}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {text.count(chr(10)) - 1} rows to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
