"""Calibration: the two-Gaussian form, the built-in published parameters, file round trips, model-pair matching, fitting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crucible.detector.calibration import (
    METHOD_LOGISTIC_ENSEMBLE,
    METHOD_NONE,
    METHOD_TWO_GAUSSIAN,
    CalibrationError,
    CalibrationFile,
    TwoGaussian,
    builtin_calibrations,
    fit_calibration,
    load_calibration_file,
    select_calibration,
)


def _normal(x: float, mu: float, s: float) -> float:
    return math.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def test_two_gaussian_matches_the_reference_formula():
    g = TwoGaussian(-0.0707, 0.9520, 2.9306, 1.9039)
    for c in (-3.0, -0.5, 0.0, 1.0, 2.5, 6.0):
        want = _normal(c, g.mu1, g.sigma1) / (_normal(c, g.mu0, g.sigma0) + _normal(c, g.mu1, g.sigma1))
        assert g.probability(c) == pytest.approx(want, rel=1e-9)
    assert 0.0 <= g.probability(-1e6) <= 1.0 and g.probability(1e6) == pytest.approx(1.0)
    with pytest.raises(CalibrationError):
        TwoGaussian(0.0, 0.0, 1.0, 1.0)


def test_builtin_parameters_are_the_published_ones_keyed_by_pair():
    (builtin,) = builtin_calibrations()
    assert builtin.source == "builtin" and builtin.version
    falcon = select_calibration([builtin], ("/models/falcon-7b", "r1"), ("tiiuae/falcon-7b-instruct", "r2"),
                                ["fast_detectgpt", "binoculars"])
    assert falcon.method == METHOD_TWO_GAUSSIAN and falcon.source == "builtin"
    assert falcon.members["fast_detectgpt"] == TwoGaussian(-0.0707, 0.9520, 2.9306, 1.9039)
    assert "binoculars" not in falcon.members
    neo = select_calibration([builtin], ("gpt-neo-2.7B", ""), ("gpt-neo-2.7B", ""), ["fast_detectgpt"])
    assert neo.members["fast_detectgpt"].mu1 == 1.8983
    llama = select_calibration([builtin], ("meta-llama/Meta-Llama-3-8B", ""), ("llama3-8b-instruct", ""), ["fast_detectgpt"])
    assert llama.members["fast_detectgpt"].sigma1 == 2.1582
    # Order matters: the pair is (sampling, scoring).
    assert not select_calibration([builtin], ("gpt-neo-2.7B", ""), ("gpt-j-6B", ""), ["fast_detectgpt"]).calibrated


def test_smollm2_has_no_builtin_calibration():
    cal = select_calibration(builtin_calibrations(), ("smollm2-135m-instruct", "x"), ("smollm2-135m-instruct", "x"),
                             ["fast_detectgpt", "binoculars"])
    assert cal.method == METHOD_NONE and not cal.calibrated
    assert cal.probability({"fast_detectgpt": 2.0}) is None


def _scores(rng, n, machine):
    shift = 1.0 if machine else 0.0
    return [{"fast_detectgpt": rng.normal(2.0 * shift, 1.0), "binoculars": rng.normal(1.0 - 0.2 * shift, 0.1)}
            for _ in range(n)]


def test_fit_write_load_and_select_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    human, machine = _scores(rng, 200, False), _scores(rng, 200, True)
    entry = fit_calibration(human, machine, members=["fast_detectgpt", "binoculars"], sampling=("/x/tiny-lm", "rev1"),
                            scoring=("/x/tiny-lm", "rev1"), version="test-1", fitted_on={"texts": 400})
    g = entry.members["fast_detectgpt"]
    assert g.mu0 == pytest.approx(0.0, abs=0.2) and g.mu1 == pytest.approx(2.0, abs=0.2)
    path = tmp_path / "cal.json"
    CalibrationFile("test-1", str(path), (entry,)).write(path)
    loaded = load_calibration_file(path)
    assert loaded.version == "test-1" and loaded.entries[0].members == entry.members
    cal = select_calibration([loaded, *builtin_calibrations()], ("tiny-lm", "rev1"), ("tiny-lm", "rev1"),
                             ["fast_detectgpt", "binoculars"])
    assert cal.method == METHOD_LOGISTIC_ENSEMBLE and cal.source == str(path)
    assert cal.probability({"fast_detectgpt": 3.0, "binoculars": 0.7}) > 0.9
    assert cal.probability({"fast_detectgpt": -1.0, "binoculars": 1.1}) < 0.1
    # Without Binoculars enabled, the ensemble cannot apply: the Gaussian of the criterion does.
    only = select_calibration([loaded], ("tiny-lm", "rev1"), ("tiny-lm", "rev1"), ["fast_detectgpt"])
    assert only.method == METHOD_TWO_GAUSSIAN and only.ensemble is None
    # Other weights (another revision) are not covered by this fit.
    assert not select_calibration([loaded], ("tiny-lm", "rev2"), ("tiny-lm", "rev2"), ["fast_detectgpt"]).calibrated


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("not json", "cannot read"),
        (json.dumps({"format": "other"}), "not a detector calibration"),
        (json.dumps({"format": "crucible.detector.calibration", "format_version": 9, "version": "v"}), "format_version"),
        (json.dumps({"format": "crucible.detector.calibration", "format_version": 1, "version": "v",
                     "entries": [{"sampling": "a", "scoring": "b", "members": {"fast_detectgpt": {"mu0": 1}}}]}),
         "needs numeric"),
        (json.dumps({"format": "crucible.detector.calibration", "format_version": 1, "version": "v",
                     "entries": [{"sampling": "a", "scoring": "b", "members": {"magic": {}}}]}), "unknown member"),
    ],
)
def test_malformed_files_are_refused_with_the_file_named(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=match):
        load_calibration_file(path)


def test_fit_refuses_too_little_data():
    with pytest.raises(CalibrationError, match="at least two"):
        fit_calibration([{"fast_detectgpt": 1.0}], [{"fast_detectgpt": 2.0}], members=["fast_detectgpt"],
                        sampling=("a", ""), scoring=("a", ""), version="v")
