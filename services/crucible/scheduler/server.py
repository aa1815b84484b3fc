"""Wiring of the scheduler server: config in, a bound CrucibleServer out (health, reflection, metrics, shutdown).

Run it with `crucible serve scheduler`; tests call `create_server(config)` with port 0.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry

from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc
from crucible.models.registry import default_cache_dir
from crucible.runtime.server import CrucibleServer
from crucible.runtime.server import create_server as _create_server
from crucible.runtime.service import BaseService
from crucible.scheduler.config import SchedulerConfig
from crucible.scheduler.engine.coordinator import Engine, EngineSettings
from crucible.scheduler.engine.jobspec import CodeLimits
from crucible.scheduler.engine.offers import OfferSource, UnpricedOfferSource, local_gpu_count
from crucible.scheduler.engine.pricing import CostServicePricing
from crucible.scheduler.objects.inputs import InputLimits
from crucible.scheduler.persistence.jobdb import AsyncJobStore, JobStore
from crucible.scheduler.providers.base import Provider
from crucible.scheduler.providers.credentials import SECRETS_FILE_ENV, protect_process
from crucible.scheduler.providers.registry import ProviderRegistry
from crucible.scheduler.servicer import SERVICE_DESCRIPTOR, SchedulerServicer

log = logging.getLogger(__name__)


class SchedulerService(BaseService):
    """Opens the job store and reconciles unfinished jobs in start(); health is SERVING only after that."""

    def __init__(self, config: SchedulerConfig, providers: Mapping[str, Provider] | None = None) -> None:
        self.config = config
        self.engine: Engine | None = None
        self._providers = dict(providers or {})
        servicer = _LazyServicer(self)
        super().__init__(
            "scheduler",
            [SERVICE_DESCRIPTOR.full_name],
            servicer,
            scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server,
        )

    async def start(self) -> None:
        cfg = self.config
        gpus = cfg.local_gpus if cfg.local_gpus >= 0 else local_gpu_count()
        provider_settings = cfg.provider_settings()
        local = provider_settings.setdefault("local", {})
        for key, value in _local_settings(cfg).items():  # the settings file may choose a Python or uid range too
            if key in ("hidden", "store_dir") or value or key not in local:
                local[key] = value
        registry = ProviderRegistry(cfg.providers, provider_settings, instances=self._providers)
        pricing: OfferSource = (
            CostServicePricing(cfg.cost_channel_config(), local_gpus=gpus) if cfg.cost_address else UnpricedOfferSource(gpus)
        )
        store = AsyncJobStore(JobStore(cfg.resolved_database(), synchronous=cfg.sqlite_synchronous))
        settings = EngineSettings(
            state_dir=cfg.resolved_state_dir(),
            poll_interval_s=cfg.poll_interval_s,
            usage_interval_s=cfg.usage_interval_s,
            default_max_duration_s=cfg.default_max_duration_s,
            default_budget_scope=cfg.default_budget_scope,
            max_recoveries=cfg.max_recoveries,
            transient_retries=cfg.transient_retries,
            code_limits=CodeLimits(cfg.resolved_code_roots(), cfg.code_max_bytes, cfg.code_max_files),
            log_cap_bytes=cfg.log_cap_bytes,
            store=cfg.store_settings(),
            artifact_retention_days=cfg.artifact_retention_days,
            artifact_max_bytes=cfg.artifact_max_bytes,
            code_url_ttl_s=cfg.code_url_ttl_s,
            input_limits=InputLimits(tuple(_input_root(r) for r in cfg.input_roots), cfg.input_max_bytes, cfg.input_max_files),
        )
        _owner_only(cfg.resolved_database())
        engine = Engine(settings, store, registry, pricing)
        registry.statuses()  # every enabled adapter reads its keys now (and the local sandbox is tested) ...
        if cfg.protect_process:  # ... so they can leave the environment
            moved = protect_process()
            log.info("process not dumpable; provider keys moved out of the environment: %s", ", ".join(moved) or "none")
        resumed = await engine.start()
        self.engine = engine
        log.info(
            "scheduler ready",
            extra={
                "state_dir": str(settings.state_dir),
                "resumed_jobs": resumed,
                "cost_address": cfg.cost_address or "(none: cost unknown)",
            },
        )

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None


def _local_settings(cfg: SchedulerConfig) -> dict[str, str]:
    """The local provider's sandbox settings: what jobs run with, and the scheduler's own files they never see."""
    store = cfg.store_settings().url
    store_dir = store[len("file://") :] if store.startswith("file://") else ""
    hidden = [str(cfg.resolved_state_dir()), str(cfg.resolved_database().parent), os.environ.get(SECRETS_FILE_ENV, "")]
    hidden += [cfg.auth_token_file, cfg.cost_token_file, cfg.tls_key_file, cfg.provider_settings_file]
    return {
        "uid_range": cfg.job_uid_range,
        "python": cfg.local_python,
        "read_only": json.dumps(list(cfg.local_read_only)),
        "hidden": json.dumps([h for h in hidden if h]),
        "store_dir": store_dir,
        "unsafe": "true" if cfg.unsafe_local_jobs else "",
        "model_cache": str(default_cache_dir()),
    }


def _input_root(root: str) -> str:
    """An input root as compared with input URIs: file:// roots resolved (symlinks followed), s3:// as given."""
    if root.startswith("file://"):
        return "file://" + str(Path(root[len("file://") :]).resolve())
    return root


def _owner_only(database: os.PathLike[str]) -> None:
    """The job database (specs, env values, handles) readable by the scheduler's user only, WAL files included."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(f"{os.fspath(database)}{suffix}", 0o600)
        except FileNotFoundError:
            pass


class _LazyServicer(SchedulerServicer):
    """The servicer before start() has built the engine answers UNAVAILABLE (health says NOT_SERVING meanwhile)."""

    def __init__(self, service: SchedulerService) -> None:
        self._service = service

    @property
    def engine(self) -> Engine:
        from crucible.runtime.errors import Unavailable

        if self._service.engine is None:
            raise Unavailable("the scheduler is starting or stopping", reason="NOT_READY")
        return self._service.engine


def create_server(config: SchedulerConfig, *, providers: Mapping[str, Provider] | None = None) -> tuple[CrucibleServer, int]:
    """Build the scheduler server; returns it and its bound port. `providers` adds or replaces adapter instances."""
    registry = CollectorRegistry()
    return _create_server(config, SchedulerService(config, providers), registry)
