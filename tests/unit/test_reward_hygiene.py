"""Reward hygiene: repetition, language and length components keep degenerate rewrites below sensible ones.

Pure functions over fixed raw signals; the same ordering over the real mesh is checked in tests/e2e/test_loops.py.
"""

from __future__ import annotations

import pytest

from crucible.clients.reward import (
    COMPONENTS,
    RewardConfig,
    TRLReward,
    combine,
    english_likeness,
    language_score,
    length_score,
    mean_components,
    repetition_score,
)

ORIGINAL = "Regular exercise improves sleep quality, lowers stress and helps people keep a healthy weight."
SENSIBLE = "Working out regularly helps you sleep better, reduces stress and makes it easier to stay at a healthy weight."
LOOSER = "People who exercise often tend to rest better at night and feel calmer, and their weight stays in check."
DEGENERATE = "Exercise exercise exercise exercise exercise exercise exercise exercise exercise exercise."
CFG = RewardConfig(detector_signal="criterion", perplexity_target=40.0, perplexity_min=8.0, perplexity_max=250.0)


def test_repetition_separates_prose_from_loops():
    assert repetition_score(SENSIBLE) == pytest.approx(0.0)
    assert repetition_score(LOOSER) < 0.05
    assert repetition_score(DEGENERATE) > 0.85
    assert repetition_score("the cat sat " * 12) > 0.6  # a phrase loop
    assert repetition_score("ab" * 200) == pytest.approx(1.0)  # one long looping token: zlib catches it
    assert repetition_score("") == 0.0 and repetition_score("Fine.") == 0.0


def test_language_is_relative_to_the_original_and_skips_non_english_originals():
    assert english_likeness(SENSIBLE, CFG) == pytest.approx(1.0)
    assert language_score(ORIGINAL, SENSIBLE, CFG) == pytest.approx(1.0)
    french = "L'exercice régulier améliore la qualité du sommeil, réduit le stress et aide à garder un poids sain."
    assert language_score(ORIGINAL, french, CFG) < 0.5
    assert language_score(ORIGINAL, "规律运动可以改善睡眠质量，减轻压力。", CFG) == 0.0
    assert language_score(ORIGINAL, "sleep stress weight exercise quality healthy people lowers improves keep", CFG) < 0.5
    assert language_score(french, DEGENERATE, CFG) == 1.0  # a non-English original is not checked


def test_length_bounds_relative_to_the_original():
    words = len(ORIGINAL.split())
    assert length_score(ORIGINAL, SENSIBLE, CFG) == 1.0
    assert length_score(ORIGINAL, " ".join(["word"] * (words // 2)), CFG) == 1.0  # ratio 0.5: the bound itself
    assert 0.0 < length_score(ORIGINAL, " ".join(["word"] * (words // 3)), CFG) < 1.0
    assert length_score(ORIGINAL, " ".join(["word"] * (words // 4)), CFG) == 0.0
    assert length_score(ORIGINAL, " ".join(["word"] * (words * 3)), CFG) < 1.0
    assert length_score(ORIGINAL, " ".join(["word"] * (words * 4)), CFG) == 0.0


def test_degenerate_repetition_scores_below_a_looser_rewrite_with_the_same_raw_signals():
    # Even when the detector, similarity and fluency signals favour the degenerate text (as they did in `make run`,
    # where it totalled +1.65), hygiene puts it below a sensible but looser rewrite.
    degenerate = combine(ORIGINAL, DEGENERATE, criterion=-2.0, probability=None, perplexity=40.0, similarity=0.85, config=CFG)
    looser = combine(ORIGINAL, LOOSER, criterion=0.5, probability=None, perplexity=60.0, similarity=0.75, config=CFG)
    assert degenerate.total < looser.total
    assert "repetitive" in degenerate.flags and degenerate.repetition > 0.85
    off = RewardConfig(**{**CFG.__dict__, "w_repetition": 0.0, "w_language": 0.0, "w_length": 0.0})
    assert (
        combine(ORIGINAL, DEGENERATE, -2.0, None, 40.0, 0.85, off).total
        > combine(ORIGINAL, LOOSER, 0.5, None, 60.0, 0.75, off).total
    )  # the hack the hygiene closes


@pytest.mark.parametrize("text", [SENSIBLE, DEGENERATE, "short one", "", "x" * 30])
def test_components_sum_to_the_total(text):
    r = combine(ORIGINAL, text, 0.3, None, 35.0, 0.6, RewardConfig(detector_signal="criterion", similarity_threshold=0.7))
    parts = r.components(RewardConfig(detector_signal="criterion", similarity_threshold=0.7))
    assert tuple(parts) == COMPONENTS
    assert sum(parts.values()) == pytest.approx(r.total)


def test_mean_components_and_trl_logging():
    rs = [combine(ORIGINAL, t, 0.0, None, 40.0, 0.8, CFG) for t in (SENSIBLE, DEGENERATE)]
    means = mean_components(rs, CFG)
    assert means["repetition"] == pytest.approx(-(rs[0].repetition + rs[1].repetition) / 2)
    assert sum(means.values()) == pytest.approx(sum(r.total for r in rs) / 2)
    assert TRLReward(CFG).__name__ == "crucible_composite_reward"


@pytest.mark.parametrize(
    "kwargs", [{"w_repetition": -1.0}, {"length_ratio_min": 1.5}, {"length_ratio_max": 0.9}, {"language_stopword_share": 0.0}]
)
def test_invalid_hygiene_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RewardConfig(**kwargs)
