"""Settings of the proposer service: one frozen dataclass filled from flags and CRUCIBLE_PROPOSER_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve proposer --help` lists them.
"""

from __future__ import annotations

import dataclasses
import math

from crucible.runtime.config import ModelServerConfig, redefault, setting
from crucible.runtime.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ProposerConfig(ModelServerConfig):
    """Instruction-LLM rewriting (paraphrases, equivalent questions), meaning checks and embeddings."""

    port: int = setting(50052, "gRPC port of the proposer service.")
    quantize: str = setting(
        "none",
        "Generator weight quantisation through bitsandbytes: none, int8 or nf4 (saves memory on CPU, speed on CUDA).",
        choices=("none", "int8", "nf4"),
    )
    memory_limit_gb: float = setting(
        0.0,
        "Declared memory of the device in GB: start-up refuses models (generator + embedder + NLI, with 20 percent headroom) "
        "that would not fit. 0 means measure the free memory instead.",
    )
    embedding_model: str = setting(
        "minilm-l6-v2", "Sentence-embedding model for Embed and EMBEDDING_COSINE: a registry alias or a local folder."
    )
    nli_model: str = setting(
        "",
        "Local folder of an NLI sequence classifier (e.g. a DeBERTa-MNLI cross-encoder) with an 'entailment' label; "
        "enables NLI_ENTAILMENT. Empty disables it.",
    )
    equivalence_dtype: str = setting(
        "float32",
        "Dtype of the embedding and NLI models (float32 keeps scores stable across machines).",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    cosine_threshold: float = setting(
        0.7, "Default EMBEDDING_COSINE threshold in [-1, 1] (MiniLM: paraphrases ~0.75-0.95, unrelated ~0.0-0.2)."
    )
    nli_threshold: float = setting(0.5, "Default NLI_ENTAILMENT threshold in [0, 1] on min(P(a=>b), P(b=>a)).")
    content_threshold: float = setting(
        0.5,
        "Default content-alignment threshold of the QUESTION check in [0, 1]: a content word whose best match in the "
        "other text (same word or form = 1, else the cosine of contextual word vectors) is below it counts as added "
        "or dropped. Fitted on real proposer candidates labelled by hand (proposer README).",
    )
    question_filter: bool = setting(
        True,
        "EQUIVALENT_QUESTION Propose also drops candidates that fail the content alignment (CONTENT_CHANGE), so the "
        "candidates returned keep the question more often.",
    )
    judge_model: str = setting(
        "",
        "Local Hugging Face folder (or registry alias) of an instruction LLM used as the LLM_JUDGE equivalence method "
        "(SECA's feasibility judge: mutual entailment, nothing added or dropped, same answer; greedy, both orders). "
        "Empty disables it. The embedded SmolLM2 runs but is far too small to judge well.",
    )
    judge_threshold: float = setting(0.5, "Default LLM_JUDGE threshold in [0, 1] on min(P(yes) both orders).")
    default_temperature: float = setting(1.0, "Sampling temperature when a request leaves it unset (SECA uses 1.0).")
    default_top_p: float = setting(0.95, "Nucleus-sampling mass when a request leaves it unset; 1 disables it.")
    default_max_new_tokens: int = setting(128, "Most tokens per candidate when a request leaves max_new_tokens at 0.")
    max_candidates: int = setting(16, "Largest n a Propose call may ask for.")
    max_new_tokens_limit: int = setting(512, "Largest max_new_tokens a Propose call may ask for.")
    max_text_chars: int = setting(8000, "Most characters in a Propose text.")
    max_instruction_chars: int = setting(1000, "Most characters in a Propose instruction.")
    max_pairs_per_call: int = setting(256, "Most pairs in one CheckEquivalence call.")
    max_texts_per_call: int = setting(512, "Most texts in one Embed call.")
    # Generation takes seconds, so a longer window costs little latency and gathers concurrent calls into one batch.
    max_wait_ms: float = redefault(ModelServerConfig, "max_wait_ms", 25.0)
    max_queue_size: int = redefault(ModelServerConfig, "max_queue_size", 256)
    embed_max_batch_size: int = setting(64, "Most texts (or NLI pairs) in one embedding/NLI forward pass.")
    embed_max_queue_size: int = setting(
        4096, "Most texts waiting for embedding or NLI; past it calls fail with RESOURCE_EXHAUSTED."
    )

    def validate(self) -> None:
        super().validate()
        if self.memory_limit_gb < 0 or not math.isfinite(self.memory_limit_gb):
            raise ConfigError("memory_limit_gb", "must be 0 (measure) or a positive number of GB")
        if not self.embedding_model.strip():
            raise ConfigError("embedding_model", "must name a registry alias or a local folder")
        if not -1.0 <= self.cosine_threshold <= 1.0:
            raise ConfigError("cosine_threshold", f"must be within [-1, 1], got {self.cosine_threshold}")
        for name in ("content_threshold", "judge_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(name, f"must be within [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.nli_threshold <= 1.0:
            raise ConfigError("nli_threshold", f"must be within [0, 1], got {self.nli_threshold}")
        if not 0.0 <= self.default_temperature <= 2.0:
            raise ConfigError("default_temperature", f"must be within [0, 2], got {self.default_temperature}")
        if not 0.0 < self.default_top_p <= 1.0:
            raise ConfigError("default_top_p", f"must be within (0, 1], got {self.default_top_p}")
        for name in (
            "max_candidates",
            "max_new_tokens_limit",
            "max_text_chars",
            "max_instruction_chars",
            "max_pairs_per_call",
            "max_texts_per_call",
            "embed_max_batch_size",
            "embed_max_queue_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if not 1 <= self.default_max_new_tokens <= self.max_new_tokens_limit:
            raise ConfigError("default_max_new_tokens", f"must be within 1..max_new_tokens_limit ({self.max_new_tokens_limit})")
