"""Progress lines parsed into step, totals, metrics and an ETA (domain/progress.py), against hand-computed values."""

from __future__ import annotations

import pytest

from crucible.scheduler.domain.progress import ProgressTracker, progress_line

# --- progress ---------------------------------------------------------------------------------------------------


def test_nanogpt_iter_and_eval_lines() -> None:
    t = ProgressTracker()
    assert t.feed("iter 120: loss 2.3456, time 35.12ms, mfu 12.34%", 1.0)
    assert t.progress.step == 120
    assert t.progress.metrics == {"loss": 2.3456, "iter_time_ms": 35.12, "mfu_percent": 12.34}
    assert t.feed("step 250: train loss 1.9876, val loss 2.0123", 2.0)
    assert t.progress.step == 250
    assert t.progress.metrics["train_loss"] == 1.9876 and t.progress.metrics["val_loss"] == 2.0123
    assert t.progress.metrics["loss"] == 2.3456  # older metrics keep their latest value
    assert t.feed("iter 0: loss 4.1, time 1.0ms, mfu -100.00%", 3.0)
    assert t.progress.metrics["mfu_percent"] == -100.0


def test_epoch_lines_and_noise() -> None:
    t = ProgressTracker()
    assert not t.feed("loading data...", 0.0)
    assert not t.feed("", 0.0)
    assert t.feed("Epoch 3/10", 1.0)
    assert (t.progress.epoch, t.progress.total_epochs) == (3, 10)
    assert not t.feed("Epoch 11/10", 2.0)  # impossible: ignored
    assert t.progress.epoch == 3


def test_json_protocol_and_eta() -> None:
    t = ProgressTracker()
    assert t.feed(progress_line(10, 110, loss=2.5), 100.0)
    assert t.progress.step == 10 and t.progress.total_steps == 110 and t.progress.metrics == {"loss": 2.5}
    assert t.progress.eta_s is None  # one sample: no rate yet
    assert t.feed('{"crucible_progress": {"step": 20, "total_steps": 110, "loss": 2.0, "lr": 0.001, "tag": "x"}}', 110.0)
    assert t.progress.eta_s == pytest.approx(90.0)  # 10 steps per 10 s, 90 steps left
    assert "tag" not in t.progress.metrics and t.progress.metrics["lr"] == 0.001
    assert not t.feed('{"crucible_progress": [1, 2]}', 111.0)
    assert not t.feed('{"crucible_progress": {"step": 30', 111.0)  # truncated JSON
    assert t.progress.step == 20


def test_step_going_back_resets_the_rate() -> None:
    t = ProgressTracker()
    t.feed(progress_line(50, 100), 0.0)
    t.feed(progress_line(60, 100), 10.0)
    assert t.progress.eta_s == pytest.approx(40.0)
    t.feed(progress_line(40, 100), 20.0)  # resumed from an older checkpoint
    assert t.progress.step == 40 and t.progress.eta_s is None


def test_eta_with_lines_read_in_batches() -> None:
    t = ProgressTracker()
    for step in range(50):
        t.feed(progress_line(step, 1000), 10.0)  # one log read: every line has the same time
    assert t.progress.eta_s is None
    for step in range(50, 100):
        t.feed(progress_line(step, 1000), 11.0)
    assert t.progress.eta_s == pytest.approx((1000 - 99) / 50.0)
