"""Golden tests of the batched, masked criterion against the straightforward per-text formula on tiny random models.

Mixed lengths 2..512, left and right padding, one model or two different models sharing a vocabulary, fp32 and bf16.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from crucible.detector.criterion import (
    CausalScorer,
    TokenStatistics,
    analytic_statistics,
    model_statistics,
    pad_batch,
    reference_criterion,
    scored_mask,
)

VOCAB = 512
LENGTHS = [2, 3, 17, 64, 129, 512]


def _llama(seed: int, vocab: int = VOCAB, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
        tie_word_embeddings=False,
        initializer_range=0.1,
    )
    return LlamaForCausalLM(config).eval()


def _gpt2(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=2, n_positions=1024, initializer_range=0.1)
    return GPT2LMHeadModel(config).eval()


def _texts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _reference(sampling, scoring, seq: list[int]) -> dict[str, float]:
    """Per text, unpadded (batch of one): the straightforward formulas of Fast-DetectGPT, perplexity and Binoculars."""
    ids = torch.tensor([seq])
    with torch.inference_mode():
        # The formula is evaluated in float64 on the model's fp32 logits: the exact value of the statistics.
        score_logits = scoring(input_ids=ids).logits[0, :-1].double()
        ref_logits = sampling(input_ids=ids).logits[0, :-1].double()
    labels = ids[0, 1:]
    crit = reference_criterion(ref_logits, score_logits, labels)
    vocab = min(ref_logits.shape[-1], score_logits.shape[-1])
    lp = torch.log_softmax(score_logits[:, :vocab], -1)
    ll = lp.gather(-1, labels[:, None]).squeeze(-1)
    ppl = math.exp(float(-ll.mean()))
    # Binoculars' cross-perplexity runs over every position, the last one included (see test_detector_binoculars).
    with torch.inference_mode():
        last_score = scoring(input_ids=ids).logits[0, -1:].double()[:, :vocab]
        last_ref = sampling(input_ids=ids).logits[0, -1:].double()[:, :vocab]
    all_lp = torch.cat([lp, torch.log_softmax(last_score, -1)])
    all_q = torch.cat([torch.softmax(ref_logits[:, :vocab], -1), torch.softmax(last_ref, -1)])
    x_ppl = float(-(all_q * all_lp).sum(-1).mean())
    return {"criterion": crit, "perplexity": ppl, "binoculars": float(-ll.mean()) / x_ppl}


def _assert_matches(stats: TokenStatistics, expected: list[dict[str, float]], lengths: list[int], rel: float = 1e-4) -> None:
    assert stats.log_likelihood.dtype == torch.float32 and stats.criterion().shape == (len(expected),)
    assert stats.scored_tokens.tolist() == [n - 1 for n in lengths]
    for i, want in enumerate(expected):
        got = stats.select(i)
        for key in ("criterion", "perplexity", "binoculars"):
            assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-6), (i, key, got[key], want[key])


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return _llama(1)


@pytest.fixture(scope="module")
def llama_references(llama) -> list[dict[str, float]]:
    return [_reference(llama, llama, seq) for seq in _texts(LENGTHS)]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_single_model_equals_per_text_formula(llama, llama_references, side):
    ids, mask = pad_batch(_texts(LENGTHS), 0, side=side)
    scorer = CausalScorer(llama)
    assert scorer.split
    stats = model_statistics(scorer, ids, mask)
    _assert_matches(stats, llama_references, LENGTHS)


def test_small_chunks_and_full_logit_fallback_give_the_same_result(llama, llama_references):
    ids, mask = pad_batch(_texts(LENGTHS), 0)
    scorer = CausalScorer(llama)
    _assert_matches(model_statistics(scorer, ids, mask, chunk_elements=VOCAB * 3), llama_references, LENGTHS)
    scorer.split = False  # the path taken for heads that are not a plain linear layer
    _assert_matches(model_statistics(scorer, ids, mask, chunk_elements=VOCAB * 7), llama_references, LENGTHS)


def test_gpt2_batched_equals_per_text_formula_both_paddings():
    model = _gpt2(2)
    lengths = [2, 5, 40, 300]
    expected = [_reference(model, model, seq) for seq in _texts(lengths, seed=3)]
    for side in ("right", "left"):
        ids, mask = pad_batch(_texts(lengths, seed=3), 0, side=side)
        _assert_matches(model_statistics(CausalScorer(model), ids, mask), expected, lengths)


def test_two_models_sharing_a_vocabulary(llama):
    # A different architecture size and a wider (padded) output head: the vocabulary is cut to the common width.
    sampling = _llama(7, vocab=VOCAB + 8, layers=1)
    lengths = [2, 9, 100, 257]
    texts = _texts(lengths, seed=5)
    expected = [_reference(sampling, llama, seq) for seq in texts]
    for side in ("right", "left"):
        ids, mask = pad_batch(texts, 0, side=side)
        stats = model_statistics(CausalScorer(llama), ids, mask, CausalScorer(sampling))
        _assert_matches(stats, expected, lengths)
    same = model_statistics(CausalScorer(llama), *pad_batch(texts, 0))
    assert not torch.allclose(same.criterion(), stats.criterion())  # the sampling model matters


def test_unmasked_padding_would_change_the_result(llama, llama_references):
    """The bug of batching the reference naively: summing over padded positions moves the short texts' criteria."""
    texts = _texts(LENGTHS)
    ids, mask = pad_batch(texts, 0)
    with torch.inference_mode():
        logits = llama(input_ids=ids, attention_mask=mask).logits
    naive = analytic_statistics(logits, None, ids, torch.ones_like(mask))
    masked = analytic_statistics(logits, None, ids, mask)
    _assert_matches(masked, llama_references, LENGTHS)
    short = LENGTHS.index(17)
    assert abs(naive.select(short)["criterion"] - llama_references[short]["criterion"]) > 1e-2


