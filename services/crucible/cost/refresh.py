"""Live prices: Lambda `GET /instance-types` and RunPod GraphQL `gpuTypes` over httpx, parsed into catalog rows.

A failed pull (network, 429, 5xx, API errors, malformed bodies) keeps the last good rows; user rows are never replaced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from crucible.cost.catalog import (
    Availability,
    Billing,
    CatalogError,
    CatalogRow,
    GpuInfo,
    Origin,
    PriceBook,
    canonical_gpu_name,
    load_catalog_file,
    rows_from_records,
    rows_to_records,
)

log = logging.getLogger(__name__)

RUNPOD_GPU_TYPES_QUERY = (
    "query GpuTypes { gpuTypes { id displayName memoryInGb securePrice communityPrice "
    "lowestPrice(input: {gpuCount: 1}) { minimumBidPrice uninterruptablePrice stockStatus } } }"
)


class RefreshError(Exception):
    """A price pull failed; the message is safe to return to callers (credentials are scrubbed)."""


class Outcome(enum.Enum):
    """What a refresh did to one provider's prices."""

    REFRESHED = "refreshed"
    KEPT_LAST_GOOD = "kept_last_good"
    NO_PRICE_API = "no_price_api"


@dataclasses.dataclass(frozen=True)
class ProviderResult:
    """The result of refreshing one provider."""

    provider: str
    outcome: Outcome
    offers_updated: int = 0
    user_edited_rows_skipped: int = 0
    error: str = ""
    prices_observed_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class PriceApi:
    """Where one provider's price API lives and the key to call it with ('' = not configured)."""

    url: str
    api_key: str = dataclasses.field(default="", repr=False)


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _describe_http_error(response: httpx.Response) -> str:
    status = response.status_code
    detail = ""
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):  # Lambda: {"error": {"code", "message", "suggestion"}}
            detail = ": " + " ".join(str(err[k]) for k in ("code", "message") if err.get(k))
        elif isinstance(body, dict) and isinstance(body.get("message"), str):
            detail = ": " + body["message"]
    except (ValueError, AttributeError):
        pass
    detail = detail[:300]
    if status == 429:
        retry = response.headers.get("retry-after")
        return f"rate limited (HTTP 429{f', Retry-After {retry}s' if retry else ''}){detail}"
    if status in (401, 403):
        return f"the API key was rejected (HTTP {status}){detail}"
    if status >= 500:
        return f"provider server error (HTTP {status}){detail}"
    return f"unexpected HTTP {status}{detail}"


async def _call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    api: PriceApi,
    *,
    timeout_s: float,
    json_body: Mapping[str, Any] | None = None,
) -> Any:
    """One HTTP call returning the decoded JSON body; every failure becomes a scrubbed RefreshError."""
    headers = {"Authorization": f"Bearer {api.api_key}", "Accept": "application/json"}
    try:
        response = await client.request(method, url, headers=headers, json=json_body, timeout=timeout_s)
    except httpx.TimeoutException:
        raise RefreshError(f"timed out after {timeout_s:g}s") from None
    except httpx.HTTPError as err:
        raise RefreshError(_scrub(f"request failed: {type(err).__name__}: {err}", api.api_key)) from None
    if response.status_code != 200:
        raise RefreshError(_scrub(_describe_http_error(response), api.api_key))
    try:
        return response.json()
    except ValueError:
        raise RefreshError("malformed response: body is not JSON") from None


