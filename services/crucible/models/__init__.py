"""The model registry: one place that resolves a model setting, picks device and dtype, and loads models.

Services and the CLI import from here; see registry.py (resolution, preparation), devices.py and loading.py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .devices import (
        Placement,
        available_memory_bytes,
        check_placement,
        cpu_supports_bf16,
        dtype_name,
        enable_tf32,
        estimate_model_bytes,
        read_cpu_flags,
        select_device,
        select_dtype,
        validate_quantize,
    )
    from .errors import (
        DeviceUnavailableError,
        IncompatibleModelError,
        InvalidModelSettingError,
        ModelError,
        ModelNotFoundError,
        ModelNotPreparedError,
        ModelPackageMissingError,
        PlacementError,
        QuantizationUnavailableError,
    )
    from .loading import (
        LoadedModel,
        ModelIdentity,
        ParameterCount,
        count_parameters,
        embed,
        load_causal_lm,
        load_embedding_model,
        load_sequence_classifier,
        mean_pool,
    )
    from .registry import (
        DEFAULT_CAUSAL_LM,
        DEFAULT_DETECTOR_MODEL,
        DEFAULT_EMBEDDING_MODEL,
        MODEL_ALIASES,
        PackagedModel,
        PreparedModel,
        ResolvedModel,
        converted_model_dir,
        default_cache_dir,
        folder_revision,
        prepare_models,
        resolve_model,
    )

# Submodules are imported on first use, so that `crucible models prepare` on a prepared cache and other
# light callers do not pay for importing torch and transformers.
_EXPORTS = {
    "DEFAULT_CAUSAL_LM": "registry",
    "DEFAULT_DETECTOR_MODEL": "registry",
    "DEFAULT_EMBEDDING_MODEL": "registry",
    "DeviceUnavailableError": "errors",
    "IncompatibleModelError": "errors",
    "InvalidModelSettingError": "errors",
    "LoadedModel": "loading",
    "MODEL_ALIASES": "registry",
    "ModelError": "errors",
    "ModelIdentity": "loading",
    "ModelNotFoundError": "errors",
    "ModelNotPreparedError": "errors",
    "ModelPackageMissingError": "errors",
    "PackagedModel": "registry",
    "ParameterCount": "loading",
    "Placement": "devices",
    "PlacementError": "errors",
    "PreparedModel": "registry",
    "QuantizationUnavailableError": "errors",
    "ResolvedModel": "registry",
    "available_memory_bytes": "devices",
    "check_placement": "devices",
    "converted_model_dir": "registry",
    "count_parameters": "loading",
    "cpu_supports_bf16": "devices",
    "default_cache_dir": "registry",
    "dtype_name": "devices",
    "embed": "loading",
    "enable_tf32": "devices",
    "estimate_model_bytes": "devices",
    "folder_revision": "registry",
    "load_causal_lm": "loading",
    "load_embedding_model": "loading",
    "load_sequence_classifier": "loading",
    "mean_pool": "loading",
    "prepare_models": "registry",
    "read_cpu_flags": "devices",
    "resolve_model": "registry",
    "select_device": "devices",
    "select_dtype": "devices",
    "validate_quantize": "devices",
}
__all__ = [
    "DEFAULT_CAUSAL_LM",
    "DEFAULT_DETECTOR_MODEL",
    "DEFAULT_EMBEDDING_MODEL",
    "MODEL_ALIASES",
    "DeviceUnavailableError",
    "IncompatibleModelError",
    "InvalidModelSettingError",
    "LoadedModel",
    "ModelError",
    "ModelIdentity",
    "ModelNotFoundError",
    "ModelNotPreparedError",
    "ModelPackageMissingError",
    "PackagedModel",
    "ParameterCount",
    "Placement",
    "PlacementError",
    "PreparedModel",
    "QuantizationUnavailableError",
    "ResolvedModel",
    "available_memory_bytes",
    "check_placement",
    "converted_model_dir",
    "count_parameters",
    "cpu_supports_bf16",
    "default_cache_dir",
    "dtype_name",
    "embed",
    "enable_tf32",
    "estimate_model_bytes",
    "folder_revision",
    "load_causal_lm",
    "load_embedding_model",
    "load_sequence_classifier",
    "mean_pool",
    "prepare_models",
    "read_cpu_flags",
    "resolve_model",
    "select_device",
    "select_dtype",
    "validate_quantize",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