def test_scored_mask_skips_the_first_real_token_under_left_padding():
    _, right = pad_batch([[5, 6, 7], [5]], 0, side="right")
    _, left = pad_batch([[5, 6, 7], [5, 6]], 0, side="left")
    assert scored_mask(right).tolist() == [[True, True], [False, False]]
    assert scored_mask(left).tolist() == [[True, True], [False, True]]


def test_bf16_model_statistics_are_fp32_and_close_to_fp32(llama):
    texts = _texts([20, 70, 130], seed=9)
    ids, mask = pad_batch(texts, 0)
    fp32 = model_statistics(CausalScorer(llama), ids, mask)
    half = _llama(1).to(torch.bfloat16)
    stats = model_statistics(CausalScorer(half), ids, mask)
    assert stats.variance.dtype == torch.float32
    assert torch.allclose(stats.criterion(), fp32.criterion(), atol=0.1, rtol=0.05)


def test_pad_batch_rejects_an_unknown_side():
    with pytest.raises(ValueError, match="padding side"):
        pad_batch([[1, 2]], 0, side="middle")


class _TrackingKernel:
    """A statistics kernel whose outputs are views of a large per-chunk temporary (as a fused or eager kernel's
    outputs can be): it records the temporaries' storages, so a test can tell whether any reaches the reduction."""

    def __init__(self) -> None:
        self.storages: set[int] = set()
        self.calls = 0

    def __call__(self, score_logits, ref_logits, labels):
        from crucible.detector.criterion import vocabulary_statistics

        self.calls += 1
        temporary = torch.zeros(labels.shape[0], 4096)  # stands for the chunk's fp32 softmax and friends
        self.storages.add(temporary.untyped_storage().data_ptr())
        for k, value in enumerate(vocabulary_statistics(score_logits, ref_logits, labels)):
            temporary[:, k] = value
        return tuple(temporary[:, k] for k in range(5))  # views: keeping them keeps the temporary


@pytest.mark.parametrize("path", ["full logits", "split head"])
def test_each_chunks_outputs_are_released_before_the_next_chunk(path, monkeypatch):
    """Every chunk's outputs were kept in a list until the end: 32 texts through SmolLM2's vocabulary then held
    5.7 GB resident instead of 1.2 GB (the allocator's heap stayed pinned between the chunks' temporaries). The
    outputs are now copied into buffers allocated before the loop, so nothing of a chunk outlives it: no storage
    the kernel returned reaches the reduction."""
    import crucible.detector.criterion as criterion

    reduced: list[int] = []
    real_reduce = criterion._reduce

    def spy(batch, rows, scored, parts, device):
        reduced.extend(t.untyped_storage().data_ptr() for part in parts for t in part)
        return real_reduce(batch, rows, scored, parts, device)

    monkeypatch.setattr(criterion, "_reduce", spy)
    model = _llama(0)
    ids, mask = pad_batch(_texts([40, 64, 17, 90]), 0)
    kernel = _TrackingKernel()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
        if path == "full logits":
            got = analytic_statistics(logits, None, ids, mask, chunk_elements=16 * VOCAB, kernel=kernel)
        else:
            scorer = CausalScorer(model)
            assert scorer.split
            got = model_statistics(scorer, ids, mask, chunk_elements=16 * VOCAB, kernel=kernel)
    assert kernel.calls > 5 and reduced and not set(reduced) & kernel.storages
    want = analytic_statistics(logits, None, ids, mask)
    assert torch.allclose(got.criterion(), want.criterion(), atol=1e-4)
