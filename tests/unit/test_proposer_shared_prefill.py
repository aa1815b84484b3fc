"""Rows that share a prompt share one prefill (the n candidates of one Propose call): their samples must be those of
the same rows run each alone, and one forward pass over the prompt is saved per extra row (issue 23).
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from crucible.proposer.generation import GenerationRow, generate_rows, row_seed

PAD = 0


def _model() -> LlamaForCausalLM:
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


def test_rows_sharing_a_prompt_sample_as_they_would_alone_and_prefill_once():
    model = _model()
    shared, other = (5, 17, 33, 9, 100, 7, 8), (44, 3)
    rows = [GenerationRow(shared, 1.0, 0.9, 10, row_seed(7, i)) for i in range(4)] + [GenerationRow(other, 0.7, 1.0, 10, 3)]
    widths: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[0]))
    try:
        batched = generate_rows(model, rows, eos_token_ids=(2,), pad_token_id=PAD)
    finally:
        hook.remove()
    assert widths[0] == 2  # the prefill ran the two distinct prompts only
    assert widths[1] == 5  # then every row decodes on its own copy of its prompt's cache
    alone = [generate_rows(model, [row], eos_token_ids=(2,), pad_token_id=PAD)[0] for row in rows]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert len({r.token_ids for r in batched[:4]}) > 1  # different seeds still give different candidates
