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
    max_message_bytes: int = setting(
        16 * 1024 * 1024,
        "Largest request or response message in bytes; larger ones fail with RESOURCE_EXHAUSTED before they are parsed. "
        "Model requests are text: max_request_bytes of it plus framing.",
    )
    max_text_bytes: int = setting(
        32768,
        "Most UTF-8 bytes in any one string of a request (a text, an option, a choice, a prefix), checked before any "
        "tokenising: INVALID_ARGUMENT naming the field. 16 bytes per token x a 2048-token sequence; 0 = no limit.",
    )
    max_request_bytes: int = setting(
        4 * 1024 * 1024,
        "Most UTF-8 bytes of all the strings of one request (or one stream message) together; INVALID_ARGUMENT "
        "beyond it. Bounds the tokenising and memory one call can ask for; 0 = no limit.",
    )
    malloc_arena_max: int = setting(
        2,
        "glibc malloc arenas the process may create (mallopt M_ARENA_MAX), set at start; fewer arenas keep less freed "
        "memory stranded per thread after a burst. 0 leaves glibc's default (8 x cores).",
    )

    def text_limits(self) -> Any:
        from crucible.runtime.validation import TextLimits

        return TextLimits(self.max_text_bytes, self.max_request_bytes)

    def validate(self) -> None:
        super().validate()
        for name in ("max_text_bytes", "max_request_bytes", "malloc_arena_max"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must not be negative")
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
