"""Device, dtype and memory decisions for model loading: which device, which precision, and whether it fits.

Pure functions of their inputs (CPU flags, free memory) so that every branch is testable on a CPU-only machine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DeviceUnavailableError, InvalidModelSettingError, PlacementError

logger = logging.getLogger(__name__)

DEVICE_SETTINGS = ("auto", "cpu", "cuda", "cuda:N")
DTYPE_SETTINGS = ("auto", "float32", "bfloat16", "float16")
QUANTIZE_SETTINGS = ("none", "int8", "nf4")

_DTYPE_ALIASES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
# CPU feature flags that mean bf16 matrix products run natively (x86 AVX512-BF16 / AMX, Arm BF16).
_NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})

# Bytes per quantised weight: int8 stores one byte; nf4 stores half a byte plus one fp32 absmax per block of 64.
_QUANTIZED_BYTES_PER_PARAM = {"int8": 1.0, "nf4": 0.5 + 4.0 / 64.0}
# Extra room on top of the weights for activations, KV cache, CUDA context and allocator slack.
DEFAULT_HEADROOM = 0.2


def select_device(setting: str) -> torch.device:
    """Turn a device setting (`cpu`, `cuda`, `cuda:N` or `auto`) into a usable `torch.device`.

    `auto` picks the current CUDA device when one is available, else the CPU. Asking for CUDA on a machine
    without it raises `DeviceUnavailableError` instead of failing later inside torch.
    """
    value = setting.strip().lower()
    if value == "cpu":
        return torch.device("cpu")
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if value == "cuda" or value.startswith("cuda:"):
        index_text = value.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise InvalidModelSettingError(f"device {setting!r}: the CUDA index must be a number, as in 'cuda:0'")
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceUnavailableError(
                f"device {setting!r} was requested but CUDA is not available here (torch {torch.__version__} is "
                f"{build}; no usable GPU or driver was found). Use device 'cpu', or 'auto' to fall back to the CPU."
            )
        count = torch.cuda.device_count()
        index = int(index_text) if index_text else torch.cuda.current_device()
        if index >= count:
            raise DeviceUnavailableError(
                f"device {setting!r} was requested but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    raise InvalidModelSettingError(f"device {setting!r} is not one of {', '.join(DEVICE_SETTINGS)}")


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Return the CPU feature flags listed in `cpuinfo` (x86 `flags`, Arm `Features`); empty if unreadable."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_supports_bf16(cpu_flags: Iterable[str] | None = None) -> bool:
    """True when the CPU computes bf16 natively; `cpu_flags` defaults to those in /proc/cpuinfo."""
    flags = read_cpu_flags() if cpu_flags is None else frozenset(cpu_flags)
    return not _NATIVE_BF16_CPU_FLAGS.isdisjoint(flags)


def select_dtype(setting: str, device: torch.device, *, cpu_flags: Iterable[str] | None = None) -> torch.dtype:
    """Turn a dtype setting (`float32`, `bfloat16`, `float16` or `auto`) into a `torch.dtype` for `device`.

    `auto` means bf16 where the hardware runs it natively (CUDA with `is_bf16_supported`, or a CPU with
    AVX512-BF16/AMX/Arm BF16 in `cpu_flags`, read from /proc/cpuinfo by default) and float32 elsewhere.
    float16 on the CPU is refused: most CPU kernels lack it and the rest are slow.
    """
    value = setting.strip().lower()
    if value == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        else:
            native = cpu_supports_bf16(cpu_flags)
        return torch.bfloat16 if native else torch.float32
    dtype = _DTYPE_ALIASES.get(value)
    if dtype is None:
        raise InvalidModelSettingError(f"dtype {setting!r} is not one of {', '.join(DTYPE_SETTINGS)}")
    if dtype is torch.float16 and device.type == "cpu":
        raise DeviceUnavailableError(
            "dtype 'float16' is not supported on the CPU (missing or very slow kernels); "
            "use 'bfloat16' (fast where the CPU has AVX512-BF16 or AMX), 'float32', or 'auto'"
        )
    if dtype is torch.bfloat16 and device.type == "cpu" and not cpu_supports_bf16(cpu_flags):
        logger.warning("dtype bfloat16 requested on a CPU without native bf16 support: expect it slower than float32")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The setting-style name of a dtype: torch.bfloat16 -> 'bfloat16'."""
    return str(dtype).removeprefix("torch.")


