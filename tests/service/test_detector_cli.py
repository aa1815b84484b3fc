"""`crucible detect` (in-process and against a served detector) and `crucible detector calibrate` on a tiny random model."""

from __future__ import annotations

import asyncio
import json

import pytest

from crucible.cli import main
from crucible.detector.calibration import load_calibration_file
from crucible.detector.cli import InputError, read_inputs
from crucible.detector.cli_calibrate import leave_out_groupings
from crucible.detector.config import DetectorConfig
from crucible.detector.server import create_server
from crucible.runtime.config import load_config
from tests.unit.test_detector_engine import tiny_lm_folder

HUMAN = [f"Human story number {i}: the farmer watched the quick brown fox from his porch." for i in range(6)]
MACHINE = [f"Machine text {i}: fluent, plain and predictable sentences follow one another." for i in range(6)]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return tiny_lm_folder(tmp_path_factory.mktemp("cli-models") / "tiny-lm")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "detect.json"
    path.write_text(json.dumps({"original": HUMAN, "sampled": MACHINE}))
    return path


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_read_inputs_accepts_the_data_format_lists_and_json_lines(tmp_path, data_file):
    texts, labels, pairs = read_inputs([str(data_file)])
    assert texts == HUMAN + MACHINE and labels == [0] * 6 + [1] * 6 and pairs == [(0, i) for i in range(6)] * 2
    lines = tmp_path / "texts.jsonl"
    lines.write_text('"plain string"\n{"text": "labelled", "label": "machine"}\n\n')
    texts, labels, pairs = read_inputs([str(data_file), str(lines)])
    assert texts[12:] == ["plain string", "labelled"] and labels is None and pairs[12:] == [(1, 0), (1, 1)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "maybe"}\n')
    with pytest.raises(InputError, match="label 'maybe'"):
        read_inputs([str(bad)])


