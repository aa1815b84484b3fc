"""examples/grpo/train.py's pure parts: settings per device, checkpoint choice, input bounds, mesh addresses, and
progress lines the scheduler's parser reads (reward components included).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from crucible.scheduler.domain.progress import ProgressTracker

SPEC = importlib.util.spec_from_file_location(
    "grpo_train", Path(__file__).resolve().parents[2] / "examples" / "grpo" / "train.py"
)
train = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(train)


def _checkpoint(root: Path, step: int, *, state: str | None = None, weights: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    if weights:
        (folder / "model.safetensors").write_bytes(b"x")
    return folder


def test_last_complete_checkpoint_skips_half_written_ones(tmp_path):
    assert train.last_complete_checkpoint(tmp_path / "missing") is None
    good = _checkpoint(tmp_path, 20, state=json.dumps({"global_step": 20}))
    _checkpoint(tmp_path, 100, state=json.dumps({"global_step": 100}))  # numeric order, not text order
    _checkpoint(tmp_path, 110, state='{"global_st')  # cut mid-write
    _checkpoint(tmp_path, 120, state=None)  # trainer_state.json never written
    _checkpoint(tmp_path, 130, state=json.dumps({"global_step": 130}), weights=False)
    (tmp_path / "checkpoint-x").mkdir()
    assert train.last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-100"
    args = train.parse_args(["--output-dir", str(tmp_path)])
    assert train.resume_point(args) == tmp_path / "checkpoint-100"
    assert train.resume_point(train.parse_args(["--output-dir", str(tmp_path), "--resume", "never"])) is None
    assert train.resume_point(train.parse_args(["--resume", str(good)])) == good
    with pytest.raises(SystemExit):
        train.resume_point(train.parse_args(["--resume", str(tmp_path / "checkpoint-120")]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU defaults")
def test_device_settings_on_cpu_and_gpu_only_settings_refused():
    s = train.device_settings(train.parse_args([]))
    assert s == {"bf16": False, "tf32": False, "gradient_checkpointing": False, "compile": False, "cuda": False}
    with pytest.raises(SystemExit, match="tf32"):
        train.device_settings(train.parse_args(["--tf32", "on"]))
    on = train.device_settings(train.parse_args(["--gradient-checkpointing", "on", "--compile", "on", "--bf16", "on"]))
    assert on["gradient_checkpointing"] and on["compile"] and on["bf16"]


def test_device_settings_follow_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    s = train.device_settings(train.parse_args([]))
    assert s["bf16"] and s["tf32"] and s["gradient_checkpointing"] and not s["compile"] and s["cuda"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))  # Turing: no TF32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    s = train.device_settings(train.parse_args([]))
    assert not s["tf32"] and not s["bf16"]
    with pytest.raises(SystemExit):
        train.device_settings(train.parse_args(["--bf16", "on"]))


@pytest.mark.parametrize("argv", [["--num-generations", "1"], ["--max-steps", "0"], ["--beta", "-1"], ["--bf16", "yes"]])
def test_bad_flags_are_refused(argv):
    with pytest.raises(SystemExit):
        train.parse_args(argv)


def test_inputs_are_bounded_and_read_in_three_formats(tmp_path):
    assert train.load_texts("", 40) == train.BUILTIN_TEXTS
    (tmp_path / "a.txt").write_text("one text\n\n two  texts \n")
    assert train.load_texts(str(tmp_path / "a.txt"), 40) == ["one text", "two texts"]
    (tmp_path / "b.jsonl").write_text('{"original": "first"}\n{"text": "second"}\n')
    assert train.load_texts(str(tmp_path / "b.jsonl"), 40) == ["first", "second"]
    (tmp_path / "c.json").write_text(json.dumps({"sampled": ["One two three. Four five six. Seven."]}))
    assert train.load_texts(str(tmp_path / "c.json"), 5) == ["One two three."]
    (tmp_path / "d.txt").write_text("x" * (train.MAX_TEXT_CHARS + 1))
    with pytest.raises(SystemExit, match="characters"):
        train.load_texts(str(tmp_path / "d.txt"), 40)
    (tmp_path / "e.jsonl").write_text('{"original": 3}\n')
    with pytest.raises(SystemExit, match="e.jsonl:1"):
        train.load_texts(str(tmp_path / "e.jsonl"), 40)
    with pytest.raises(SystemExit):
        train.load_texts(str(tmp_path / "nope.txt"), 40)


def test_mesh_addresses_from_flags_then_grpo_mesh_then_crucible_env():
    env = {"CRUCIBLE_DETECTOR_ADDRESS": "10.0.0.1:1", "GRPO_MESH": "proposer=10.0.0.2:2"}
    cfg = train.mesh_config(train.parse_args([]), env)
    assert cfg.services["detector"].addresses == ("10.0.0.1:1",)
    assert cfg.services["proposer"].addresses == ("10.0.0.2:2",)
    cfg = train.mesh_config(train.parse_args(["--mesh", "detector=h:3", "--mesh", "scorer=h:4"]), env)
    assert cfg.services["detector"].addresses == ("h:3",) and cfg.services["scorer"].addresses == ("h:4",)
    assert cfg.services["proposer"].addresses == ("127.0.0.1:50052",)  # flags replace GRPO_MESH
    with pytest.raises(SystemExit):
        train.mesh_config(train.parse_args(["--mesh", "cost=h:5"]), {})


def test_reward_settings_from_flags():
    cfg = train.reward_config(train.parse_args(["--reward-weights", "repetition=2,length=0", "--perplexity-window", "5,30,80"]))
    assert cfg.w_repetition == 2.0 and cfg.w_length == 0.0 and cfg.perplexity_target == 30.0
    with pytest.raises(SystemExit):
        train.reward_config(train.parse_args(["--reward-weights", "vibes=1"]))
    with pytest.raises(SystemExit):
        train.reward_config(train.parse_args(["--perplexity-window", "80,30,5"]))


def test_progress_lines_carry_every_reward_metric_to_the_scheduler():
    line = train.progress_line(
        3, 30, loss=0.1, reward_mean=1.2, reward_std=0.3, kl=0.01, reward_detector=0.7, reward_repetition=-0.2, bad=float("nan")
    )
    tracker = ProgressTracker()
    assert tracker.feed(line, now=1.0)
    p = tracker.progress
    assert (p.step, p.total_steps) == (3, 30)
    assert p.metrics == {
        "loss": 0.1,
        "reward_mean": 1.2,
        "reward_std": 0.3,
        "kl": 0.01,
        "reward_detector": 0.7,
        "reward_repetition": -0.2,
    }
    assert tracker.feed(train.progress_line(5, 30, loss=0.0), now=11.0) and p.eta_s == pytest.approx(125.0)


def test_lora_report_to_and_detect_halves_from_flags(tmp_path):
    assert train.lora_config(train.parse_args([])) is None
    lora = train.lora_config(train.parse_args(["--lora", "--lora-r", "8", "--lora-targets", "q_proj,v_proj"]))
    assert lora.r == 8 and set(lora.target_modules) == {"q_proj", "v_proj"}
    assert train.parse_args([]).report_to == "tensorboard"
    with pytest.raises(SystemExit):
        train.parse_args(["--report-to", "mlflow"])
    cfg = train.reward_config(
        train.parse_args(["--similarity-gate", "0.6,0.8", "--detector-normalization", "none", "--reward-weights", "copy=2"])
    )
    assert (cfg.similarity_gate_low, cfg.similarity_gate_high, cfg.detector_normalization, cfg.w_copy) == (0.6, 0.8, "none", 2.0)
    (tmp_path / "d.json").write_text(json.dumps({"sampled": ["A one.", "B two.", "C three.", "D four."]}))
    (tmp_path / "e.json").write_text(json.dumps({"sampled": ["E five.", "F six."]}))
    both = f"{tmp_path / 'd.json'},{tmp_path / 'e.json'}"
    assert train.load_texts(both, 40, "first") == ["A one.", "B two.", "E five."]
    assert train.load_texts(both, 40, "second") == ["C three.", "D four.", "F six."]
