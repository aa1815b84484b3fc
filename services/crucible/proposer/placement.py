"""Placement check of the proposer: refuse, before loading anything, models that together exceed the declared memory.

Reads each model's config.json only (no weights); the engine calls it first thing in `start`.
"""

from __future__ import annotations

import logging

from crucible.proposer.config import ProposerConfig

log = logging.getLogger(__name__)


def plan_placement(config: ProposerConfig) -> None:
    """Refuse, before loading anything, models that together exceed the declared device memory (memory_limit_gb).

    Sums the weight estimates of the generator (with its dtype and quantisation), the embedder and the NLI model,
    adds the registry's headroom, and raises PlacementError with the breakdown. Nothing is checked when no memory
    is declared (each load then checks the measured free memory).
    """
    if config.memory_limit_gb <= 0:
        return
    import transformers

    from crucible.models import (
        PlacementError,
        count_parameters,
        estimate_model_bytes,
        resolve_model,
        select_device,
        select_dtype,
    )
    from crucible.models.devices import DEFAULT_HEADROOM

    device = select_device(config.device)
    cache = config.model_cache_path()
    planned = [
        ("generator", config.model, config.dtype, config.quantize, "AutoModelForCausalLM"),
        ("embedder", config.embedding_model, config.equivalence_dtype, "none", "AutoModel"),
    ]
    if config.nli_model:
        planned.append(("nli", config.nli_model, config.equivalence_dtype, "none", "AutoModelForSequenceClassification"))
    if config.judge_model:
        planned.append(("judge", config.judge_model, config.dtype, "none", "AutoModelForCausalLM"))
    parts: list[tuple[str, int]] = []
    for label, setting, dtype_setting, quantize, auto_class in planned:
        resolved = resolve_model(setting, cache_dir=cache)
        model_config = transformers.AutoConfig.from_pretrained(resolved.path, local_files_only=True)
        counts = count_parameters(model_config, getattr(transformers, auto_class))
        dtype = select_dtype(dtype_setting, device)
        size = estimate_model_bytes(counts.total, dtype, quantize, quantizable_params=counts.quantizable)
        parts.append((f"{label} {resolved.name} ({counts.total / 1e6:.1f}M params, {dtype}, quantize={quantize})", size))
    required = int(sum(size for _, size in parts) * (1.0 + DEFAULT_HEADROOM))
    declared = int(config.memory_limit_gb * 1e9)
    breakdown = ", ".join(f"{name}: {size / 1e9:.2f} GB" for name, size in parts)
    if required > declared:
        raise PlacementError(
            f"the proposer's models need ~{required / 1e9:.2f} GB on {device} ({breakdown}, plus "
            f"{DEFAULT_HEADROOM:.0%} headroom) but memory_limit_gb declares {config.memory_limit_gb:g} GB; "
            "use quantize=int8 or nf4, dtype=bfloat16, smaller models, or raise memory_limit_gb",
            required,
            declared,
        )
    log.info("placement check passed: ~%.2f GB of %.2f GB declared (%s)", required / 1e9, declared / 1e9, breakdown)
