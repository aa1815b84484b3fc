"""Start-up: phase timings recorded by the loaders and the detector, and the statistics kernel compiled before SERVING.

Issue 27: the detector compiled its kernel in a background thread while already serving, so a benchmark right after
start measured the compile too.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from crucible.detector import core
from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector
from crucible.detector.criterion import StatisticsKernel
from crucible.detector.kernel_cache import kernel_cache_dir, prepare_kernel
from crucible.runtime.startup import STARTUP, StartupPhases, process_age
from tests.unit.test_detector_engine import tiny_lm_folder


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return tiny_lm_folder(tmp_path_factory.mktemp("startup-lm") / "lm", seed=0)


def _settings(folder, **kw) -> DetectorConfig:
    base = dict(model=str(folder), device="cpu", dtype="float32", max_tokens=64, max_texts_per_call=8, max_text_bytes=2000)
    base.update(kw)
    return DetectorConfig(**base)


def test_phases_add_up_and_summarise():
    phases = StartupPhases()
    with phases.phase("weights"):
        time.sleep(0.02)
    with phases.phase("weights"):
        time.sleep(0.02)
    with pytest.raises(RuntimeError), phases.phase("failed"):
        raise RuntimeError("recorded anyway")
    summary = phases.summary()
    assert list(summary["phases"]) == ["weights", "failed"]
    assert summary["phases"]["weights"]["wall_s"] >= 0.04
    assert summary["process_s"] >= summary["phases"]["weights"]["wall_s"]
    assert 0 < process_age() < 24 * 3600


def test_loading_a_model_records_its_phases(lm_folder):
    STARTUP.clear()
    Detector.load(_settings(lm_folder, stats_kernel="eager"))
    assert {"import_transformers", "weights", "tokenizer"} <= set(STARTUP.summary()["phases"])


def _slow_compile(calls):
    def compile_(self, vocab, dtype, device, **kw):
        calls.append(kw.get("cache_dir"))
        time.sleep(0.5)  # a background compile would still be running when warm_up returns
        self.mode = "compiled"
        return True

    return compile_


def test_auto_compiles_before_warm_up_returns(monkeypatch, lm_folder, tmp_path):
    calls: list = []
    monkeypatch.setattr(StatisticsKernel, "compile", _slow_compile(calls))
    monkeypatch.setattr(core, "compiler_available", lambda device: True)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    detector = Detector.load(_settings(lm_folder, stats_kernel="auto", model_cache_dir=str(tmp_path)))
    detector.warm_up()
    assert detector.kernel.mode == "compiled"  # full speed from the first call after SERVING
    assert calls == [tmp_path / "inductor"]  # compiled code kept under the model cache


def test_auto_without_a_compiler_stays_eager_and_does_not_try(monkeypatch, lm_folder):
    calls: list = []
    monkeypatch.setattr(StatisticsKernel, "compile", _slow_compile(calls))
    monkeypatch.setattr(core, "compiler_available", lambda device: False)
    detector = Detector.load(_settings(lm_folder, stats_kernel="auto"))
    detector.warm_up()
    assert detector.kernel.mode == "eager" and calls == []


def test_kernel_cache_dir_follows_the_environment_then_the_model_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert kernel_cache_dir(tmp_path) == tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "explicit"))
    assert kernel_cache_dir(tmp_path) == tmp_path / "explicit"


def test_torchs_own_default_in_the_environment_does_not_move_the_kernels(monkeypatch, tmp_path):
    """torch writes its /tmp default into $TORCHINDUCTOR_CACHE_DIR when asked for the cache (converting a model does):
    `crucible models prepare` right after a conversion compiled the kernels there, where the detector never looks."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache_dir()  # what torch does on its own; it sets the variable
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert kernel_cache_dir(tmp_path) == tmp_path / "inductor"


def test_compile_records_its_phase(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(StatisticsKernel, "_compile", lambda self, *a: False)
    STARTUP.clear()
    StatisticsKernel().compile(16, torch.float32, torch.device("cpu"))
    assert "compile_statistics" in STARTUP.summary()["phases"]


def test_models_prepare_compiles_the_kernel_once_per_torch(monkeypatch, tmp_path):
    """`crucible models prepare` compiles the default model's kernel ahead, so a fresh cache's first start does not."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    calls: list = []
    monkeypatch.setattr(StatisticsKernel, "compile", _slow_compile(calls))
    monkeypatch.setattr("crucible.detector.criterion.compiler_available", lambda device: True)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"vocab_size": 320}')
    assert prepare_kernel(tmp_path, model, log=lambda line: None) is True
    assert calls == [tmp_path / "inductor"]
    assert prepare_kernel(tmp_path, model, log=lambda line: None) is False  # the marker: nothing to do, torch not needed
    assert len(calls) == 1
    (model / "config.json").write_text("{}")
    assert prepare_kernel(tmp_path, model, log=lambda line: None) is None
