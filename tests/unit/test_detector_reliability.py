"""Reliability of detections (too few tokens, invisible characters), calibration error (ECE) and how the reward uses both.

Pure functions on fixtures: no model, no server.
"""

from __future__ import annotations

import math

import pytest

from crucible.clients.reward import RewardConfig, combine, evasion_score
from crucible.detector.quality import expected_calibration_error, reliability_bins
from crucible.detector.reliability import (
    DEFAULT_MAX_INVISIBLE_FRACTION,
    DEFAULT_MIN_RELIABLE_TOKENS,
    REASON_INVISIBLE_CHARACTERS,
    REASON_TOO_FEW_TOKENS,
    assess,
    invisible_fraction,
)

LONG = " ".join(["Plain prose with enough words to be scored properly by the detector."] * 4)


def _assess(text: str, tokens: int):
    return assess(text, tokens, min_tokens=DEFAULT_MIN_RELIABLE_TOKENS, max_invisible_fraction=DEFAULT_MAX_INVISIBLE_FRACTION)


def test_a_text_with_too_few_scored_tokens_is_unreliable_with_the_figures():
    short = _assess("The quick brown fox jumps over the lazy dog.", 9)
    assert not short.reliable and short.reason == REASON_TOO_FEW_TOKENS
    assert "9 token(s) scored" in short.detail and str(DEFAULT_MIN_RELIABLE_TOKENS) in short.detail
    assert _assess(LONG, DEFAULT_MIN_RELIABLE_TOKENS).reliable  # the minimum itself is enough
    assert not _assess(LONG, DEFAULT_MIN_RELIABLE_TOKENS - 1).reliable
    assert assess("hi there", 1, min_tokens=0, max_invisible_fraction=1.0).reliable  # 0 turns the check off


@pytest.mark.parametrize(
    "invisible",
    ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\ufe0f", "\U000e0041", "\u2800"],
    ids=["zwsp", "zwnj", "zwj", "word-joiner", "bom", "rlo", "vs16", "tag-a", "braille-blank"],
)
def test_invisible_heavy_text_is_unreliable(invisible):
    spiked = invisible.join(LONG)  # one invisible character between every two characters
    assert invisible_fraction(spiked) > 0.4
    verdict = _assess(spiked, 200)
    assert not verdict.reliable and verdict.reason == REASON_INVISIBLE_CHARACTERS
    assert "invisible" in verdict.detail


def test_a_few_invisible_characters_and_ordinary_unicode_stay_reliable():
    assert invisible_fraction(LONG) == 0.0
    assert invisible_fraction("café naïve über — “quoted” 日本語のテキスト 👍🏽") == 0.0
    one_joiner = LONG + " 👩\u200d💻"  # an emoji ZWJ sequence in a long text: 1 of ~250 characters
    assert 0.0 < invisible_fraction(one_joiner) <= DEFAULT_MAX_INVISIBLE_FRACTION
    assert _assess(one_joiner, 60).reliable
    assert invisible_fraction("   \n\t ") == 0.0


def test_too_few_tokens_wins_over_invisible_characters():
    assert _assess("\u200b".join("short"), 3).reason == REASON_TOO_FEW_TOKENS


# ---- calibration error ------------------------------------------------------------------------------------------------


def test_ece_on_a_hand_computed_fixture():
    # Bin [0.1, 0.2): p = 0.1, 0.1, labels 0, 1 -> share 0.5, mean 0.1, gap 0.4, weight 2/6.
    # Bin [0.9, 1.0]: p = 0.9, 0.9, 0.9, 1.0, labels 1, 1, 0, 1 -> share 0.75, mean 0.925, gap 0.175, weight 4/6.
    labels = [0, 1, 1, 1, 0, 1]
    probs = [0.1, 0.1, 0.9, 0.9, 0.9, 1.0]
    bins = reliability_bins(labels, probs, bins=10)
    assert [(b["low"], b["n"]) for b in bins] == [(0.1, 2), (0.9, 4)]
    assert bins[1]["machine_share"] == pytest.approx(0.75) and bins[1]["mean_probability"] == pytest.approx(0.925)
    assert expected_calibration_error(labels, probs) == pytest.approx(2 / 6 * 0.4 + 4 / 6 * 0.175)


def test_ece_is_zero_when_probabilities_match_frequencies_and_large_when_overconfident():
    calibrated = ([1] * 7 + [0] * 3, [0.75] * 10)  # 0.75 predicted, 70% observed, same bin
    assert expected_calibration_error(*calibrated) == pytest.approx(0.05)
    assert expected_calibration_error([0, 1, 0, 1], [0.05, 0.95, 0.05, 0.95]) == pytest.approx(0.05)
    assert expected_calibration_error([0, 0, 1, 1], [0.999, 0.999, 0.001, 0.001]) == pytest.approx(0.999)
    assert math.isnan(expected_calibration_error([], []))
    with pytest.raises(ValueError, match="within"):
        expected_calibration_error([0], [1.5])


# ---- the reward's treatment ---------------------------------------------------------------------------------------------


ORIGINAL = "The committee approved the new budget after a long debate about school funding and roads."
REWRITE = "After a lengthy debate over funding for schools and roads, the committee passed the new budget."


def test_reward_gives_a_short_unreliable_detection_a_neutral_detector_term():
    cfg = RewardConfig()
    assert evasion_score(3.0, None, cfg, unreliable_reason="too_few_tokens") == 0.5
    r = combine(ORIGINAL, REWRITE, 3.0, None, 30.0, 0.9, cfg, unreliable_reason="too_few_tokens")
    assert r.detector == 0.5 and "detector_unreliable:too_few_tokens" in r.flags
    # The same with the criterion signal: an unreliable criterion is not used either.
    crit = RewardConfig(detector_signal="criterion")
    assert combine(ORIGINAL, REWRITE, -9.0, None, 30.0, 0.9, crit, unreliable_reason="too_few_tokens").detector == 0.5
    # Without the flag a withheld probability is an error (as for an uncalibrated pair), never silently 0 or 1.
    with pytest.raises(ValueError, match="no calibrated probability"):
        combine(ORIGINAL, REWRITE, 3.0, None, 30.0, 0.9, cfg)


def test_reward_never_pays_for_invisible_characters():
    cfg = RewardConfig()
    spiked = "\u200b".join(REWRITE)
    honest = combine(ORIGINAL, REWRITE, 0.0, 0.4, 30.0, 0.9, cfg)
    cheat = combine(ORIGINAL, spiked, -5.0, None, 30.0, 0.9, cfg, unreliable_reason="invisible_characters")
    assert cheat.detector == 0.0 and "detector_unreliable:invisible_characters" in cheat.flags
    assert cheat.total < honest.total
    with pytest.raises(ValueError, match="within"):
        RewardConfig(unreliable_short_evasion=1.5)
