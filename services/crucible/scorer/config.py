"""Settings of the scorer service: one frozen dataclass filled from flags and CRUCIBLE_SCORER_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve scorer --help` lists them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from crucible.runtime.config import ModelServerConfig, setting
from crucible.runtime.errors import ConfigError
from crucible.scorer.placement import parse_cores

if TYPE_CHECKING:
    from crucible.scorer.scoring import Limits


@dataclasses.dataclass(frozen=True)
class ScorerConfig(ModelServerConfig):
    """Target LLM pinned to CPU scoring answer choices and text likelihoods."""

    port: int = setting(50053, "gRPC port of the scorer service.")
    device: str = setting("cpu", "The target model is pinned to CPU by design; any other device is refused at start.")
    dtype: str = setting(
        "float32",
        "Weight dtype on the CPU: float32 (default: a prompt scores the same alone or in any batch, within 1e-4 nats), "
        "bfloat16, or auto (bf16 on CPUs with native bf16 such as AVX512-BF16/AMX, else float32). bf16 is ~1.7x faster "
        "where native, but its log-probabilities differ from float32 by ~0.1 nats and shift by up to ~0.3 nats with "
        "the batch a prompt lands in (services/crucible/scorer/README.md), which an attack objective cannot tolerate.",
        choices=("auto", "float32", "bfloat16"),
    )
    cores: str = setting(
        "", "Cores to pin the process to, e.g. '0-3,8' (os.sched_setaffinity); empty keeps the inherited affinity."
    )
    threads: int = setting(
        0, "Torch intra-op threads, set once at start; 0 means one per usable core (len(os.sched_getaffinity(0)))."
    )
    interop_threads: int = setting(
        1, "Torch inter-op threads, set once per process; one model worker runs one batch at a time, so 1 suffices."
    )
    max_items_per_call: int = setting(64, "Most items in one ScoreChoices or ScoreTexts call.")
    max_choices_per_item: int = setting(26, "Most choices in one ScoreChoices item.")
    max_tokens: int = setting(
        2048, "Most tokens in one sequence (prompt plus longest choice, prefix plus text); capped at the model's maximum."
    )

    def validate(self) -> None:
        """Refuse any device but the CPU, and bad core lists, thread counts, limits and batching settings."""
        super().validate()
        if self.device != "cpu":
            raise ConfigError(
                "device",
                f"the target scorer runs on CPU only (got {self.device!r}); the GPU is kept for the proposer and detector",
            )
        try:
            parse_cores(self.cores)
        except ValueError as err:
            raise ConfigError("cores", str(err)) from None
        if self.threads < 0:
            raise ConfigError("threads", "must be 0 (one per usable core) or positive")
        if self.interop_threads < 1:
            raise ConfigError("interop_threads", "must be at least 1")
        for name in ("max_items_per_call", "max_choices_per_item"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.max_tokens < 2:
            raise ConfigError("max_tokens", "must be at least 2")
        if self.max_batch_tokens and self.max_batch_tokens < self.max_tokens:
            raise ConfigError(
                "max_batch_tokens", f"must be 0 or at least max_tokens ({self.max_tokens}), or a long item could never run"
            )

    @property
    def core_list(self) -> tuple[int, ...]:
        """The configured cores as numbers; () when the inherited affinity is kept."""
        return parse_cores(self.cores)

    def limits(self) -> Limits:
        """The per-call limits."""
        from crucible.scorer.scoring import (
            Limits,  # torch stays out of the CLI's config import
        )

        return Limits(self.max_items_per_call, self.max_choices_per_item, self.max_tokens)
