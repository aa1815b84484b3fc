"""Golden tests of the proposer's batched sampler against straightforward per-row computations and HF generate.

A tiny random Llama (built in memory, fp32) stands in for the generator: quality does not matter here, exactness does.
"""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from crucible.proposer.generation import (
    FINISH_ABORTED,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationRow,
    filter_top_p,
    generate_rows,
    row_seed,
    sample_next,
)

PAD = 0


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def _gen(model, rows, eos=()):
    return generate_rows(model, rows, eos_token_ids=eos, pad_token_id=PAD)


PROMPTS = [(5, 17, 33, 9, 100, 7, 8), (44, 3), (250, 251, 252, 253, 254)]


def test_greedy_batch_matches_hf_generate_row_by_row(model):
    rows = [GenerationRow(p, 0.0, 1.0, 12, 0) for p in PROMPTS]
    batched = _gen(model, rows, eos=(2,))
    for prompt, out in zip(PROMPTS, batched, strict=True):
        reference = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12, pad_token_id=PAD, eos_token_id=2)[
            0, len(prompt) :
        ].tolist()
        if 2 in reference:
            reference = reference[: reference.index(2)]
            assert out.finish == FINISH_STOP
        else:
            assert out.finish == FINISH_LENGTH and out.steps == 12
        assert list(out.token_ids) == reference


def test_sampled_rows_do_not_depend_on_their_batch(model):
    rows = [
        GenerationRow(p, t, top_p, 10, row_seed(42, i))
        for i, (p, t, top_p) in enumerate(zip(PROMPTS, (1.0, 0.7, 1.5), (1.0, 0.9, 0.5), strict=True))
    ]
    batched = _gen(model, rows)
    alone = [_gen(model, [row])[0] for row in rows]
    assert batched == alone
    reversed_batch = _gen(model, rows[::-1])[::-1]
    assert reversed_batch == batched


def test_same_seed_same_tokens_other_seed_other_tokens(model):
    row = GenerationRow(PROMPTS[0], 1.0, 1.0, 16, 7)
    assert _gen(model, [row]) == _gen(model, [row])
    others = [_gen(model, [GenerationRow(PROMPTS[0], 1.0, 1.0, 16, seed)])[0].token_ids for seed in (8, 9, 10)]
    assert any(tokens != _gen(model, [row])[0].token_ids for tokens in others)


def test_eos_stops_its_row_only(model):
    first = _gen(model, [GenerationRow(PROMPTS[0], 0.0, 1.0, 10, 0)])[0].token_ids
    k = next(i for i, tok in enumerate(first) if i >= 2 and tok not in first[:i])
    eos = (first[k],)
    rows = [GenerationRow(PROMPTS[0], 0.0, 1.0, 10, 0), GenerationRow(PROMPTS[1], 0.0, 1.0, 10, 0)]
    stopped, other = _gen(model, rows, eos)
    assert stopped.token_ids == first[:k] and stopped.finish == FINISH_STOP and stopped.steps == k + 1
    assert other == _gen(model, [rows[1]], eos)[0]


def test_rows_end_at_their_own_max_new_tokens(model):
    rows = [GenerationRow(PROMPTS[0], 1.0, 1.0, 3, 1), GenerationRow(PROMPTS[1], 1.0, 1.0, 7, 2)]
    short, long = _gen(model, rows)
    assert (len(short.token_ids), short.finish) == (3, FINISH_LENGTH)
    assert (len(long.token_ids), long.finish) == (7, FINISH_LENGTH)
    assert long == _gen(model, [rows[1]])[0]


def test_abort_flag_stops_a_row_at_the_next_token(model):
    flag = threading.Event()
    flag.set()
    aborted, running = _gen(model, [GenerationRow(PROMPTS[0], 1.0, 1.0, 20, 1, flag), GenerationRow(PROMPTS[1], 1.0, 1.0, 20, 2)])
    assert aborted.finish == FINISH_ABORTED and len(aborted.token_ids) == 1
    assert running.finish == FINISH_LENGTH and len(running.token_ids) == 20


def test_bad_rows_are_refused(model):
    with pytest.raises(ValueError, match="empty prompt"):
        _gen(model, [GenerationRow((), 1.0, 1.0, 4, 0)])
    with pytest.raises(ValueError, match="max_new_tokens"):
        _gen(model, [GenerationRow((1,), 1.0, 1.0, 0, 0)])
    assert _gen(model, []) == []


def test_filter_top_p_matches_a_per_row_computation():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
    top_p = torch.tensor([0.3, 0.9, 1.0, 0.01])
    filtered = filter_top_p(logits, top_p)
    for row in range(4):
        probs = logits[row].softmax(-1)
        order = probs.argsort(descending=True).tolist()
        kept, mass = set(), 0.0
        for token in order:
            if kept and mass >= float(top_p[row]) and float(top_p[row]) < 1.0:
                break
            kept.add(token)
            mass += float(probs[token])
        expected = {t for t in range(50) if torch.isfinite(filtered[row, t])}
        assert expected == kept
        assert torch.equal(filtered[row, sorted(kept)], logits[row, sorted(kept)])


def test_sample_next_follows_the_distribution_and_greedy_is_argmax():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    draws = [int(sample_next(logits, torch.tensor([1.0]), torch.tensor([1.0]), [generator])) for _ in range(4000)]
    freq = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    nucleus = [int(sample_next(logits, torch.tensor([1.0]), torch.tensor([0.6]), [generator])) for _ in range(500)]
    assert set(nucleus) == {0, 1}
    greedy = sample_next(torch.randn(3, 9), torch.zeros(3), torch.ones(3), [torch.Generator() for _ in range(3)])
    assert greedy.shape == (3,)
    with pytest.raises(ValueError, match="generators"):
        sample_next(torch.zeros(2, 3), torch.ones(2), torch.ones(2), [generator])


def test_row_seed_is_stable_distinct_and_in_range():
    seeds = [row_seed(123, i) for i in range(64)]
    assert len(set(seeds)) == 64
    assert seeds == [row_seed(123, i) for i in range(64)]
    assert all(0 <= s < 2**63 for s in [*seeds, row_seed(2**64 - 1, 5)])
    assert row_seed(124, 0) != row_seed(123, 0)


@pytest.mark.parametrize("scale", [0.5, 8.0])
def test_partial_sort_nucleus_equals_the_full_sort(monkeypatch, scale):
    from crucible.proposer import generation

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(5)) * scale
    top_p = torch.tensor([0.2, 0.5, 0.9, 0.99, 1.0, 0.05])
    full = filter_top_p(logits, top_p)  # 300 <= TOP_P_CANDIDATES: one full sort
    monkeypatch.setattr(generation, "TOP_P_CANDIDATES", 8)
    assert torch.equal(torch.isfinite(filter_top_p(logits, top_p)), torch.isfinite(full))
    assert torch.equal(filter_top_p(logits, top_p)[4], logits[4])
