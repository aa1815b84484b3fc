"""The LLM judge of question equivalence (SECA's feasibility check): an instruction model asked, greedily, whether two
questions entail each other, add or drop nothing and have the same answer; scored as P(yes) over yes/no, both orders.

Pure torch over a loaded causal LM (no grpc); the engine runs `judge_probabilities` in its batcher's worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crucible.models import LoadedModel
from crucible.proposer import prompts

JUDGE_SYSTEM = (
    "You check whether a reworded exam question is the same question as the original. Answer Yes only if all of "
    "these hold: each question implies the other; the reworded question adds no information, condition or focus; it "
    "leaves nothing out; and the correct answer to one is the correct answer to the other. Otherwise answer No. "
    "Reply with one word: Yes or No."
)


def judge_messages(first: str, second: str) -> list[dict[str, str]]:
    """The conversation asking the judge about one ordered pair."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": f"Question 1: {first.strip()}\nQuestion 2: {second.strip()}\n\n"
            "Are these the same question with the same answer? Answer Yes or No.",
        },
    ]


def answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """First token ids of the ways a model writes Yes and No at the start of its reply (deduplicated; the two sets are
    disjoint). A tokenizer that cannot tell them apart is refused."""
    yes: set[int] = set()
    no: set[int] = set()
    for word, into in (("Yes", yes), ("yes", yes), ("YES", yes), ("No", no), ("no", no), ("NO", no)):
        for text in (word, " " + word):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids:
                into.add(int(ids[0]))
    if not yes or not no or yes & no:
        raise ValueError("the judge's tokenizer does not give distinct first tokens for Yes and No")
    return sorted(yes), sorted(no)


@torch.inference_mode()
def judge_probabilities(
    loaded: LoadedModel, pairs: Sequence[tuple[str, str]], *, pad_token_id: int, batch_size: int = 8
) -> list[float]:
    """P(yes) / (P(yes) + P(no)) of the judge's first reply token for each ordered pair (greedy reading: the verdict
    is yes exactly when this is above 0.5 among the two). Left-padded batches with position ids from the mask."""
    if not pairs:
        return []
    tokenizer = loaded.tokenizer
    yes, no = answer_token_ids(tokenizer)
    device = next(loaded.model.parameters()).device
    encoded = [prompts.encode_prompt(tokenizer, prompts.render_prompt(tokenizer, judge_messages(a, b))).copy() for a, b in pairs]
    if loaded.max_length is not None:
        encoded = [ids[-loaded.max_length :] for ids in encoded]
    out = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = loaded.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)).logits[
            :, -1, :
        ]
        probs = logits.float().softmax(dim=-1).cpu()
        p_yes, p_no = probs[:, yes].sum(dim=-1), probs[:, no].sum(dim=-1)
        share = p_yes / (p_yes + p_no).clamp(min=1e-12)
        for row, i in enumerate(chunk):
            out[i] = float(share[row])
    return out
