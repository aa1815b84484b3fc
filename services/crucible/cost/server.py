"""Wiring of the cost server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve cost`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from pathlib import Path

from prometheus_client import CollectorRegistry

from crucible.api.cost.v1 import cost_service_pb2_grpc
from crucible.cost.budgets import AlertHub, BudgetStore
from crucible.cost.catalog import (
    BUNDLED_CATALOG,
    CatalogError,
    Origin,
    PriceBook,
    load_catalog_file,
    load_gpu_table,
    local_row,
)
from crucible.cost.config import CostConfig
from crucible.cost.metrics import BudgetCollector
from crucible.cost.refresh import PriceApi, Refresher, load_live_cache
from crucible.cost.servicer import SERVICE_DESCRIPTOR, CostServicer
from crucible.runtime.errors import ConfigError
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import BaseService

log = logging.getLogger(__name__)

LIVE_CACHE_NAME = "cost-live-prices.json"


def _host_memory_gib() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return 0.0


def build_price_book(config: CostConfig, now: dt.datetime | None = None) -> tuple[PriceBook, Path, Path]:
    """Bundled + cached live + local + user rows; returns the book, the user catalog path and the live cache path."""
    now = now or dt.datetime.now(dt.UTC)
    bundled_path = Path(config.catalog_file) if config.catalog_file else BUNDLED_CATALOG
    try:
        bundled = load_catalog_file(bundled_path, origin=Origin.BUNDLED_CATALOG)
        gpus = load_gpu_table()
    except CatalogError as err:
        raise ConfigError("catalog_file", str(err)) from None
    user_path = config.resolved_user_catalog()
    user = []
    if user_path.exists():
        try:
            user = load_catalog_file(user_path, origin=Origin.USER_CATALOG)
        except CatalogError as err:
            raise ConfigError("user_catalog_file", str(err)) from None
    local = local_row(
        gpu_name=config.local_gpu_name,
        gpu_count=config.local_gpu_count,
        gpu_memory_gib=config.local_gpu_memory_gib,
        vcpus=os.cpu_count() or 0,
        memory_gib=_host_memory_gib(),
        power_watts=config.local_power_watts,
        electricity_usd_per_kwh=config.local_electricity_usd_per_kwh,
        amortisation_usd_per_hour=config.local_amortisation_usd_per_hour,
        observed_at=now,
    )
    cache_path = config.resolved_state_dir() / LIVE_CACHE_NAME
    book = PriceBook(bundled=bundled, local=[local], user=user, gpus=gpus, live=load_live_cache(cache_path))
    return book, user_path, cache_path


class CostService(BaseService):
    """The cost service's resources: the price book, the spend database, alert watchers and the optional refresh loop."""

    def __init__(self, config: CostConfig) -> None:
        book, user_path, cache_path = build_price_book(config)
        self.store = BudgetStore(config.resolved_database_path())
        self.hub = AlertHub()
        apis = {
            "lambda": PriceApi(config.lambda_api_url, config.lambda_api_key),
            "runpod": PriceApi(config.runpod_api_url, config.runpod_api_key),
        }
        self.refresher = Refresher(book, apis, timeout_s=config.refresh_timeout_s, cache_path=cache_path, user_catalog=user_path)
        self.config = config
        self._refresh_task: asyncio.Task[None] | None = None
        servicer = CostServicer(book, self.store, self.hub, self.refresher)
        super().__init__(
            "cost", [SERVICE_DESCRIPTOR.full_name], servicer, cost_service_pb2_grpc.add_CostServiceServicer_to_server
        )
        log.info(
            "cost catalog loaded",
            extra={
                "offers": len(book.catalog.offers),
                "user_rows": len(book.user_rows),
                "user_catalog": str(user_path),
                "live_providers": sorted(book.live_rows),
                "database": str(self.store.path),
            },
        )

    async def start(self) -> None:
        """Start the background refresh loop when refresh_interval_s is set."""
        if self.config.refresh_interval_s > 0:
            self._refresh_task = asyncio.create_task(self._refresh_loop(), name="cost-refresh")

    async def _refresh_loop(self) -> None:
        while True:
            providers = sorted(self.refresher.book.catalog.providers)
            try:
                await self.refresher.refresh(providers)
            except Exception:  # a bug in one round must not end the loop; the next round tries again
                log.exception("background price refresh failed")
            await asyncio.sleep(self.config.refresh_interval_s)

    async def stop(self) -> None:
        """End watches, stop the refresh loop and close the database."""
        self.hub.close()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        self.store.close()


def create_server(config: CostConfig) -> tuple[CrucibleServer, int]:
    """Build the cost server; returns it and its bound port. A malformed catalog raises ConfigError naming the file."""
    registry = CollectorRegistry()
    service = CostService(config)
    registry.register(BudgetCollector(service.store))
    return _create_server(config, service, registry)
