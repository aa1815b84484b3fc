"""The reward loop's pure parts: fluency and evasion transforms, GRPO advantages, text cleaning, config checks.

The composite over real services is covered in tests/e2e.
"""

from __future__ import annotations

import math
import pickle

import pytest

from crucible.clients.reward import (
    RewardConfig,
    TRLReward,
    clean_text,
    evasion_score,
    fluency_score,
    group_advantages,
)


def test_fluency_peaks_at_target_and_reaches_zero_at_the_bounds():
    cfg = RewardConfig(perplexity_target=30, perplexity_min=5, perplexity_max=80, perplexity_plateau=1.0)
    assert fluency_score(30, cfg) == pytest.approx(1.0)
    assert fluency_score(5, cfg) == pytest.approx(0.0)
    assert fluency_score(80, cfg) == pytest.approx(0.0)
    assert fluency_score(2, cfg) == 0.0 and fluency_score(500, cfg) == 0.0
    assert 0 < fluency_score(15, cfg) < 1 and 0 < fluency_score(50, cfg) < 1
    assert fluency_score(float("nan"), cfg) == 0.0


def test_evasion_uses_probability_or_a_monotone_criterion_transform():
    assert evasion_score(None, 0.8, RewardConfig()) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no calibrated probability"):
        evasion_score(1.0, None, RewardConfig())
    cfg = RewardConfig(detector_signal="criterion", criterion_center=1.0, criterion_scale=0.5)
    assert evasion_score(1.0, None, cfg) == pytest.approx(0.5)
    assert evasion_score(3.0, None, cfg) < evasion_score(0.0, None, cfg)  # more machine-like -> less evasion
    assert evasion_score(1e6, None, cfg) == pytest.approx(0.0, abs=1e-12)


def test_group_advantages_are_normalised_and_tied_groups_give_zero():
    adv = group_advantages([1.0, 2.0, 3.0])
    assert sum(adv) == pytest.approx(0.0)
    assert adv[2] == pytest.approx((3.0 - 2.0) / (math.sqrt(2 / 3) + 1e-4))
    assert group_advantages([0.5] * 8) == [0.0] * 8
    assert group_advantages([]) == []


def test_clean_text_drops_control_characters_but_keeps_whitespace():
    assert clean_text("a\x00b\x07c\td\ne\r") == "abc\td\ne\r"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"detector_signal": "vibes"},
        {"similarity": "jaccard"},
        {"fluency_source": "oracle"},
        {"criterion_scale": 0.0},
        {"perplexity_min": 40.0},
    ],
)
def test_invalid_reward_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        RewardConfig(**kwargs)


def test_trainer_adapters_pickle_without_channels():
    trl = pickle.loads(pickle.dumps(TRLReward(RewardConfig(w_fluency=0.25))))
    assert trl.config.w_fluency == 0.25 and trl.__name__ == "crucible_composite_reward"
