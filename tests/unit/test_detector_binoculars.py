"""Golden tests: Binoculars and the pass's by-products equal per-text transcriptions of the authors' formulas.

Binoculars: ahans30/Binoculars `binoculars/metrics.py` (perplexity over the shifted attention mask from the performer's
logits; cross-perplexity over every position, observer softmax against performer log-softmax). By-products:
baoguangsheng/fast-detect-gpt `scripts/baselines.py` (likelihood, log-rank, entropy). Written here from the published
formulas, evaluated in float64 per unpadded text; the service's batched path must agree within 1e-4, padded left or
right, with one model or two. Also: the fused/compiled statistics kernel and the bf16 accuracy bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crucible.detector.criterion import (
    CausalScorer,
    StatisticsKernel,
    TokenStatistics,
    analytic_statistics,
    model_statistics,
    pad_batch,
    vocabulary_statistics,
)
from tests.unit.test_detector_criterion import VOCAB, _gpt2, _llama, _texts

TOLERANCE = 1e-4
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "detect"


def binoculars_reference(observer_logits: torch.Tensor, performer_logits: torch.Tensor, ids: torch.Tensor) -> float:
    """B = ppl / x_ppl for one unpadded text: logits [T, V] of every position, token ids [T]; float64.

    ppl: mean over positions 0..T-2 of the performer's cross-entropy against the next token (metrics.perplexity,
    whose shifted attention mask is all ones without padding). x_ppl: mean over positions 0..T-1 (the last one
    included: metrics.entropy masks with the unshifted mask) of -sum_v softmax(observer)_v log_softmax(performer)_v.
    """
    performer = performer_logits.double()
    observer = observer_logits.double()
    ppl = torch.nn.functional.cross_entropy(performer[:-1], ids[1:], reduction="none").mean()
    target = torch.softmax(observer, dim=-1)
    x_ppl = torch.nn.functional.cross_entropy(performer, target, reduction="none").mean()
    return float(ppl / x_ppl)


def baselines_reference(logits: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    """Likelihood, log-rank and entropy baselines of one unpadded text from the scoring logits [T, V]; float64.

    As scripts/baselines.py: logits[:-1] score ids[1:]; rank from a descending sort (1 = top), mean log rank (the
    reference reports its negation); entropy -sum p log p averaged over the same positions.
    """
    scored = logits[:-1].double()
    labels = ids[1:]
    lp = torch.log_softmax(scored, dim=-1)
    order = scored.argsort(dim=-1, descending=True)
    rank = (order == labels[:, None]).nonzero()[:, 1].double() + 1
    return {
        "log_likelihood": float(lp.gather(-1, labels[:, None]).mean()),
        "log_rank": float(rank.log().mean()),
        "entropy": float(-(lp.exp() * lp).sum(-1).mean()),
    }


def _logits(model, seq: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([seq])).logits[0]


def _check(stats: TokenStatistics, observer, performer, texts: list[list[int]], tolerance: float = TOLERANCE) -> float:
    worst = 0.0
    for i, seq in enumerate(texts):
        ids = torch.tensor(seq)
        performer_logits = _logits(performer, seq)
        observer_logits = performer_logits if observer is performer else _logits(observer, seq)
        want = {
            "binoculars": binoculars_reference(observer_logits, performer_logits, ids),
            **baselines_reference(performer_logits, ids),
        }
        got = stats.select(i)
        for key, value in want.items():
            assert abs(got[key] - value) < tolerance, (i, len(seq), key, got[key], value)
            worst = max(worst, abs(got[key] - value))
    return worst


@pytest.mark.parametrize("side", ["right", "left"])
def test_binoculars_single_model_equals_the_reference_formula(side):
    model = _llama(1)
    lengths = [2, 3, 17, 64, 129, 300]
    texts = _texts(lengths, seed=11)
    stats = model_statistics(CausalScorer(model), *pad_batch(texts, 0, side=side))
    _check(stats, model, model, texts)


@pytest.mark.parametrize("side", ["right", "left"])
def test_binoculars_observer_and_performer_differ(side):
    performer = _llama(1)
    observer = _llama(7, vocab=VOCAB + 8, layers=1)  # wider head: cut to the common vocabulary
    lengths = [2, 9, 100, 257]
    texts = _texts(lengths, seed=5)
    stats = model_statistics(CausalScorer(performer), *pad_batch(texts, 0, side=side), CausalScorer(observer))
    for i, seq in enumerate(texts):
        ids = torch.tensor(seq)
        want = binoculars_reference(_logits(observer, seq)[:, :VOCAB], _logits(performer, seq), ids)
        assert abs(stats.select(i)["binoculars"] - want) < TOLERANCE


def test_binoculars_gpt2_full_logit_fallback_and_small_chunks():
    model = _gpt2(2)
    lengths = [2, 5, 40, 300]
    texts = _texts(lengths, seed=3)
    scorer = CausalScorer(model)
    for side in ("right", "left"):
        _check(model_statistics(scorer, *pad_batch(texts, 0, side=side), chunk_elements=VOCAB * 3), model, model, texts)
    scorer.split = False  # heads that are not a plain linear layer: full logits, gathered at real positions
    _check(model_statistics(scorer, *pad_batch(texts, 0, side="left"), chunk_elements=VOCAB * 7), model, model, texts)


def test_the_former_formula_differs_from_the_reference():
    """Before: B = sum ll / sum mu over the scored positions only; the reference's x_ppl also averages the last
    position over T positions. On short texts the two differ far beyond the tolerance."""
    model = _llama(1)
    texts = _texts([3, 5, 9], seed=2)
    stats = model_statistics(CausalScorer(model), *pad_batch(texts, 0))
    former = (stats.log_likelihood / stats.expected_log_likelihood).tolist()
    reference = [binoculars_reference(_logits(model, s), _logits(model, s), torch.tensor(s)) for s in texts]
    assert max(abs(a - b) for a, b in zip(former, reference, strict=True)) > 1e-3
    assert max(abs(a - b) for a, b in zip(stats.binoculars().tolist(), reference, strict=True)) < TOLERANCE


def test_vocabulary_statistics_match_an_explicit_float64_computation():
    g = torch.Generator().manual_seed(0)
    score = torch.randn(6, 50, generator=g) * 4
    ref = torch.randn(6, 53, generator=g) * 4
    labels = torch.randint(0, 50, (6,), generator=g)
    for sampling in (None, ref):
        ll, mu, var, log_rank, entropy = vocabulary_statistics(score, sampling, labels)
        lp = torch.log_softmax(score.double(), -1)
        q = lp.exp() if sampling is None else torch.softmax(sampling[:, :50].double(), -1)
        mean = (q * lp).sum(-1)
        assert torch.allclose(ll.double(), lp.gather(-1, labels[:, None]).squeeze(-1), atol=1e-5)
        assert torch.allclose(mu.double(), mean, atol=1e-5)
        assert torch.allclose(var.double(), (q * lp * lp).sum(-1) - mean**2, atol=1e-4)
        rank = (score > score.gather(-1, labels[:, None])).sum(-1) + 1
        assert torch.allclose(log_rank.double(), rank.double().log(), atol=1e-6)
        assert torch.allclose(entropy.double(), -(lp.exp() * lp).sum(-1), atol=1e-5)


# ---- the compiled kernel and bf16 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_kernel() -> StatisticsKernel:
    kernel = StatisticsKernel()
    assert kernel.compile(VOCAB, torch.float32, torch.device("cpu")), kernel.failure
    return kernel


@pytest.mark.slow
def test_compiled_kernel_equals_the_reference_batched_and_padded(compiled_kernel):
    model = _llama(1)
    lengths = [2, 3, 17, 64, 129]
    texts = _texts(lengths, seed=11)
    assert compiled_kernel.mode == "compiled"
    for side in ("right", "left"):
        # Chunks of 1 to 7 rows: the one-row chunk takes the padded path, the others the dynamic shapes.
        for chunk in (VOCAB, VOCAB * 7):
            stats = model_statistics(
                CausalScorer(model), *pad_batch(texts, 0, side=side), chunk_elements=chunk, kernel=compiled_kernel
            )
            _check(stats, model, model, texts)


def test_a_failing_compile_leaves_eager_mode(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    kernel = StatisticsKernel()
    assert not kernel.compile(VOCAB, torch.float32, torch.device("cpu"))
    assert kernel.mode == "eager" and "no C++ compiler" in kernel.failure
    model = _llama(1)
    texts = _texts([4, 30], seed=1)
    _check(model_statistics(CausalScorer(model), *pad_batch(texts, 0), kernel=kernel), model, model, texts)


def _statistics_from_logits(logits: torch.Tensor, seq: list[int]) -> dict[str, float]:
    """Float64 statistics of one text from given logits [T, V] (here: the bf16 model's own logits).

    bf16 logits tie often (8 mantissa bits), and a sort orders ties arbitrarily, so the rank here is the tie-free
    definition the service uses: 1 + the number of strictly larger logits (the best rank among equals).
    """
    ids = torch.tensor(seq)
    scored = logits[:-1].double()
    rank = (scored > scored.gather(-1, ids[1:, None])).sum(-1).double() + 1
    lp = torch.log_softmax(scored, -1)
    p = lp.exp()
    ll = lp.gather(-1, ids[1:, None]).squeeze(-1)
    mu = (p * lp).sum(-1)
    var = (p * lp * lp).sum(-1) - mu**2
    return {
        "criterion": float((ll.sum() - mu.sum()) / var.sum().sqrt()),
        "binoculars": binoculars_reference(logits, logits, ids),
        **baselines_reference(logits, ids),
        "log_rank": float(rank.log().mean()),
    }


BF16_BOUND = 1e-4


@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_statistics_are_within_the_stated_bound_of_float64_on_the_same_logits(compiled):
    """The stated bf16 bound: given a bf16 model's logits, every score (criterion, Binoculars, means) is within 1e-4
    of the float64 computation on those same bf16 logits: the statistics read bf16 and compute in fp32, adding no
    bf16 error of their own. How far bf16 weights move the scores from an fp32 model is the model's own rounding
    (last assertion, a loose bound on a random model)."""
    half = _llama(1).to(torch.bfloat16)
    kernel = StatisticsKernel()
    if compiled:
        assert kernel.compile(VOCAB, torch.bfloat16, torch.device("cpu")), kernel.failure
    lengths = [2, 20, 70, 130]
    texts = _texts(lengths, seed=9)
    for side in ("right", "left"):
        ids, mask = pad_batch(texts, 0, side=side)
        with torch.inference_mode():
            logits = half(input_ids=ids, attention_mask=mask).logits
        assert logits.dtype == torch.bfloat16
        stats = analytic_statistics(logits, None, ids, mask, kernel=kernel)
        assert stats.variance.dtype == torch.float32
        for i, seq in enumerate(texts):
            want = _statistics_from_logits(logits[i][mask[i].bool()], seq)
            got = stats.select(i)
            for key, value in want.items():
                assert abs(got[key] - value) < BF16_BOUND, (side, i, key, got[key], value)
    fp32 = model_statistics(CausalScorer(_llama(1)), *pad_batch(texts, 0))
    bf16 = model_statistics(CausalScorer(half), *pad_batch(texts, 0), kernel=kernel)
    assert torch.allclose(bf16.criterion(), fp32.criterion(), atol=0.1, rtol=0.05)


# ---- real SmolLM2 texts -----------------------------------------------------------------------------------------------


def _real_texts(tokenizer) -> list[list[int]]:
    """Six texts of the detect data (human and machine, both domains) when ../shared/data is here, else built-in prose."""
    texts: list[str] = []
    for name in ("xsum_gpt-4.json", "writing_gpt-3.5-turbo.json", "writing_gpt2-xl.json"):
        path = DATA / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            texts += [data["original"][3], data["sampled"][3]]
    if not texts:
        texts = [
            (
                "The committee met on Tuesday to discuss the budget for the new library, which has been delayed "
                "twice. Several members argued that the reading rooms should open first. "
            )
            * (i + 1)
            for i in range(6)
        ]
    cuts = [2, 9, 60, 200, 400, 512]
    return [tokenizer(t)["input_ids"][:n] for t, n in zip(texts, cuts, strict=False)]


@pytest.mark.slow
def test_binoculars_equals_the_reference_on_smollm2():
    from crucible import models

    try:
        models.prepare_models(log=lambda line: None)
    except models.ModelPackageMissingError as exc:
        pytest.skip(str(exc))
    smollm = models.load_causal_lm("smollm2-135m-instruct", device="cpu", dtype="float32")
    texts = _real_texts(smollm.tokenizer)
    assert len(texts) == 6 and min(map(len, texts)) == 2
    scorer = CausalScorer(smollm.model)
    for side in ("right", "left"):
        stats = model_statistics(scorer, *pad_batch(texts, smollm.tokenizer.pad_token_id, side=side))
        _check(stats, smollm.model, smollm.model, texts)