def validate_quantize(setting: str) -> str:
    """Normalise a quantisation setting to one of `none`, `int8`, `nf4`."""
    value = (setting or "none").strip().lower()
    if value not in QUANTIZE_SETTINGS:
        raise InvalidModelSettingError(f"quantize {setting!r} is not one of {', '.join(QUANTIZE_SETTINGS)}")
    return value


def enable_tf32() -> None:
    """Let float32 matrix products and convolutions on CUDA use TF32 tensor cores (Ampere and newer GPUs)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the new API; the old flags must not be mixed with it
        matmul.fp32_precision = "tf32"
        # torch sets up cudnn.conv at import time; its stub for torch.backends.cudnn does not declare it
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # type: ignore[attr-defined]
    else:  # pragma: no cover - older torch
        matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def estimate_model_bytes(
    num_params: int,
    dtype: torch.dtype,
    quantize: str = "none",
    *,
    quantizable_params: int | None = None,
) -> int:
    """Bytes the weights occupy once loaded (no activations, no headroom).

    With quantisation, `quantizable_params` (the weights of linear layers other than the output head) are
    stored as int8 (1 byte) or nf4 (0.5 byte plus block scales); every other parameter stays in `dtype`.
    When it is not given, all parameters count as quantisable (a lower bound).
    """
    if num_params < 0:
        raise InvalidModelSettingError(f"num_params must be >= 0, got {num_params}")
    quantize = validate_quantize(quantize)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if quantize == "none":
        return num_params * itemsize
    quantized = num_params if quantizable_params is None else min(max(quantizable_params, 0), num_params)
    return round(quantized * _QUANTIZED_BYTES_PER_PARAM[quantize]) + (num_params - quantized) * itemsize


def read_mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where that file does not exist."""
    try:
        text = meminfo.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * 1024  # the file reports kB
    return None


def _cgroup_memory_left(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory left under a cgroup v2 limit (a container's memory limit), or None when unlimited or unknown."""
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(int(limit) - current, 0)


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: CUDA from `torch.cuda.mem_get_info`, CPU from MemAvailable and any cgroup limit."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        candidates = [value for value in (read_mem_available(), _cgroup_memory_left()) if value is not None]
        return min(candidates) if candidates else None
    return None


@dataclass(frozen=True)
class Placement:
    """The outcome of a successful placement check, for logging: bytes needed (with headroom) and free."""

    device: str
    required_bytes: int
    available_bytes: int | None


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def check_placement(
    num_params: int,
    dtype: torch.dtype,
    quantize: str,
    device: torch.device,
    available_bytes: int | None = None,
    *,
    quantizable_params: int | None = None,
    headroom: float = DEFAULT_HEADROOM,
) -> Placement:
    """Refuse (`PlacementError`) a model that would not fit in `device`'s memory, before anything is loaded.

    The requirement is the weight size from `estimate_model_bytes` plus `headroom` (a fraction) for activations
    and buffers. `available_bytes` overrides the measured free memory (a declared budget); when neither is
    known (an unusual device) the check passes and says so in the log.
    """
    quantize = validate_quantize(quantize)
    weights = estimate_model_bytes(num_params, dtype, quantize, quantizable_params=quantizable_params)
    required = int(weights * (1.0 + headroom))
    available = available_memory_bytes(device) if available_bytes is None else int(available_bytes)
    if available is None:
        logger.warning("cannot measure free memory on %s; placement check skipped (%s needed)", device, _gb(required))
        return Placement(str(device), required, None)
    if required > available:
        quant_text = "no quantisation" if quantize == "none" else f"{quantize} quantisation"
        hints = []
        for option in ("int8", "nf4"):
            if option == quantize or (quantize == "nf4" and option == "int8"):
                continue
            option_weights = estimate_model_bytes(num_params, dtype, option, quantizable_params=quantizable_params)
            need = int(option_weights * (1 + headroom))
            hints.append(f"quantize={option} needs about {_gb(need)}")
        hint = ("; " + ", ".join(hints)) if hints else ""
        raise PlacementError(
            f"model does not fit on {device}: {num_params:,} parameters at {dtype_name(dtype)} with {quant_text} "
            f"need about {_gb(required)} ({_gb(weights)} of weights + {headroom:.0%} headroom) but only "
            f"{_gb(available)} is available{hint}; choose a smaller model, a lower precision or another device",
            required_bytes=required,
            available_bytes=available,
        )
    return Placement(str(device), required, available)
