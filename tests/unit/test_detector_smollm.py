"""Golden test of the batched criterion on the real SmolLM2-135M (fp32): equal to the per-text formula, both paddings.

Slow: loads the packaged model (prepared once into the Crucible cache), offline.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from crucible import models
from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector
from crucible.detector.criterion import CausalScorer, model_statistics, pad_batch, reference_criterion
from crucible.detector.pipeline import load_calibration

pytestmark = pytest.mark.slow

TEXT = (
    "The committee met on Tuesday to discuss the budget for the new library, which has been delayed twice. "
    "Several members argued that the reading rooms should open before the archive, while others wanted the "
    "children's section finished first. "
) * 12
LENGTHS = [2, 9, 130, 512]


@pytest.fixture(scope="module")
def smollm() -> models.LoadedModel:
    try:
        models.prepare_models(log=lambda line: None)
    except models.ModelPackageMissingError as exc:
        pytest.skip(str(exc))
    return models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype="float32")


def test_batched_criterion_equals_per_text_formula_on_smollm2(smollm):
    ids = smollm.tokenizer(TEXT)["input_ids"]
    assert len(ids) >= max(LENGTHS)
    # Different windows of the text, so the texts differ and lengths range from 2 to 512 tokens.
    texts = [ids[7 * i : 7 * i + n] for i, n in enumerate(LENGTHS)]
    expected = []
    with torch.inference_mode():
        for seq in texts:
            t = torch.tensor([seq])
            logits = smollm.model(input_ids=t).logits[0, :-1].double()
            labels = t[0, 1:]
            lp = torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
            expected.append((reference_criterion(logits, logits, labels), float(torch.exp(-lp.mean()))))
    scorer = CausalScorer(smollm.model)
    for side in ("right", "left"):
        stats = model_statistics(scorer, *pad_batch(texts, smollm.tokenizer.pad_token_id, side=side))
        for i, (crit, ppl) in enumerate(expected):
            got = stats.select(i)
            assert got["criterion"] == pytest.approx(crit, rel=1e-4, abs=1e-5), (side, LENGTHS[i])
            assert got["perplexity"] == pytest.approx(ppl, rel=1e-4), (side, LENGTHS[i])


def test_smollm2_is_calibrated_out_of_the_box_and_binoculars_says_one_model(smollm):
    detector = Detector(DetectorConfig(), smollm)
    calibration = load_calibration(detector)
    assert calibration.method == "logistic_ensemble" and calibration.source == "builtin"
    (scores,) = detector.score(detector.prepare([TEXT[:400]], classifier=False))
    assert 0.0 < calibration.probability(scores.features()) < 1.0
    assert 1 < scores.perplexity < 100 and scores.token_count == 73  # fluent English: low perplexity
    assert "binoculars used one model for observer and performer" in detector.members[1].notes
