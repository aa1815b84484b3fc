"""The catalog builder: SkyPilot's published CSV formats in, dated catalog rows with regions and sources out."""

from __future__ import annotations

import datetime as dt

import pytest

from crucible.cost.catalog import Billing, Origin, load_catalog_file, parse_catalog_csv
from crucible.cost.catalog_build import (
    PRICE_PAGES,
    BuildError,
    SkyPilotFile,
    build,
    lambda_rows,
    main,
    page_rows,
    parse_runpod_instance_type,
    runpod_instance_type,
    runpod_rows,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DAY = dt.date(2026, 12, 3)
A10_INFO = (
    "\"{'Gpus': [{'Name': 'A10', 'Manufacturer': 'NVIDIA', 'Count': 1.0, 'MemoryInfo': {'SizeInMiB': 24576}}], "
    "'TotalGpuMemoryInMiB': 24576}\""
)
A100_INFO = A10_INFO.replace("A10'", "A100'").replace("24576", "40960").replace("1.0,", "8.0,")
LAMBDA = (
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice\n"
    "cpu_4x_general,,,4.0,16.0,0.2,us-east-1,,\n"
    f"gpu_1x_a10,A10,1.0,30.0,200.0,0.75,us-east-1,{A10_INFO},\n"
    f"gpu_1x_a10,A10,1.0,30.0,200.0,0.75,europe-central-1,{A10_INFO},\n"
    f"gpu_1x_a10,A10,1.0,30.0,200.0,0.99,us-east-1,{A10_INFO},\n"  # a repeated (type, region) keeps the first
    f"gpu_8x_a100,A100,8.0,124.0,1800.0,10.32,us-west-1,{A100_INFO},\n"
)
RUNPOD = (
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Region,SpotPrice,Price,AvailabilityZone\n"
    "1x_A40_SECURE,A40,1.0,9.0,48.0,A40,US,,0.44,US-TX-1\n"
    "1x_A40_SECURE,A40,1.0,9.0,48.0,A40,NO,,0.44,EU-SE-1\n"
    "1x_A40_SECURE,A40,1.0,9.0,48.0,A40,SE,,0.44,EU-SE-1\n"
    "2x_H100-SXM_SECURE,H100-SXM,2.0,40.0,160.0,H100-SXM,US,5.38,5.98,US-GA-1\n"
    "1x_L40S_SECURE,L40S,1.0,12.0,62.0,L40S,US,0.86,0.43,US-KS-2\n"
    "1x_Z9000_SECURE,Z9000,1.0,9.0,48.0,Z9000,US,,9.99,US-TX-1\n"
    "cpu3c-2-4,,,2.0,4.0,,US,,0.06,US-TX-1\n"
)


def _file(text: str, path: str) -> SkyPilotFile:
    return SkyPilotFile(text, COMMIT, path, "vms.csv")


def test_lambda_rows_keep_every_region_and_record_the_commit():
    rows = lambda_rows(_file(LAMBDA, "catalogs/v7/lambda/vms.csv"), DAY)
    by_key = {(r.instance_type, r.region): r for r in rows}
    assert set(by_key) == {("gpu_1x_a10", "us-east-1"), ("gpu_1x_a10", "europe-central-1"), ("gpu_8x_a100", "us-west-1")}
    a10 = by_key[("gpu_1x_a10", "us-east-1")]
    assert (a10.gpu_name, a10.gpu_count, a10.gpu_memory_gib, a10.vcpus, a10.memory_gib) == ("A10", 1, 24.0, 30, 200.0)
    assert (a10.price_usd_per_hour, a10.spot_price_usd_per_hour, a10.billing) == (0.75, None, Billing.PER_MINUTE)
    assert a10.source == f"github.com/skypilot-org/skypilot-catalog@{COMMIT}:catalogs/v7/lambda/vms.csv"
    assert a10.observed_at == dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    assert by_key[("gpu_8x_a100", "us-west-1")].gpu_name == "A100-40GB"  # 40 GiB from GpuInfo


def test_runpod_rows_are_per_data_center_with_launchable_gpu_type_ids(caplog):
    rows = runpod_rows(_file(RUNPOD, "catalogs/v7/runpod/vms.csv"), DAY)
    by_key = {(r.instance_type, r.region): r for r in rows}
    # EU-SE-1 is listed under two countries: one row; the unknown GPU and the CPU-only type are left out.
    assert set(by_key) == {
        ("NVIDIA A40", "US-TX-1"),
        ("NVIDIA A40", "EU-SE-1"),
        ("2x NVIDIA H100 80GB HBM3", "US-GA-1"),
        ("NVIDIA L40S", "US-KS-2"),
    }
    h100 = by_key[("2x NVIDIA H100 80GB HBM3", "US-GA-1")]
    assert (h100.gpu_name, h100.gpu_count, h100.gpu_memory_gib) == ("H100", 2, 80)
    assert (h100.price_usd_per_hour, h100.spot_price_usd_per_hour, h100.billing) == (5.98, 5.38, Billing.PER_SECOND)
    l40s = by_key[("NVIDIA L40S", "US-KS-2")]
    assert (l40s.price_usd_per_hour, l40s.spot_price_usd_per_hour) == (0.43, None)  # spot above on-demand: dropped
    assert any("Z9000" in r.getMessage() for r in caplog.records)
    assert any("spot price 0.86 above" in r.getMessage() for r in caplog.records)


def test_runpod_instance_type_round_trips():
    for gpu, n in (("NVIDIA A40", 1), ("NVIDIA H100 80GB HBM3", 8)):
        assert parse_runpod_instance_type(runpod_instance_type(gpu, n)) == (gpu, n)


def test_build_parses_as_a_catalog_and_includes_the_price_pages(tmp_path):
    text = build(
        lambda_file=_file(LAMBDA, "catalogs/v7/lambda/vms.csv"),
        runpod_file=_file(RUNPOD, "catalogs/v7/runpod/vms.csv"),
        observed=DAY,
    )
    rows = parse_catalog_csv(text, origin=Origin.BUNDLED_CATALOG, name="built")
    assert {r.provider for r in rows} == {"lambda", "runpod", "modal", "paperspace", "replicate"}
    assert all(r.region and r.source and r.observed_at for r in rows)
    assert len([r for r in rows if r.provider in ("lambda", "runpod")]) == 7


def test_not_a_skypilot_file_is_refused_with_its_name():
    with pytest.raises(BuildError, match=r"vms.csv:1: not a SkyPilot v7 catalog: missing column\(s\) AvailabilityZone"):
        runpod_rows(_file(RUNPOD.replace("AvailabilityZone", "Zone"), "catalogs/v7/runpod/vms.csv"), DAY)


def test_price_page_rows_need_a_page_a_date_and_a_region(tmp_path):
    assert all(r.observed_at and "https://" in r.source and r.region for r in page_rows(PRICE_PAGES))
    bad = tmp_path / "pages.csv"
    bad.write_text(
        "provider,instance_type,gpu_name,region,price_usd_per_hour,source,observed_at\n"
        "modal,H100,H100,any,3.95,https://modal.com/pricing,\n"
    )
    with pytest.raises(BuildError, match="needs source, observed_at and region"):
        page_rows(bad)


def test_command_line_writes_the_catalog_and_requires_the_commit(tmp_path, capsys):
    lam = tmp_path / "lambda.csv"
    lam.write_text(LAMBDA)
    out = tmp_path / "catalog.csv"
    assert main(["--lambda", str(lam), "--lambda-commit", COMMIT, "--observed", "2026-12-03", "--out", str(out)]) == 0
    rows = load_catalog_file(out, origin=Origin.BUNDLED_CATALOG)
    assert {r.provider for r in rows} >= {"lambda", "modal"}
    assert main(["--lambda", str(lam), "--out", str(out)]) == 2
    assert "--lambda-commit" in capsys.readouterr().err
