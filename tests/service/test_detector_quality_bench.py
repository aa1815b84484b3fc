"""bench/detector_quality.py end to end on a tiny random model: score (resumable, spread order), then report (length
study, leave-a-group-out choice, held-out and cross-domain tables with ECE) and the calibration file it writes.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from crucible.detector.calibration import load_calibration_file
from tests.unit.test_detector_engine import tiny_lm_folder

BENCH = Path(__file__).resolve().parents[2] / "bench" / "detector_quality.py"
FILES = ("xsum_a", "xsum_b", "writing_a")
PAIRS = 8


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("detector_quality_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return tiny_lm_folder(tmp_path_factory.mktemp("quality-models") / "tiny-lm")


def _data(folder: Path) -> Path:
    folder.mkdir()
    for k, name in enumerate(FILES):
        prefix = [f"Story {k}-{i}: the farmer looked at the field" for i in range(PAIRS)]
        human = [f"{p} and thought about rain, his old dog, and the price of wheat this year." for p in prefix]
        machine = [f"{p}. The field is green. The field is large. The field is quiet today." for p in prefix]
        (folder / f"{name}.json").write_text(json.dumps({"original": human, "sampled": machine}))
    return folder


def test_spread_order_prefixes_cover_the_range_evenly(bench):
    order = bench.spread_order(10)
    assert sorted(order) == list(range(10)) and order[:2] == [0, 8]
    assert max(order[:4]) >= 6 and min(order[:4]) == 0  # the first few already span the file


def test_score_then_report_writes_every_table_and_a_loadable_calibration(bench, lm, tmp_path, capsys):
    data = _data(tmp_path / "detect")
    scores = tmp_path / "scores.jsonl"
    common = ["--model", str(lm), "--data", str(data)]
    score = ["score", *common, "--files", ",".join(FILES), "--threads", "1", "--out", str(scores)]
    assert bench.main([*score, "--pairs", "2"]) == 0  # a partial run: 2 pairs of every file
    assert len(scores.read_text().splitlines()) == 3 * 2 * 2
    assert bench.main(score) == 0  # resumes: only the rest is scored, nothing twice
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 3 * PAIRS * 2 and len({(r["file"], r["pair"], r["label"]) for r in rows}) == len(rows)

    report = tmp_path / "report.json"
    cal = tmp_path / "cal.json"
    argv = ["report", "--scores", str(scores), *common, "--out", str(report), "--plot", str(tmp_path / "r.png")]
    assert bench.main([*argv, "--write-calibration", str(cal), "--version", "tiny-quality-v1"]) == 0
    out = json.loads(report.read_text())
    assert out["texts"] == len(rows) and set(out["files"]) == set(FILES)
    assert set(out["raw_auroc"]) == {"all", *FILES}
    assert set(out["leave_one_group_out"]) == {"domain=writing", "domain=xsum", "source=a", "source=b"}
    assert out["chosen"] in bench.CANDIDATES and out["chosen"] not in out["collinear"]
    if any(out["holds_up"][n] and n not in out["collinear"] for n in bench.CANDIDATES):
        assert out["holds_up"][out["chosen"]]
    # A candidate holds up only if it is never more than the tolerance below the best member on a left-out group.
    for name, holds in out["holds_up"].items():
        margins = [
            (v["combinations"][name] or 0.0) - max(x for x in v["members"].values() if x is not None)
            for v in out["leave_one_group_out"].values()
        ]
        assert holds == (min(margins) >= -0.05)
    for block in ("held_out", "cross_domain"):
        for name in bench.CANDIDATES:
            per = out[block][name]
            assert {"all", *FILES} <= set(per)
            for v in per.values():
                assert 0.0 <= v["auroc"] <= 1.0 and 0.0 <= v["ece"] <= 1.0 and v["tpr_at_1pct_fpr"] is not None
    assert out["cross_domain"]["criterion"]["all"]["n"] == len(rows)  # every text scored by a fit on the other domain
    text = capsys.readouterr().out
    assert "file (fitted on the other domain)" in text and "raw AUROC" in text
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    entry = load_calibration_file(cal).entries[0]
    assert entry.ensemble is not None and entry.ensemble.members == bench.CANDIDATES[out["chosen"]]
    assert entry.fitted_on["combination"] == out["chosen"]


def test_rows_record_their_dtype_and_the_calibration_says_what_it_was_fitted_in(bench, lm, tmp_path):
    """A calibration fitted on bf16 scores says bfloat16 (it once said float32 whatever the scores were); resuming a
    file with another dtype, or reporting on a file that mixes dtypes, is refused before any work."""
    data = _data(tmp_path / "detect")
    scores = tmp_path / "scores.jsonl"
    common = ["--model", str(lm), "--data", str(data)]
    score = ["score", *common, "--files", ",".join(FILES), "--threads", "1", "--out", str(scores), "--max-tokens", "64"]
    assert bench.main([*score, "--dtype", "bfloat16"]) == 0
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert {(r["dtype"], r["max_tokens"]) for r in rows} == {("bfloat16", 64)}
    cal = tmp_path / "cal.json"
    argv = ["report", "--scores", str(scores), *common, "--out", str(tmp_path / "report.json")]
    assert bench.main([*argv, "--write-calibration", str(cal), "--version", "tiny-bf16-v1"]) == 0
    fitted_on = load_calibration_file(cal).entries[0].fitted_on
    assert (fitted_on["dtype"], fitted_on["max_tokens"]) == ("bfloat16", 64)
    assert "bfloat16, 64 tokens" in json.loads(cal.read_text())["description"]

    lines = scores.read_text().splitlines()
    with pytest.raises(SystemExit, match="was scored with"):
        bench.main([*score, "--dtype", "float32"])  # resuming in another dtype
    assert scores.read_text().splitlines() == lines  # nothing appended
    legacy = json.loads(lines[0])
    del legacy["dtype"], legacy["max_tokens"]  # a row of a file written before rows recorded their setting
    scores.write_text("\n".join([*lines, json.dumps(legacy)]) + "\n")
    with pytest.raises(SystemExit, match="mix settings"):
        bench.main(argv)


def test_a_second_models_scores_add_the_likelihood_member_and_its_calibration(bench, lm, tmp_path):
    """`report --likelihood-scores`: the second model's mean log-likelihood joins as the likelihood member (raw AUROC,
    candidates, leave-a-group-out), and the calibration written for criterion+likelihood names that model, so the
    service applies it only when it runs as --likelihood-model."""
    data = _data(tmp_path / "detect")
    companion = tiny_lm_folder(tmp_path / "companion", seed=5, vocab=350)
    scores, other = tmp_path / "scores.jsonl", tmp_path / "companion.jsonl"
    for model, out in ((lm, scores), (companion, other)):
        argv = ["score", "--model", str(model), "--data", str(data), "--files", ",".join(FILES), "--threads", "1"]
        assert bench.main([*argv, "--out", str(out)]) == 0
    cal = tmp_path / "cal.json"
    argv = ["report", "--scores", str(scores), "--model", str(lm), "--data", str(data), "--out", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit, match="needs --likelihood-model"):
        bench.main([*argv, "--likelihood-scores", str(other)])
    with pytest.raises(SystemExit, match="needs --likelihood-scores"):
        bench.main([*argv, "--combination", "criterion+likelihood"])
    argv += ["--likelihood-scores", str(other), "--likelihood-model", str(companion), "--combination", "criterion+likelihood"]
    assert bench.main([*argv, "--write-calibration", str(cal), "--version", "tiny-pair-v1"]) == 0
    out = json.loads((tmp_path / "r.json").read_text())
    assert "likelihood" in out["raw_auroc"]["all"] and "criterion+likelihood" in out["held_out"]
    assert all("likelihood" in v["members"] for v in out["leave_one_group_out"].values())
    assert out["shipped"] == "criterion+likelihood"
    entry = load_calibration_file(cal).entries[0]
    assert entry.likelihood == str(companion) and "likelihood" in entry.revisions
    assert entry.ensemble is not None and entry.ensemble.members == ("fast_detectgpt", "likelihood")
    # --first-tokens: every text scored as if it stopped after its first N tokens (both models), for the study only
    whole = out["raw_auroc"]["all"]
    assert bench.main([*argv, "--first-tokens", "100000"]) == 0  # longer than every text: the whole texts
    assert json.loads((tmp_path / "r.json").read_text())["raw_auroc"]["all"] == whole
    assert bench.main([*argv, "--first-tokens", "6"]) == 0
    short = json.loads((tmp_path / "r.json").read_text())
    assert short["first_tokens"] == 6 and short["raw_auroc"]["all"] != whole
    with pytest.raises(SystemExit, match="whole texts"):
        bench.main([*argv, "--first-tokens", "6", "--write-calibration", str(cal)])
