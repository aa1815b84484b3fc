"""Loaders that turn a model setting into a ready model and tokenizer on a device, plus sentence embedding.

Every load is offline (local_files_only), checks placement before touching weights and stamps an identity.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crucible.runtime.startup import startup_phase

from .devices import (
    check_placement,
    dtype_name,
    enable_tf32,
    select_device,
    select_dtype,
    validate_quantize,
)
from .errors import IncompatibleModelError, InvalidModelSettingError, ModelError, QuantizationUnavailableError
from .registry import DEFAULT_CAUSAL_LM, DEFAULT_EMBEDDING_MODEL, ResolvedModel, resolve_model

logger = logging.getLogger(__name__)

# Tokenizers without a usable model_max_length report a huge sentinel instead.
_UNBOUNDED_LENGTH = 1_000_000


@dataclass(frozen=True)
class ModelIdentity:
    """What to stamp on every output computed with a model: the setting, its revision and how it runs."""

    name: str
    revision: str
    dtype: str
    device: str
    quantization: str


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on its device, with its tokenizer (pad token always set) and identity.

    `num_parameters` counts the unquantised parameters (from the config); `max_length` is the longest input in
    tokens the model accepts (None when unknown).
    """

    model: Any
    tokenizer: Any
    identity: ModelIdentity
    num_parameters: int
    path: Path
    max_length: int | None


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model built from its config: `total`, and `quantizable` (linear weights but the output head)."""

    total: int
    quantizable: int


def count_parameters(config: Any, auto_class: Any) -> ParameterCount:
    """Count parameters by building the model on the meta device (no memory, a fraction of a second even for 8B)."""
    try:
        with torch.device("meta"):
            model = auto_class.from_config(config)
    except Exception as exc:
        raise IncompatibleModelError(f"cannot build a {auto_class.__name__} from this config: {exc}") from exc
    total = sum(parameter.numel() for parameter in model.parameters())  # shared (tied) tensors count once
    output_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantizable = sum(
        module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear) and module is not output_head
    )
    return ParameterCount(total=total, quantizable=quantizable)


def _quantization_config(quantize: str, dtype: torch.dtype) -> Any:
    if quantize == "none":
        return None
    for module in ("bitsandbytes", "accelerate"):
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise QuantizationUnavailableError(
                f"quantize={quantize} needs the {module} package, which could not be imported ({exc}); "
                f"install it with: pip install {module}, or use quantize=none"
            ) from exc
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _architecture_names(mapping: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for value in mapping.values():
        names.update(value if isinstance(value, (list, tuple)) else [value])
    return names


def _check_architecture(resolved: ResolvedModel, config: Any, wanted: str) -> None:
    """Refuse a folder whose checkpoint is a different kind of model (its head would be randomly initialised)."""
    from transformers.models.auto import modeling_auto

    mapping = {
        "causal-lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "sequence-classifier": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    }[wanted]
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and _architecture_names(mapping).isdisjoint(architectures):
        raise IncompatibleModelError(
            f"model {resolved.name!r} at {resolved.path} is a {', '.join(architectures)}, not a {wanted} model; "
            "choose a model folder saved with the matching head"
        )


def _max_length(config: Any, tokenizer: Any, folder: Path) -> int | None:
    sentence_config = folder / "sentence_bert_config.json"
    if sentence_config.is_file():
        try:
            value = json.loads(sentence_config.read_text(encoding="utf-8")).get("max_seq_length")
        except (OSError, ValueError, AttributeError):
            value = None
        if isinstance(value, int) and value > 0:
            return value
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions and "roberta" in str(getattr(config, "model_type", "")):
        positions -= 2  # RoBERTa's position ids start after the padding index
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < _UNBOUNDED_LENGTH:
        return min(declared, positions) if positions else declared
    return positions or None


def _set_pad_token(model: Any, tokenizer: Any) -> None:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        return
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(generation, "pad_token_id", None) is None:
        generation.pad_token_id = pad_id


def _load(
    setting: str,
    auto_class_name: str,
    wanted_kind: str | None,
    *,
    device: str,
    dtype: str,
    quantize: str,
    cache_dir: Path | None,
    prepare: bool,
    available_bytes: int | None,
) -> LoadedModel:
    started = time.perf_counter()
    resolved = resolve_model(setting, cache_dir=cache_dir, prepare=prepare)
    torch_device = select_device(device)
    torch_dtype = select_dtype(dtype, torch_device)
    quantize = validate_quantize(quantize)

    with startup_phase("import_transformers"):  # the library and the architecture's modules: most of a cold load
        import transformers

        auto_class = getattr(transformers, auto_class_name)
        config = transformers.AutoConfig.from_pretrained(resolved.path, local_files_only=True)
        if wanted_kind is not None:
            _check_architecture(resolved, config, wanted_kind)
        counts = count_parameters(config, auto_class)
    placement = check_placement(
        counts.total, torch_dtype, quantize, torch_device, available_bytes, quantizable_params=counts.quantizable
    )
    quantization_config = _quantization_config(quantize, torch_dtype)
    if torch_device.type == "cuda" and torch_dtype == torch.float32:
        enable_tf32()

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True, "device_map": {"": torch_device}}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        with startup_phase("weights"):
            model = auto_class.from_pretrained(resolved.path, **kwargs)
        with startup_phase("tokenizer"):
            tokenizer = transformers.AutoTokenizer.from_pretrained(resolved.path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {resolved.name!r} from {resolved.path}: {exc}") from exc
    model.eval()
    _set_pad_token(model, tokenizer)

    identity = ModelIdentity(
        name=resolved.name,
        revision=resolved.revision,
        dtype=dtype_name(torch_dtype),
        device=str(torch_device),
        quantization=quantize,
    )
    logger.info(
        "loaded %s (%s) as %s on %s, quantize=%s, %d parameters, needs ~%.2f GB of %s GB free, in %.1f s",
        identity.name,
        identity.revision,
        identity.dtype,
        identity.device,
        quantize,
        counts.total,
        placement.required_bytes / 1e9,
        "?" if placement.available_bytes is None else f"{placement.available_bytes / 1e9:.1f}",
        time.perf_counter() - started,
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        identity=identity,
        num_parameters=counts.total,
        path=resolved.path,
        max_length=_max_length(config, tokenizer, resolved.path),
    )


def load_causal_lm(
    setting: str = DEFAULT_CAUSAL_LM,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    cache_dir: Path | None = None,
    prepare: bool = False,
    available_bytes: int | None = None,
) -> LoadedModel:
    """Load a causal language model (packaged alias, local folder or cached hub id) ready for scoring and generation.

    `quantize` is none, int8 or nf4 (bitsandbytes; compute dtype = `dtype`). `available_bytes` overrides the
    measured free memory for the placement check. `prepare=True` converts a packaged model on first use.
    """
    return _load(
        setting,
        "AutoModelForCausalLM",
        "causal-lm",
        device=device,
        dtype=dtype,
        quantize=quantize,
        cache_dir=cache_dir,
        prepare=prepare,
        available_bytes=available_bytes,
    )


def load_sequence_classifier(
    setting: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str = "none",
    cache_dir: Path | None = None,
    prepare: bool = False,
    available_bytes: int | None = None,
) -> LoadedModel:
    """Load a sequence classifier (a supervised AI-text detector, an NLI cross-encoder) from a local folder.

    The folder must hold a checkpoint with a classification head; an encoder without one is refused rather than
    given a randomly initialised head.
    """
    return _load(
        setting,
        "AutoModelForSequenceClassification",
        "sequence-classifier",
        device=device,
        dtype=dtype,
        quantize=quantize,
        cache_dir=cache_dir,
        prepare=prepare,
        available_bytes=available_bytes,
    )


def load_embedding_model(
    setting: str = DEFAULT_EMBEDDING_MODEL,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | None = None,
    available_bytes: int | None = None,
) -> LoadedModel:
    """Load a sentence-embedding encoder (MiniLM by default) for use with `embed`."""
    return _load(
        setting,
        "AutoModel",
        None,
        device=device,
        dtype=dtype,
        quantize="none",
        cache_dir=cache_dir,
        prepare=False,
        available_bytes=available_bytes,
    )


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average `hidden` [B, T, D] over the positions where `attention_mask` [B, T] is 1, in float32 -> [B, D]."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1.0)


def embed(
    loaded: LoadedModel,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
) -> torch.Tensor:
    """Sentence embeddings [N, D] in float32 on the CPU: mean pooling over the attention mask, then L2 normalisation.

    Texts are batched by length to limit padding; the output keeps the input order. Inputs longer than
    `max_length` (default: the model's) are truncated.
    """
    if isinstance(texts, str):
        raise InvalidModelSettingError("texts must be a sequence of strings, not one string")
    if batch_size < 1:
        raise InvalidModelSettingError(f"batch_size must be >= 1, got {batch_size}")
    items = list(texts)
    model, tokenizer = loaded.model, loaded.tokenizer
    if not items:
        return torch.empty((0, int(getattr(model.config, "hidden_size", 0))), dtype=torch.float32)
    limit = max_length or loaded.max_length
    device = next(model.parameters()).device
    order = sorted(range(len(items)), key=lambda index: len(items[index]), reverse=True)
    result: torch.Tensor | None = None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            encoded = tokenizer(
                [items[index] for index in indices],
                padding=True,
                truncation=limit is not None,
                max_length=limit,
                return_tensors="pt",
            ).to(device)
            hidden = model(**encoded).last_hidden_state
            pooled = torch.nn.functional.normalize(mean_pool(hidden, encoded["attention_mask"]), p=2, dim=-1)
            if result is None:
                result = torch.empty((len(items), pooled.shape[-1]), dtype=torch.float32)
            result[torch.tensor(indices)] = pooled.cpu()
    assert result is not None  # items is not empty
    return result
