"""The reward terms added so that GRPO can learn evasion (issue 24): group-normalised detector, copy, similarity gate.

Also the fluency plateau (fluent English scores as fluent) and the repetition-gated fluency. Pure functions, no mesh.
"""

from __future__ import annotations

import pytest

from crucible.clients.reward import (
    COMPONENTS,
    RewardConfig,
    combine,
    copy_score,
    fluency_score,
    group_evasion,
    similarity_gate,
)

ORIGINAL = "The city council voted on Tuesday to expand the bike lane network across the downtown area next spring."
PARAPHRASE = "On Tuesday, councillors approved a plan to add more cycle paths throughout the centre of town from next spring."
NEAR_COPY = "The city council voted on Tuesday to expand the bike lane network across the downtown area next year."
LOOP = "bike bike bike bike bike bike bike bike bike bike bike bike"


def test_copy_score_is_one_for_a_copy_high_for_a_near_copy_and_low_for_a_paraphrase():
    assert copy_score(ORIGINAL, ORIGINAL) == pytest.approx(1.0)
    assert copy_score(ORIGINAL, NEAR_COPY) >= 0.8
    assert copy_score(ORIGINAL, PARAPHRASE) < 0.3
    assert copy_score(ORIGINAL, "") == 0.0
    assert copy_score("short one", "short one") == pytest.approx(1.0)  # under 3 words: unigrams


def test_a_near_copy_scores_below_a_paraphrase_even_with_higher_similarity():
    # Same detector and fluency signals; the near-copy is (as embeddings say) closer to the original. Before the copy
    # term it won by its similarity (the drift of the first 30-step run); now copying costs more than it pays.
    cfg = RewardConfig(detector_signal="criterion", detector_normalization="none")
    copy = combine(ORIGINAL, NEAR_COPY, -1.0, None, 40.0, 0.99, cfg)
    para = combine(ORIGINAL, PARAPHRASE, -1.0, None, 40.0, 0.92, cfg)
    assert "near_copy" in copy.flags and "near_copy" not in para.flags
    assert copy.components(cfg)["copy"] < -0.5
    assert copy.total < para.total


def test_a_repetition_loop_earns_no_evasion_and_no_fluency():
    # "bike bike ..." is similar to a sentence about bike lanes by embeddings ((cos + 1) / 2 = 0.626, measured) and a
    # loop has a low perplexity; the similarity gate and the repetition-gated fluency leave it nothing but its penalties.
    cfg = RewardConfig(detector_signal="criterion", detector_normalization="none")
    loop = combine(ORIGINAL, LOOP, -3.0, None, 3.0 * 40 / 3, 0.626, cfg)
    parts = loop.components(cfg)
    assert parts["detector"] == 0.0 and parts["fluency"] == 0.0
    assert "similarity_gated" in loop.flags and "repetitive" in loop.flags
    para = combine(ORIGINAL, PARAPHRASE, 1.0, None, 60.0, 0.92, cfg)
    assert loop.total < para.total - 0.5
    assert sum(parts.values()) == pytest.approx(loop.total)


def test_fluent_english_perplexities_score_as_fluent_with_the_default_window():
    # The detector's SmolLM2-135M puts fluent English at perplexity ~15-150; StealthRL's 5-30-80 window gave a fluent
    # rewrite at perplexity 95 a fluency of 0 in `crucible reward`.
    cfg = RewardConfig()
    for ppl in (20.0, 40.0, 60.0, 95.0):
        assert fluency_score(ppl, cfg) == pytest.approx(1.0), ppl
    assert 0 < fluency_score(150.0, cfg) < 1 and 0 < fluency_score(12.0, cfg) < 1
    assert fluency_score(300.0, cfg) == 0.0 and fluency_score(5.0, cfg) == 0.0


def test_similarity_gate_is_continuous_and_can_be_disabled():
    cfg = RewardConfig(similarity_gate_low=0.7, similarity_gate_high=0.9)
    assert similarity_gate(0.6, cfg) == 0.0 and similarity_gate(0.95, cfg) == 1.0
    assert similarity_gate(0.8, cfg) == pytest.approx(0.5)
    assert similarity_gate(0.1, RewardConfig(similarity_gate_low=0.0, similarity_gate_high=0.0)) == 1.0
    with pytest.raises(ValueError):
        RewardConfig(similarity_gate_low=0.9, similarity_gate_high=0.8)


def test_group_evasion_spreads_a_group_whose_absolute_evasion_is_flat():
    # Criteria -2.0 .. -1.4: the absolute logistic gives 0.80-0.88 (spread 0.08); within the group they span ~0.2-0.8.
    cfg = RewardConfig(detector_signal="criterion")
    scores = [-2.0, -1.8, -1.6, -1.4]
    ev = group_evasion(scores, cfg)
    assert all(e is not None for e in ev)
    values = [e for e in ev if e is not None]
    assert values == sorted(values, reverse=True)  # less machine-like, more evasion
    assert values[0] - values[-1] > 0.5
    assert sum(values) / 4 == pytest.approx(0.5, abs=1e-9)
    # Unreliable members stay None; a group of one reliable score falls back (None) to the absolute signal.
    assert group_evasion([-1.0, None], cfg) == [None, None]
    assert group_evasion([-1.0, None, -0.5], cfg)[1] is None
    # A flat group is neutral, and the std floor keeps a tiny difference from becoming a large one.
    assert group_evasion([-1.0, -1.0], cfg) == [pytest.approx(0.5), pytest.approx(0.5)]
    tiny = group_evasion([-1.0, -1.001], RewardConfig(group_min_std=0.1))
    assert abs((tiny[0] or 0) - 0.5) < 0.01


def test_combine_uses_the_group_evasion_but_unreliable_keeps_its_configured_value():
    cfg = RewardConfig(detector_signal="criterion")
    r = combine(ORIGINAL, PARAPHRASE, -1.0, None, 40.0, 0.95, cfg, evasion=0.9)
    assert r.detector == pytest.approx(0.9)
    short = combine(ORIGINAL, PARAPHRASE, -1.0, None, 40.0, 0.95, cfg, unreliable_reason="too_few_tokens", evasion=0.9)
    assert short.detector == pytest.approx(cfg.unreliable_short_evasion)
    hidden = combine(ORIGINAL, PARAPHRASE, -1.0, None, 40.0, 0.95, cfg, unreliable_reason="invisible_characters", evasion=0.9)
    assert hidden.detector == 0.0


def test_components_sum_to_the_total_and_include_copy():
    cfg = RewardConfig(detector_signal="criterion")
    assert "copy" in COMPONENTS
    for completion, sim in ((PARAPHRASE, 0.93), (NEAR_COPY, 0.99), (LOOP, 0.63), ("", 0.0)):
        r = combine(ORIGINAL, completion, -1.0, None, 50.0, sim, cfg, evasion=0.7)
        parts = r.components(cfg)
        assert tuple(parts) == COMPONENTS
        assert sum(parts.values()) == pytest.approx(r.total)
