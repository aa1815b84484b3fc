"""Unit tests of live-price parsing: Lambda `instance-types` and RunPod `gpuTypes` bodies into catalog rows.

The sample bodies follow the schemas in shared/docs/providers.md; the service tests serve them from loopback fakes.
"""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from crucible.cost.catalog import Availability, Billing, Origin, load_gpu_table
from crucible.cost.refresh import RefreshError, parse_lambda, parse_runpod

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)

LAMBDA_BODY = {
    "data": {
        "gpu_1x_a10": {
            "instance_type": {
                "name": "gpu_1x_a10",
                "description": "1x A10 (24 GB PCIe)",
                "gpu_description": "A10 (24 GB PCIe)",
                "price_cents_per_hour": 75,
                "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 1400, "gpus": 1},
            },
            "regions_with_capacity_available": [
                {"name": "us-east-1", "description": "Virginia, USA"},
                {"name": "us-west-1", "description": "California, USA"},
            ],
        },
        "gpu_8x_a100_80gb_sxm4": {
            "instance_type": {
                "name": "gpu_8x_a100_80gb_sxm4",
                "description": "8x A100 (80 GB SXM4)",
                "gpu_description": "A100 (80 GB SXM4)",
                "price_cents_per_hour": 1432,
                "specs": {"vcpus": 240, "memory_gib": 1800, "storage_gib": 19500, "gpus": 8},
            },
            "regions_with_capacity_available": [],
        },
    }
}

RUNPOD_BODY = {
    "data": {
        "gpuTypes": [
            {
                "id": "NVIDIA A100 80GB PCIe",
                "displayName": "A100 PCIe",
                "memoryInGb": 80,
                "securePrice": 1.89,
                "communityPrice": 1.64,
                "lowestPrice": {"minimumBidPrice": 0.82, "uninterruptablePrice": 1.64, "stockStatus": "High"},
            },
            {
                "id": "NVIDIA L4",
                "displayName": "L4",
                "memoryInGb": 24,
                "securePrice": 0.43,
                "communityPrice": None,
                "lowestPrice": {"minimumBidPrice": None, "uninterruptablePrice": None, "stockStatus": "Low"},
            },
            {
                "id": "NVIDIA GeForce RTX 4090",
                "displayName": "RTX 4090",
                "memoryInGb": 24,
                "securePrice": None,
                "communityPrice": None,
                "lowestPrice": None,
            },
            {
                "id": "unknown",
                "displayName": "unknown",
                "memoryInGb": 0,
                "securePrice": 0,
                "communityPrice": 0,
                "lowestPrice": {"minimumBidPrice": 0, "uninterruptablePrice": 0, "stockStatus": None},
            },
        ]
    }
}


def test_parse_lambda_golden():
    rows = parse_lambda(LAMBDA_BODY, NOW, load_gpu_table())
    got = {(r.instance_type, r.region): r for r in rows}
    assert set(got) == {("gpu_1x_a10", "us-east-1"), ("gpu_1x_a10", "us-west-1"), ("gpu_8x_a100_80gb_sxm4", "")}
    a10 = got[("gpu_1x_a10", "us-east-1")]
    assert (a10.gpu_name, a10.gpu_count, a10.gpu_memory_gib, a10.vcpus, a10.memory_gib) == ("A10", 1, 24, 30, 200)
    assert a10.price_usd_per_hour == 0.75 and a10.spot_price_usd_per_hour is None
    assert (a10.availability, a10.origin, a10.observed_at, a10.billing) == (
        Availability.AVAILABLE,
        Origin.LIVE_API,
        NOW,
        Billing.PER_MINUTE,
    )
    a100 = got[("gpu_8x_a100_80gb_sxm4", "")]
    assert (a100.gpu_name, a100.gpu_count, a100.price_usd_per_hour, a100.availability) == (
        "A100-80GB",
        8,
        14.32,
        Availability.UNAVAILABLE,
    )


def test_parse_runpod_golden():
    rows = {r.instance_type: r for r in parse_runpod(RUNPOD_BODY, NOW)}
    assert set(rows) == {"NVIDIA A100 80GB PCIe", "NVIDIA L4"}  # types without any price are not offers
    a100 = rows["NVIDIA A100 80GB PCIe"]
    assert (a100.gpu_name, a100.price_usd_per_hour, a100.spot_price_usd_per_hour, a100.availability) == (
        "A100-80GB",
        1.64,
        0.82,
        Availability.AVAILABLE,
    )
    l4 = rows["NVIDIA L4"]
    assert (l4.gpu_name, l4.price_usd_per_hour, l4.spot_price_usd_per_hour, l4.availability) == (
        "L4",
        0.43,
        None,
        Availability.LOW,
    )


def _broken_lambda(path, value):
    body = copy.deepcopy(LAMBDA_BODY)
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body is not an object"),
        ({"error": {"code": "x"}}, "data is not an object"),
        (_broken_lambda(["data", "gpu_1x_a10", "instance_type", "price_cents_per_hour"], "75"), "price_cents_per_hour"),
        (_broken_lambda(["data", "gpu_1x_a10", "instance_type", "price_cents_per_hour"], -5), "price_cents_per_hour"),
        (_broken_lambda(["data", "gpu_1x_a10", "instance_type", "specs"], None), "specs is not an object"),
        (_broken_lambda(["data", "gpu_1x_a10", "regions_with_capacity_available"], "us-east-1"), "not a list"),
        (_broken_lambda(["data", "gpu_1x_a10", "instance_type", "name"], "a/b"), "not a usable name"),
    ],
)
def test_malformed_lambda_bodies_fail_whole(body, message):
    with pytest.raises(RefreshError, match=message):
        parse_lambda(body, NOW, load_gpu_table())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"errors": [{"message": "Something went wrong"}], "data": None}, "GraphQL error: Something went wrong"),
        ({"data": {"gpuTypes": None}}, "data.gpuTypes is not a list"),
        ({"data": {"gpuTypes": [{"id": "NVIDIA L4", "securePrice": "cheap"}]}}, r"gpuTypes\[0\].securePrice"),
        ({"data": {"gpuTypes": [{"id": "", "securePrice": 1}]}}, r"gpuTypes\[0\].id"),
    ],
)
def test_malformed_runpod_bodies_fail_whole(body, message):
    with pytest.raises(RefreshError, match=message):
        parse_runpod(body, NOW)
