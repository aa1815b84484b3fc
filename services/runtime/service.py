"""Base classes for the services' side of the runtime contract: servicer registration and start/stop hooks.

`ModelServerConfig` adds the model settings the three model-serving services share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from crucible.runtime.config import ServerConfig, setting
from crucible.runtime.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelServerConfig(ServerConfig):
    """Settings shared by the services that run a causal language model (detector, proposer, target scorer)."""

    model: str = setting(
        "smollm2-135m-instruct",
        "Causal LM: a registry alias (smollm2-135m-instruct) or a local Hugging Face folder (e.g. gpt-neo-2.7B, Llama-3-8B).",
    )
    device: str = setting("auto", "Where the model runs: cpu, cuda, cuda:N, or auto (CUDA when present).")
    dtype: str = setting(
        "auto", "Weight dtype: float32, bfloat16, or auto (bf16 on CUDA and on CPUs with native bf16, else fp32).",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    model_cache_dir: str = setting("", "Where prepared models live; empty means $CRUCIBLE_CACHE_DIR or ~/.cache/crucible.")

    def validate(self) -> None:
        super().validate()
        if not self.model.strip():
            raise ConfigError("model", "must name a registry alias or a local folder")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError("device", f"must be cpu, cuda, cuda:N or auto, got {self.device!r}")


class BaseService:
    """Registers one servicer and runs optional async start/stop hooks; subclasses override `start`/`stop`."""

    def __init__(
        self,
        short_name: str,
        service_names: Sequence[str],
        servicer: Any,
        add_servicer: Callable[[Any, grpc.aio.Server], None],
    ) -> None:
        self.short_name = short_name
        self.service_names = tuple(service_names)
        self.servicer = servicer
        self._add_servicer = add_servicer

    def add_to_server(self, server: grpc.aio.Server) -> None:
        self._add_servicer(self.servicer, server)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class ModelService(BaseService):
    """A service whose readiness is its causal LM being loaded (in a worker thread, so the event loop keeps serving health)."""

    def __init__(self, config: ModelServerConfig, short_name: str, service_names: Sequence[str], servicer: Any,
                 add_servicer: Callable[[Any, grpc.aio.Server], None]) -> None:
        super().__init__(short_name, service_names, servicer, add_servicer)
        self.config = config
        self.loaded: Any = None

    async def start(self) -> None:
        from crucible.models import load_causal_lm  # torch is imported only by services that run models

        cfg = self.config
        self.loaded = await asyncio.to_thread(
            load_causal_lm, cfg.model, device=cfg.device, dtype=cfg.dtype, cache_dir=cfg.model_cache_dir or None
        )
        log.info("%s model loaded", self.short_name, extra={"model": dataclasses.asdict(self.loaded.identity)})

    async def stop(self) -> None:
        self.loaded = None
