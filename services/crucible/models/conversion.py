"""Converting a packaged model's GGUF weights once into a Hugging Face folder in the cache (`crucible models prepare`).

Atomic and locked: a temp folder, the marker written last, then a rename; two processes never convert the same model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ModelError

#: The marker a finished conversion writes last into its folder (what it was converted from).
MARKER_FILE = ".crucible-prepared.json"
#: Prefix of the staging folders beside the cache (removed when a conversion ends or is retried).
_TMP_PREFIX = ".tmp-"


class ConversionSpec(Protocol):
    """What a conversion reads of a packaged model (registry.PackagedModel has these fields)."""

    @property
    def alias(self) -> str: ...
    @property
    def distribution(self) -> str: ...
    @property
    def gguf_sha256(self) -> str: ...
    @property
    def converter(self) -> str: ...


@dataclass(frozen=True)
class GgufSource:
    """The packaged GGUF of an alias: one file, or parts to concatenate (in order) into a file named `name`."""

    name: str
    files: tuple[Path, ...]

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def _marker_matches(folder: Path, source: GgufSource) -> bool:
    """True when `folder` is a finished conversion of `source` (marker written last; same source size)."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("source_file") == source.name
        and marker.get("source_size") == source.size
        and (folder / "config.json").is_file()
    )


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` so two processes do not convert the same model at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _convert_gguf(source: Path, destination: Path) -> None:
    """Dequantise a GGUF into float32 and save it with its tokenizer as an ordinary Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
    # The loaded model still says "quantised with gguf", which save_pretrained refuses to serialise.
    # torch types nn.Module.__setattr__'s value as Tensor | Module; the model class does not declare hf_quantizer
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def _assemble(source: GgufSource, destination: Path, sha256: str) -> Path:
    """Concatenate the parts of `source` into `destination`, checking the whole file's sha256 when one is known."""
    digest = hashlib.sha256()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with destination.open("wb") as out:
        for part in source.files:
            with part.open("rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if sha256 and digest.hexdigest() != sha256:
        raise ModelError(
            f"the assembled {source.name} has sha256 {digest.hexdigest()}, expected {sha256}: a part package is damaged "
            "or of another version; reinstall the parts with --force-reinstall"
        )
    return destination


def _gemma3_config(fields: Mapping[str, object]) -> dict[str, object]:
    """A Hugging Face Gemma3TextConfig (as a dict) from the GGUF metadata of a gemma3 file."""

    def get(key: str) -> object:
        if f"gemma3.{key}" not in fields:
            raise ModelError(f"the GGUF has no gemma3.{key}: not a Gemma 3 text model file this converter knows")
        return fields[f"gemma3.{key}"]

    layers = int(get("block_count"))  # type: ignore[call-overload]
    pattern = 6  # Gemma 3: five sliding-window layers, then one global layer
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": int(fields["vocab_size"]),  # type: ignore[call-overload]
        "hidden_size": int(get("embedding_length")),  # type: ignore[call-overload]
        "intermediate_size": int(get("feed_forward_length")),  # type: ignore[call-overload]
        "num_hidden_layers": layers,
        "num_attention_heads": int(get("attention.head_count")),  # type: ignore[call-overload]
        "num_key_value_heads": int(get("attention.head_count_kv")),  # type: ignore[call-overload]
        "head_dim": int(get("attention.key_length")),  # type: ignore[call-overload]
        "query_pre_attn_scalar": int(get("attention.key_length")),  # type: ignore[call-overload]
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),  # type: ignore[arg-type]
        "max_position_embeddings": int(get("context_length")),  # type: ignore[call-overload]
        "sliding_window": int(get("attention.sliding_window")),  # type: ignore[call-overload]
        "layer_types": ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)],
        "rope_parameters": {
            "full_attention": {"rope_theta": float(get("rope.freq_base")), "rope_type": "default"},  # type: ignore[arg-type]
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
        },
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "tie_word_embeddings": True,
        "bos_token_id": int(fields.get("tokenizer.ggml.bos_token_id", 2)),  # type: ignore[call-overload]
        "eos_token_id": int(fields.get("tokenizer.ggml.eos_token_id", 1)),  # type: ignore[call-overload]
        "pad_token_id": int(fields.get("tokenizer.ggml.padding_token_id", 0)),  # type: ignore[call-overload]
        "torch_dtype": "float32",
    }


# GGUF tensor names (llama.cpp) -> Hugging Face Gemma 3 names, per layer and global.
_GEMMA3_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _gemma3_tensor_name(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if match is None or match.group(2) not in _GEMMA3_LAYER_NAMES:
        raise ModelError(f"unexpected tensor {name!r} in a Gemma 3 GGUF")
    return f"model.layers.{match.group(1)}.{_GEMMA3_LAYER_NAMES[match.group(2)]}.weight"


def _convert_gguf_numpy(source: Path, destination: Path) -> None:
    """Dequantise a Gemma 3 GGUF with the gguf package (numpy) into a float32 safetensors Hugging Face folder.

    llama.cpp stores Gemma's RMSNorm weights as 1 + w (the model multiplies by 1 + w); they are shifted back here.
    The tokenizer comes from transformers' GGUF tokenizer reader (no weights are read that way).
    """
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    reader = GGUFReader(source)
    fields: dict[str, object] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.rsplit(".", 1)[-1] in ("tokens", "scores", "token_type", "merges"):
            continue
        try:
            fields[key] = field.contents()
        except Exception:  # an array type we do not need
            continue
    if fields.get("general.architecture") != "gemma3":
        raise ModelError(f"{source.name}: architecture {fields.get('general.architecture')!r}; the numpy converter knows gemma3")
    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        values = np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if tensor.name.endswith("norm.weight"):
            values = values - np.float32(1.0)
        tensors[_gemma3_tensor_name(tensor.name)] = torch.from_numpy(values)
    fields["vocab_size"] = int(tensors["model.embed_tokens.weight"].shape[0])
    config = _gemma3_config(fields)
    save_file(tensors, str(destination / "model.safetensors"), metadata={"format": "pt"})
    (destination / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
    tokenizer.model_max_length = int(config["max_position_embeddings"])  # type: ignore[call-overload]
    tokenizer.save_pretrained(destination)


def convert_packaged(
    spec: ConversionSpec,
    source: GgufSource,
    target: Path,
    version: str,
    *,
    log: Callable[[str], object],
) -> bool:
    """Convert `source` into `target` atomically (temp folder, marker written last, rename); False if already done."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache {target.parent} ({exc}); point CRUCIBLE_CACHE_DIR at a writable folder"
        ) from exc
    with _exclusive_lock(target.parent / f".{target.name}.lock"):
        if _marker_matches(target, source):
            return False  # another process finished it while we waited for the lock
        for leftover in target.parent.glob(f"{_TMP_PREFIX}{target.name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # from an interrupted run; we hold the lock
        took = "about 20 s" if spec.converter == "transformers" else "about a minute"
        log(f"{spec.alias}: converting {source.name} from {spec.distribution}=={version} into {target} ({took})")
        staging = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{target.name}-", dir=target.parent))
        try:
            # Parts are assembled beside the staging folder (same file system) and removed after the conversion.
            assembled = None if len(source.files) == 1 else staging.parent / f"{_TMP_PREFIX}{target.name}-gguf"
            try:
                gguf_path = source.files[0] if assembled is None else _assemble(source, assembled / source.name, spec.gguf_sha256)
                if spec.converter == "numpy":
                    _convert_gguf_numpy(gguf_path, staging)
                else:
                    _convert_gguf(gguf_path, staging)
            finally:
                if assembled is not None:
                    shutil.rmtree(assembled, ignore_errors=True)
            marker = {
                "alias": spec.alias,
                "distribution": spec.distribution,
                "version": version,
                "source_file": source.name,
                "source_size": source.size,
                "created_unix": time.time(),
            }
            (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            # mkdtemp and some writers create owner-only modes; a prepared image is often served by another user.
            staging.chmod(0o755)
            for entry in staging.iterdir():
                entry.chmod(0o644)
            if target.exists():  # an incomplete or stale folder: replace it
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return True