def _num(value: Any, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise RefreshError(f"malformed response: {where} is not a non-negative number ({value!r:.40})")
    return float(value)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RefreshError(f"malformed response: {where} is not an object")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value:
        raise RefreshError(f"malformed response: {where} is not a usable name ({value!r:.40})")
    return value.strip()


def parse_lambda(body: Any, now: dt.datetime, gpus: Mapping[str, GpuInfo]) -> list[CatalogRow]:
    """Rows from Lambda's `GET /instance-types` body: one per region with capacity, or one UNAVAILABLE row without."""
    data = _obj(_obj(body, "body").get("data"), "data")
    rows: list[CatalogRow] = []
    for key, entry in data.items():
        where = f"data.{key}"
        it = _obj(_obj(entry, where).get("instance_type"), f"{where}.instance_type")
        name = _text(it.get("name", key), f"{where}.instance_type.name")
        cents = _num(it.get("price_cents_per_hour"), f"{where}.instance_type.price_cents_per_hour")
        specs = _obj(it.get("specs"), f"{where}.instance_type.specs")
        gpu_count = _num(specs.get("gpus"), f"{where}.instance_type.specs.gpus")
        vcpus = _num(specs.get("vcpus", 0), f"{where}.instance_type.specs.vcpus")
        memory = _num(specs.get("memory_gib", 0), f"{where}.instance_type.specs.memory_gib")
        description = it.get("gpu_description") or it.get("description") or name
        if not isinstance(description, str):
            raise RefreshError(f"malformed response: {where}.instance_type.gpu_description is not a string")
        gpu_count_i = int(gpu_count or 0)
        gpu_memory = 0.0
        gpu_name = ""
        if gpu_count_i:
            found = re.search(r"(\d+(?:\.\d+)?)\s*GB", description, re.IGNORECASE)
            gpu_name = canonical_gpu_name(re.sub(r"^\d+x\s*", "", description.strip()), float(found.group(1)) if found else None)
            gpu_memory = float(found.group(1)) if found else (gpus[gpu_name].memory_gib if gpu_name in gpus else 0.0)
        regions = entry.get("regions_with_capacity_available", [])
        if not isinstance(regions, list):
            raise RefreshError(f"malformed response: {where}.regions_with_capacity_available is not a list")
        region_names = [
            _text(
                _obj(r, f"{where}.regions_with_capacity_available[{i}]").get("name"),
                f"{where}.regions_with_capacity_available[{i}].name",
            )
            for i, r in enumerate(regions)
        ]
        placements = [(r, Availability.AVAILABLE) for r in region_names] or [("", Availability.UNAVAILABLE)]
        for region, availability in placements:
            rows.append(
                CatalogRow(
                    provider="lambda",
                    instance_type=name,
                    gpu_name=gpu_name,
                    gpu_count=gpu_count_i,
                    gpu_memory_gib=gpu_memory,
                    vcpus=int(vcpus or 0),
                    memory_gib=memory or 0.0,
                    region=region,
                    price_usd_per_hour=round((cents or 0.0) / 100.0, 6),
                    spot_price_usd_per_hour=None,
                    storage_price_usd_per_gb_hour=None,
                    egress_price_usd_per_gb=None,
                    billing=Billing.PER_MINUTE,
                    source="Lambda API GET /instance-types (price_cents_per_hour)",
                    observed_at=now,
                    origin=Origin.LIVE_API,
                    availability=availability,
                )
            )
    return rows


_STOCK = {"high": Availability.AVAILABLE, "medium": Availability.AVAILABLE, "low": Availability.LOW}


def parse_runpod(body: Any, now: dt.datetime) -> list[CatalogRow]:
    """Rows from RunPod's `gpuTypes` GraphQL answer: 1-GPU on-demand (uninterruptable) and spot (minimum bid) prices."""
    body = _obj(body, "body")
    errors = body.get("errors")
    if errors:
        messages = [str(e.get("message", e))[:200] if isinstance(e, dict) else str(e)[:200] for e in errors]
        raise RefreshError(f"GraphQL error: {'; '.join(messages)}" if isinstance(errors, list) else "GraphQL error")
    types = _obj(body.get("data"), "data").get("gpuTypes")
    if not isinstance(types, list):
        raise RefreshError("malformed response: data.gpuTypes is not a list")
    rows: list[CatalogRow] = []
    for i, entry in enumerate(types):
        where = f"data.gpuTypes[{i}]"
        entry = _obj(entry, where)
        gpu_id = _text(entry.get("id"), f"{where}.id")
        memory = _num(entry.get("memoryInGb"), f"{where}.memoryInGb", optional=True) or 0.0
        secure = _num(entry.get("securePrice"), f"{where}.securePrice", optional=True)
        community = _num(entry.get("communityPrice"), f"{where}.communityPrice", optional=True)
        lowest = entry.get("lowestPrice")
        bid = uninterruptable = None
        availability = Availability.UNKNOWN
        if lowest is not None:
            lowest = _obj(lowest, f"{where}.lowestPrice")
            bid = _num(lowest.get("minimumBidPrice"), f"{where}.lowestPrice.minimumBidPrice", optional=True)
            uninterruptable = _num(lowest.get("uninterruptablePrice"), f"{where}.lowestPrice.uninterruptablePrice", optional=True)
            stock = lowest.get("stockStatus")
            if stock is not None and not isinstance(stock, str):
                raise RefreshError(f"malformed response: {where}.lowestPrice.stockStatus is not a string")
            availability = _STOCK.get((stock or "").lower(), Availability.UNKNOWN)
        listed = [p for p in (secure, community) if p]
        on_demand = uninterruptable or (min(listed) if listed else None)
        spot = bid or None
        if on_demand is None and spot is None:
            continue  # RunPod lists GPU types it does not rent out right now without prices
        display_name = entry.get("displayName")
        display = display_name if isinstance(display_name, str) else ""
        rows.append(
            CatalogRow(
                provider="runpod",
                instance_type=gpu_id,
                gpu_name=canonical_gpu_name(gpu_id or display, memory or None),
                gpu_count=1,
                gpu_memory_gib=memory,
                vcpus=0,
                memory_gib=0.0,
                region="",
                price_usd_per_hour=on_demand,
                spot_price_usd_per_hour=spot,
                storage_price_usd_per_gb_hour=None,
                egress_price_usd_per_gb=None,
                billing=Billing.PER_SECOND,
                source="RunPod GraphQL gpuTypes (lowestPrice for 1 GPU)",
                observed_at=now,
                origin=Origin.LIVE_API,
                availability=availability,
                spot_availability=availability,
            )
        )
    return rows


async def fetch_lambda(
    client: httpx.AsyncClient, api: PriceApi, *, timeout_s: float, now: dt.datetime, gpus: Mapping[str, GpuInfo]
) -> list[CatalogRow]:
    """Pull Lambda's instance types and prices."""
    body = await _call(client, "GET", api.url.rstrip("/") + "/instance-types", api, timeout_s=timeout_s)
    return parse_lambda(body, now, gpus)


async def fetch_runpod(
    client: httpx.AsyncClient, api: PriceApi, *, timeout_s: float, now: dt.datetime, gpus: Mapping[str, GpuInfo]
) -> list[CatalogRow]:
    """Pull RunPod's GPU types and prices."""
    body = await _call(client, "POST", api.url, api, timeout_s=timeout_s, json_body={"query": RUNPOD_GPU_TYPES_QUERY})
    return parse_runpod(body, now)


Fetcher = Callable[..., Awaitable[list[CatalogRow]]]
FETCHERS: dict[str, Fetcher] = {"lambda": fetch_lambda, "runpod": fetch_runpod}
KEY_SETTINGS = {"lambda": "CRUCIBLE_COST_LAMBDA_API_KEY", "runpod": "CRUCIBLE_COST_RUNPOD_API_KEY"}


class Refresher:
    """Runs refreshes against a PriceBook: one at a time, last good rows kept on failure, live rows cached on disk."""

    def __init__(
        self,
        book: PriceBook,
        apis: Mapping[str, PriceApi],
        *,
        timeout_s: float,
        cache_path: Path | None,
        user_catalog: Path | None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.book = book
        self.apis = dict(apis)
        self.timeout_s = timeout_s
        self.cache_path = cache_path
        self.user_catalog = user_catalog
        self.clock = clock
        self._lock = asyncio.Lock()

    def reload_user_catalog(self) -> str:
        """Re-read the user's catalog file; on a parse error keep the rows in force and return the error ('' if fine)."""
        if self.user_catalog is None:
            return ""
        if not self.user_catalog.exists():
            if self.book.user_rows:
                log.warning("user catalog %s is gone; its rows no longer apply", self.user_catalog)
                self.book.set_user_rows([])
            return ""
        try:
            rows = load_catalog_file(self.user_catalog, origin=Origin.USER_CATALOG)
        except CatalogError as err:
            log.error("user catalog not reloaded, previous rows stay in force: %s", err)
            return str(err)
        self.book.set_user_rows(rows)
        return ""

    async def refresh(self, providers: Sequence[str]) -> list[ProviderResult]:
        """Refresh `providers` (already validated, any order); results in provider name order."""
        async with self._lock:
            self.reload_user_catalog()
            names = sorted(set(providers))
            now = self.clock()
            async with httpx.AsyncClient(follow_redirects=False) as client:
                pulls = await asyncio.gather(*(self._pull(client, p, now) for p in names))
            results = []
            changed = False
            for provider, pulled in zip(names, pulls, strict=True):
                if isinstance(pulled, Outcome):
                    results.append(
                        ProviderResult(provider, pulled, prices_observed_at=self.book.catalog.provider_observed_at(provider))
                    )
                elif isinstance(pulled, str):
                    log.warning("price refresh of %s failed, keeping the last good prices: %s", provider, pulled)
                    results.append(
                        ProviderResult(
                            provider,
                            Outcome.KEPT_LAST_GOOD,
                            error=pulled,
                            prices_observed_at=self.book.catalog.provider_observed_at(provider),
                        )
                    )
                else:
                    updated, skipped = self.book.apply_live(provider, pulled)
                    changed = True
                    log.info("refreshed %s prices: %d offers, %d user rows left alone", provider, updated, skipped)
                    results.append(ProviderResult(provider, Outcome.REFRESHED, updated, skipped, prices_observed_at=now))
            if changed:
                self._write_cache()
            return results

    async def _pull(self, client: httpx.AsyncClient, provider: str, now: dt.datetime) -> list[CatalogRow] | str | Outcome:
        fetch = FETCHERS.get(provider)
        if fetch is None:
            return Outcome.NO_PRICE_API
        api = self.apis.get(provider)
        if api is None or not api.url:
            return "no API URL configured"
        if not api.api_key:
            return f"no API key configured (set {KEY_SETTINGS[provider]})"
        try:
            rows = await fetch(client, api, timeout_s=self.timeout_s, now=now, gpus=self.book.catalog.gpus)
        except RefreshError as err:
            message = str(err)
            for other in self.apis.values():  # an error body may echo any configured key
                message = _scrub(message, other.api_key)
            return message
        if not rows:
            return "malformed response: no priced offers in the answer"
        return rows

    def _write_cache(self) -> None:
        if self.cache_path is None:
            return
        payload = {p: rows_to_records(rows) for p, rows in self.book.live_rows.items()}
        tmp = self.cache_path.with_suffix(".tmp")
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
            os.replace(tmp, self.cache_path)
        except OSError as err:
            log.error("could not write the live price cache %s: %s", self.cache_path, err)


def load_live_cache(path: Path | None) -> dict[str, list[CatalogRow]]:
    """Live rows saved by the last successful refreshes (empty when absent or unreadable, which is logged)."""
    if path is None or not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict):
            raise CatalogError("top level is not an object")
        return {str(p): rows_from_records(records) for p, records in payload.items()}
    except (OSError, ValueError, CatalogError) as err:
        log.error("ignoring the unreadable live price cache %s: %s", path, err)
        return {}
