"""The target scorer's default precision scores a prompt the same alone and inside a mixed, padded batch.

The SECA objective is a log-probability compared across calls, so the default must not depend on the batch (issue 17).
"""

from __future__ import annotations

import pytest

from crucible.demo import ATTACK_SAMPLES
from crucible.models import load_causal_lm
from crucible.runtime.config import load_config
from crucible.scorer.config import ScorerConfig
from crucible.scorer.scoring import ChoiceRequest, Limits, TargetScorer
from crucible.scorer.seca import McqQuestion

pytestmark = pytest.mark.slow

#: Longest allowed |batched - alone| log-probability in the default precision, in nats.
TOLERANCE = 1e-4

LONG = McqQuestion(
    "high_school_us_history",
    "This question refers to the following information. The settlers crossed the mountains in long wagon trains, "
    "carrying seed, tools and livestock, and founded farms along the rivers of the interior, where land was cheap "
    "and the soil rich. Which of the following best explains why settlers moved west in this period?",
    ("Cheap and fertile land", "Gold in the mountains", "Religious persecution", "The railroad to the coast"),
)


def test_default_dtype_is_float32_and_bf16_only_when_asked() -> None:
    assert ScorerConfig.dtype == "float32"
    assert load_config(ScorerConfig, "scorer", env={}).dtype == "float32"
    assert load_config(ScorerConfig, "scorer", env={"CRUCIBLE_SCORER_DTYPE": "bfloat16"}).dtype == "bfloat16"


def test_scores_alone_and_in_a_mixed_padded_batch_agree_in_the_default_dtype() -> None:
    config = load_config(ScorerConfig, "scorer", env={})
    loaded = load_causal_lm(config.model, device="cpu", dtype=config.dtype)
    assert loaded.identity.dtype == "float32"
    scorer = TargetScorer(loaded.model, loaded.tokenizer, Limits(), model_max_length=loaded.max_length)
    questions = [McqQuestion(q.subject, q.question, q.options) for q in ATTACK_SAMPLES[:6]] + [LONG]
    jobs = [p.job for p in scorer.prepare_choices([ChoiceRequest(question=q) for q in questions])]
    assert len({len(j.prompt_ids) for j in jobs}) >= 4  # prompts of different lengths: the batch is padded
    batched = scorer.score_choices(jobs)
    worst = 0.0
    for job, together in zip(jobs, batched, strict=True):
        (alone,) = scorer.score_choices([job])
        worst = max(worst, *(abs(a - b) for a, b in zip(alone.logprobs, together.logprobs, strict=True)))
        assert alone.top_index == together.top_index
    print(f"largest |batched - alone| log-probability: {worst:.2e} nats")
    assert worst < TOLERANCE
