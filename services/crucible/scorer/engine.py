"""The scorer's engine: pin the CPU, load and warm the target model, run the shared dynamic batcher (no gRPC).

Health says SERVING only after `start` returns; `stop` drains the batcher and gives the process its CPU settings back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from crucible.runtime.batching import BatcherMetrics, DynamicBatcher
from crucible.runtime.errors import Unavailable
from crucible.runtime.info import ServiceInfo
from crucible.runtime.startup import startup_phase
from crucible.scorer.config import ScorerConfig
from crucible.scorer.placement import (
    CpuPlacement,
    apply_cpu_placement,
    restore_cpu_placement,
)
from crucible.scorer.scoring import ChoiceRequest, TargetScorer, TextRequest
from crucible.scorer.seca import SECA_PROMPT_TEMPLATE

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ScorerRuntime:
    """Everything a call needs once the scorer is up: the loaded model, the scorer, the batcher and the placement."""

    loaded: Any  # crucible.models.LoadedModel
    scorer: TargetScorer
    batcher: DynamicBatcher[Any, Any]
    placement: CpuPlacement


class ScorerEngine:
    """Owns the target model, the CPU placement and the batcher; `require_ready` hands a call the running runtime."""

    def __init__(self, config: ScorerConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry
        self.runtime: ScorerRuntime | None = None

    @property
    def ready(self) -> bool:
        """True between a finished `start` and `stop`."""
        return self.runtime is not None

    def require_ready(self) -> ScorerRuntime:
        """The runtime, or UNAVAILABLE (NOT_READY) while the model loads or after shutdown."""
        runtime = self.runtime
        if runtime is None:
            raise Unavailable("the scorer is not ready (model loading or shutting down); retry shortly", reason="NOT_READY")
        return runtime

    def info(self) -> ServiceInfo:
        """What GetInfo reports: the model, its CPU placement, the SECA template, the limits and the batching settings."""
        runtime = self.require_ready()
        limits, placement = runtime.scorer.limits, runtime.placement
        return ServiceInfo(
            models={"model": runtime.loaded.identity},
            limits={
                "max_items_per_call": limits.max_items_per_call,
                "max_choices_per_item": limits.max_choices_per_item,
                "max_tokens": limits.max_tokens,
            },
            batching=runtime.batcher.settings,
            fields={
                "intra_op_threads": placement.intra_op_threads,
                "inter_op_threads": placement.inter_op_threads,
                "cores": list(placement.cores),
                "cores_pinned": placement.pinned,
                "seca_prompt_template": SECA_PROMPT_TEMPLATE,
            },
        )

    async def start(self) -> None:
        """Pin the CPU, load the model on it, build the scorer, start the batcher and warm both kinds of pass."""
        # torch is imported only once the service starts
        from crucible.models import load_causal_lm

        cfg = self.config
        placement = apply_cpu_placement(cfg.core_list, cfg.threads, cfg.interop_threads)
        batcher: DynamicBatcher[Any, Any] | None = None
        try:
            loaded = await asyncio.to_thread(
                load_causal_lm, cfg.model, device="cpu", dtype=cfg.dtype, cache_dir=cfg.model_cache_path()
            )
            if loaded.identity.device != "cpu":
                raise RuntimeError(f"the target model landed on {loaded.identity.device}, not the CPU")
            scorer = await asyncio.to_thread(
                TargetScorer,
                loaded.model,
                loaded.tokenizer,
                cfg.limits(),
                model_max_length=loaded.max_length,
                tail_tokens=cfg.max_batch_tokens or 16384,
            )
            batcher = DynamicBatcher(
                "scorer",
                scorer.run_batch,
                cfg.batch_settings(),
                cost=lambda job: job.cost,
                group=lambda job: type(job).__name__,
                dedup_key=lambda job: job,
                metrics=BatcherMetrics(self.registry),
            )
            batcher.start()
            with startup_phase("warm_up"):  # both kinds of pass and the throughput probe
                await self._warm_up(scorer, batcher)
        except BaseException:  # failed or cancelled start: leave nothing running behind
            if batcher is not None:
                await batcher.stop()
            restore_cpu_placement(placement)
            raise
        self.runtime = ScorerRuntime(loaded, scorer, batcher, placement)
        log.info(
            "scorer ready",
            extra={
                "model": dataclasses.asdict(loaded.identity),
                "cores": list(placement.cores),
                "intra_op_threads": placement.intra_op_threads,
                "inter_op_threads": placement.inter_op_threads,
            },
        )

    @staticmethod
    async def _warm_up(scorer: TargetScorer, batcher: DynamicBatcher[Any, Any]) -> None:
        """One pass of each kind through the batcher's worker thread (first-call allocations happen here)."""
        choices = scorer.prepare_choices([ChoiceRequest(prompt="The capital of France is", choices=(" Paris", " a city"))])
        texts = scorer.prepare_texts([TextRequest(text="Warm-up text for the scorer.")])
        await batcher.submit_many([p.job for p in choices])
        await batcher.submit_many([p.job for p in texts])
        # A probe text measures the model's tokens per second: the prior of admission by expected wait. One text of
        # 128 words (~500 tokens), not two of 256: the probe was ~40 CPU-seconds of the scorer's start (issue 27); the
        # rate is refined by the first real batches.
        words = min(128, scorer.limits.max_tokens // 2)
        probe = scorer.prepare_texts([TextRequest(text=" ".join(f"probe word{i}" for i in range(words)))])
        await batcher.submit_many([p.job for p in probe])  # the first pass at this length allocates; not the rate
        batcher.throughput.forget()
        await batcher.submit_many([p.job for p in probe])
        log.info("scorer throughput %.0f tokens/s", batcher.throughput.rate or 0.0)

    async def stop(self) -> None:
        """Fail waiting items with UNAVAILABLE, let the running batch finish, restore the CPU placement."""
        runtime, self.runtime = self.runtime, None
        if runtime is None:
            return
        await runtime.batcher.stop()
        restore_cpu_placement(runtime.placement)
