"""Settings of the detector, declared once: the service fills them from flags and CRUCIBLE_DETECTOR_* / CRUCIBLE_* env,
the engine core and `crucible detect` read the same dataclass. `crucible serve detector --help` lists them.
"""

from __future__ import annotations

import dataclasses

from crucible.detector.reliability import DEFAULT_MAX_INVISIBLE_FRACTION, DEFAULT_MIN_RELIABLE_TOKENS
from crucible.models.registry import DEFAULT_DETECTOR_MODEL
from crucible.runtime.config import ModelServerConfig, redefault, setting
from crucible.runtime.errors import ConfigError

#: `likelihood_model` value that loads the likelihood model a calibration entry for the scoring model was fitted with.
LIKELIHOOD_AUTO = "auto"


@dataclasses.dataclass(frozen=True)
class DetectorConfig(ModelServerConfig):
    """Batched Fast-DetectGPT, Binoculars and classifier ensemble scoring how machine-written a text is.

    `model` is the Fast-DetectGPT scoring model (and Binoculars performer); `sampling_model` the sampling model
    (and Binoculars observer), the scoring model itself when empty. The default pair, Gemma-3-270M's criterion with
    SmolLM2's likelihood (`likelihood_model` auto), is the best-calibrated detector that ships (detector README).
    """

    port: int = setting(50051, "gRPC port of the detector service.")
    model: str = setting(
        DEFAULT_DETECTOR_MODEL,
        "Fast-DetectGPT scoring model (Binoculars performer): a registry alias (gemma-3-270m, smollm2-135m-instruct: "
        "about 4x faster on CPU, weaker across domains) or a local Hugging Face folder (e.g. gpt-neo-2.7B).",
    )
    sampling_model: str = setting(
        "",
        "Fast-DetectGPT sampling model (Binoculars observer); empty = the scoring model `model` (one forward pass). "
        "A different model must share the scoring model's tokenizer (e.g. falcon-7b with falcon-7b-instruct).",
    )
    binoculars: bool = setting(True, "Enable the Binoculars member (computed from the same forward pass, nearly free).")
    classifier_model: str = setting(
        "", "Local Hugging Face sequence-classification folder (e.g. roberta-base-openai-detector); empty disables it."
    )
    classifier_machine_label: str = setting(
        "",
        "The classifier's id2label name meaning machine-written (e.g. Fake); empty = the one label named like "
        "Fake/Machine/AI in its config.json.",
    )
    likelihood_model: str = setting(
        LIKELIHOOD_AUTO,
        "Second causal model (alias or local folder, its own tokenizer) whose mean log-likelihood per token is the "
        "likelihood member, a feature of the calibrated ensemble. auto = the one the calibration for the scoring "
        "model was fitted with (--calibration-file's entries first; built-in: smollm2-135m-instruct beside "
        "gemma-3-270m), none otherwise; empty disables it.",
    )
    max_tokens: int = setting(512, "Tokens scored per text; longer texts are truncated to their first max_tokens and flagged.")
    min_reliable_tokens: int = setting(
        DEFAULT_MIN_RELIABLE_TOKENS,
        "Fewest scored tokens (token_count - 1) for a reliable detection; below it the text is still scored but its "
        "probabilities are withheld (reliable=false, reason too_few_tokens). 0 marks every text reliable.",
    )
    max_invisible_fraction: float = setting(
        DEFAULT_MAX_INVISIBLE_FRACTION,
        "Largest share of invisible characters (zero-width, bidi, other format characters) among a text's "
        "non-whitespace characters for a reliable detection (reason invisible_characters above it); 1 disables it.",
    )
    max_texts_per_call: int = setting(256, "Most texts in one Detect call or DetectStream chunk.")
    max_text_bytes: int = setting(
        65536,
        "Most UTF-8 bytes in one text, checked before tokenising (INVALID_ARGUMENT naming texts[i]): 4 bytes x "
        "max_tokens (512) x 32, so long documents still fit and are truncated to their first max_tokens; 0 = no limit.",
    )
    padding_side: str = setting(
        "right",
        "Where batches are padded; results are the same either way (masked), right is the fast path.",
        choices=("right", "left"),
    )
    max_queue_size: int = redefault(ModelServerConfig, "max_queue_size", 2048)
    cache_size: int = setting(100000, "Results held in the in-memory LRU cache (about 0.3 KB each); 0 disables it.")
    cache_path: str = setting("", "SQLite file for a cache that survives restarts; empty disables it.")
    calibration_file: str = setting(
        "",
        "Calibration file written by `crucible detector calibrate`; its entries are tried before the built-in "
        "(published Fast-DetectGPT) parameters. Empty = built-in only.",
    )
    stats_chunk_elements: int = setting(
        1 << 22, "Logits (rows x vocabulary) processed at once by the criterion; bounds its memory (16 MB in fp32)."
    )
    classifier_batch_size: int = setting(32, "Texts per classifier forward pass.")
    stats_kernel: str = setting(
        "auto",
        "How the per-token vocabulary statistics run: compile = torch.compile a fused kernel during warm-up (before "
        "SERVING, so the first call runs at warm speed; ~15 CPU-seconds the first time, a few once cached on disk in "
        "<model cache>/inductor or $TORCHINDUCTOR_CACHE_DIR); auto = the same when a compiler is found (a C++ compiler "
        "on CPU, Triton on CUDA), else eager; eager = never compile. "
        "A compile that fails or disagrees with eager mode leaves eager mode in use (logged).",
        choices=("auto", "compile", "eager"),
    )

    def validate(self) -> None:
        super().validate()
        if self.max_tokens < 2:
            raise ConfigError("max_tokens", "must be at least 2 (the first token is never scored)")
        for name in ("max_texts_per_call", "stats_chunk_elements", "classifier_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.min_reliable_tokens < 0:
            raise ConfigError("min_reliable_tokens", "must not be negative")
        if not 0.0 <= self.max_invisible_fraction <= 1.0:
            raise ConfigError("max_invisible_fraction", "must be within [0, 1]")
        if self.cache_size < 0:
            raise ConfigError("cache_size", "must not be negative")
        if self.max_batch_tokens and self.max_batch_tokens < self.max_tokens:
            raise ConfigError(
                "max_batch_tokens", f"must be 0 or at least max_tokens ({self.max_tokens}), or a long text could never be batched"
            )
