"""Where the detector's compiled statistics kernel is kept across restarts, and compiling it ahead of the first start.

`crucible models prepare` calls `prepare_kernel`, so a fresh cache starts the detector without a ~15 CPU-second compile.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: The marker a finished ahead-of-time compile leaves beside the compiled code (one per vocabulary, dtype and torch).
_MARKER = "crucible-statistics-{vocab}-{dtype}.json"


def kernel_cache_dir(model_cache: Path | None = None) -> Path:
    """Where compiled kernels are kept across restarts: $TORCHINDUCTOR_CACHE_DIR, else <model cache>/inductor.

    torch writes its own default (a folder under /tmp) into $TORCHINDUCTOR_CACHE_DIR the first time anything asks
    for the inductor cache (converting a model does), so that value counts as unset: the kernels then still go to
    the model cache, where the detector looks for them, not to a /tmp folder that a reboot clears."""
    explicit = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if explicit and explicit != _torch_default_dir():
        return Path(explicit)
    if model_cache is None:
        from crucible.models.registry import default_cache_dir

        model_cache = default_cache_dir()
    return Path(model_cache) / "inductor"


def _torch_default_dir() -> str | None:
    """The folder torch's inductor uses when $TORCHINDUCTOR_CACHE_DIR is unset; None while torch is not imported (then
    it cannot have written the variable in this process, and importing it here would cost seconds)."""
    if "torch" not in sys.modules:
        return None
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return os.path.abspath(default_cache_dir())


def _vocabulary(model_folder: Path) -> int | None:
    try:
        value = json.loads((model_folder / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def prepare_kernel(model_cache: Path | None, model_folder: Path, *, log: Callable[[str], object] = print) -> bool | None:
    """Compile the statistics kernel the detector uses by default (its model's vocabulary, float32 on the CPU) into
    the kernel cache, unless a marker says it is there for this torch. True compiled now, False already there, None
    not possible here (no compiler, or a model folder without a vocabulary size)."""
    vocab = _vocabulary(model_folder)
    if vocab is None:
        return None
    directory = kernel_cache_dir(model_cache)
    marker = directory / _MARKER.format(vocab=vocab, dtype="float32")
    import importlib.metadata

    torch_version = importlib.metadata.version("torch")
    try:
        if json.loads(marker.read_text(encoding="utf-8")).get("torch") == torch_version:
            return False
    except (OSError, ValueError, AttributeError):
        pass
    import torch

    from crucible.detector.criterion import StatisticsKernel, compiler_available

    cpu = torch.device("cpu")
    if not compiler_available(cpu):
        log("statistics kernel: no C++ compiler found; the detector will run its statistics in eager mode")
        return None
    started = time.perf_counter()
    if not StatisticsKernel().compile(vocab, torch.float32, cpu, cache_dir=directory):
        log("statistics kernel: compiling failed; the detector will run its statistics in eager mode")
        return None
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"torch": torch_version, "vocab": vocab, "dtype": "float32"}) + "\n", encoding="utf-8")
    log(
        f"statistics kernel: compiled for vocabulary {vocab} (float32, CPU) into {directory} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return True