def test_detect_in_process_prints_scores_and_auroc(lm, data_file, capsys):
    code = main(
        [
            "detect",
            str(data_file),
            "--model",
            str(lm),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--max-tokens",
            "64",
            "--stats-kernel",
            "eager",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    rows = _lines(out)
    assert [r["index"] for r in rows] == list(range(12)) and [r["label"] for r in rows] == [0] * 6 + [1] * 6
    assert all(r["probability"] is None and set(r["members"]) == {"fast_detectgpt", "binoculars"} for r in rows)
    assert "criterion (fast_detectgpt)" in err and "AUROC" in err


def test_detect_reports_the_offending_text(lm, tmp_path, capsys):
    path = tmp_path / "texts.jsonl"
    path.write_text('"fine text here"\n"   "\n')
    assert (
        main(["detect", str(path), "--model", str(lm), "--device", "cpu", "--dtype", "float32", "--stats-kernel", "eager"]) == 2
    )
    assert "texts[1]" in capsys.readouterr().err


def test_calibrate_splits_each_file_and_writes_calibration_report_and_plot(lm, data_file, tmp_path, capsys):
    second = tmp_path / "other.json"  # a second file of 10 pairs: split at its own half, not at the first file's
    second.write_text(
        json.dumps(
            {
                "original": [f"A person wrote note {i} by hand, slowly." for i in range(10)],
                "sampled": [f"The model produced note {i} quickly and fluently." for i in range(10)],
            }
        )
    )
    out_path = tmp_path / "cal.json"
    code = main(
        [
            "detector",
            "calibrate",
            "--data",
            str(data_file),
            str(second),
            "--out",
            str(out_path),
            "--holdout-fraction",
            "0.5",
            "--version",
            "tiny-v1",
            "--model",
            str(lm),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--stats-kernel",
            "eager",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "AUROC on held-out texts" in out
    cal = load_calibration_file(out_path)
    entry = cal.entries[0]
    assert cal.version == "tiny-v1" and entry.fitted_on["human"] == 3 + 5 and entry.fitted_on["machine"] == 8
    assert [f["fit_pairs"] for f in entry.fitted_on["files"]] == ["0..2", "0..4"]
    assert all(len(f["sha256"]) == 64 for f in entry.fitted_on["files"]) and entry.fitted_on["date"]
    assert "crucible" in entry.fitted_on["code"] and entry.fitted_on["dtype"] == "float32"
    assert set(entry.members) == {"fast_detectgpt", "binoculars"}
    # C was chosen leaving each file's domain, then its source, out (file names without '_': each its own).
    assert entry.fitted_on["regularisation"].startswith("C chosen by held-out log-loss leaving one domain and then one source")
    assert entry.fitted_on["regularisation_c"] in [float(c) for c in entry.fitted_on["held_out_log_loss_by_c"]]
    assert entry.ensemble.members == ("fast_detectgpt", "binoculars", "log_likelihood", "log_rank", "entropy")
    report = json.loads((tmp_path / "cal.roc.json").read_text())
    groups = report["groups"]
    assert list(groups) == ["held-out, all files", "detect", "other"]
    assert groups["held-out, all files"]["criterion"]["n"] == 6 + 10 and groups["other"]["criterion"]["n"] == 10
    for summary in groups["held-out, all files"].values():
        assert 0.0 <= summary["auroc"] <= 1.0 and set(summary["tpr_at_fpr"]) == {"0.01", "0.05"}
        assert summary["roc"]["fpr"][0] == 0.0 and summary["roc"]["tpr"][-1] == 1.0
    assert {"criterion", "-binoculars", "-log_rank", "ensemble P(machine)"} <= set(groups["other"])
    assert (tmp_path / "cal.roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        main(
            [
                "detect",
                str(data_file),
                "--model",
                str(lm),
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--calibration-file",
                str(out_path),
                "--stats-kernel",
                "eager",
                "--min-reliable-tokens",
                "0",
            ]
        )
        == 0
    )
    rows = _lines(capsys.readouterr().out)
    assert all(
        0.0 <= r["probability"] <= 1.0 and set(r["by_products"]) == {"log_likelihood", "log_rank", "entropy"} for r in rows
    )
    assert all(r["reliable"] and r["tokens_scored"] == r["token_count"] - 1 for r in rows)
    # Under a minimum they do not reach, the same texts are scored but their probability is withheld.
    argv = ["detect", str(data_file), "--model", str(lm), "--device", "cpu", "--dtype", "float32"]
    assert main([*argv, "--calibration-file", str(out_path), "--stats-kernel", "eager", "--min-reliable-tokens", "1000"]) == 0
    rows = _lines(capsys.readouterr().out)
    assert all(r["probability"] is None and not r["reliable"] and r["unreliable_reason"] == "too_few_tokens" for r in rows)


async def test_detect_against_a_running_service(lm, data_file, capsys):
    config = load_config(
        DetectorConfig,
        "detector",
        env={},
        port=0,
        metrics_enabled=False,
        model=str(lm),
        device="cpu",
        dtype="float32",
        max_tokens=64,
        log_format="text",
    )
    server, _ = create_server(config)
    await server.start()
    await server.wait_ready(120)
    try:
        code = await asyncio.to_thread(main, ["detect", str(data_file), "--address", server.address])
    finally:
        await server.stop(0)
    out, err = capsys.readouterr()
    assert code == 0
    rows = _lines(out)
    assert len(rows) == 12 and all("cached" in r for r in rows) and "AUROC" in err


def test_leave_out_groupings_read_domain_and_source_from_the_file_names():
    names = ["d/xsum_gpt-4.json", "d/xsum_gpt2-xl.json", "d/writing_gpt-4.json"]
    kinds, per_file = leave_out_groupings("auto", names)
    assert kinds == ["domain", "source"]
    assert per_file == [["xsum", "xsum", "writing"], ["gpt-4", "gpt2-xl", "gpt-4"]]
    # One domain cannot be left out: auto keeps the source models; two plain files fall back to each file.
    assert leave_out_groupings("auto", ["xsum_a.json", "xsum_b.json"]) == (["source"], [["a", "b"]])
    assert leave_out_groupings("auto", ["one.json", "two.json"]) == (["domain", "source"], [["one", "two"]] * 2)
    assert leave_out_groupings("file", ["xsum_a.json", "xsum_b.json"]) == (["file"], [["xsum_a", "xsum_b"]])
    assert leave_out_groupings("auto", ["only.json"]) == ([], [])
    assert leave_out_groupings("pair", names) == ([], [])
    with pytest.raises(ValueError, match="at least two files of different domain"):
        leave_out_groupings("domain", ["xsum_a.json", "xsum_b.json"])


def test_calibrate_refuses_a_leave_out_that_leaves_nothing_before_loading_models(data_file, tmp_path, capsys):
    argv = ["detector", "calibrate", "--data", str(data_file), "--out", str(tmp_path / "c.json"), "--leave-out", "domain"]
    code = main([*argv, "--model", str(tmp_path / "no-such-model")])
    assert code == 2 and "--leave-out domain: needs at least two files" in capsys.readouterr().err
