"""Batched sampling from a causal LM with per-row settings: left padding, a KV cache, per-row seeds, EOS per row.

Pure torch (no grpc): `generate_rows` runs one batch of rows to completion; the batcher in the servicer feeds it.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import torch

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORTED = "aborted"

_MASK64 = (1 << 64) - 1


def row_seed(seed: int, index: int) -> int:
    """The seed of candidate `index` of a request seeded with `seed` (splitmix64), so candidate i never depends on n."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


@dataclasses.dataclass(frozen=True)
class GenerationRow:
    """One sequence to sample: its prompt token ids and its own sampling settings.

    `temperature` 0 means greedy; `top_p` 1 disables nucleus filtering; `seed` seeds this row's own generator.
    `abort` (optional) is checked at every step: once set, the row stops with FINISH_ABORTED (its caller left).
    """

    prompt_ids: tuple[int, ...]
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    abort: threading.Event | None = dataclasses.field(default=None, compare=False, hash=False)

    def key(self) -> tuple[Any, ...]:
        """Everything that determines the output: identical keys give identical rows (used to share work)."""
        return (self.prompt_ids, self.temperature, self.top_p, self.max_new_tokens, self.seed)


@dataclasses.dataclass(frozen=True)
class GeneratedRow:
    """What one row produced: generated token ids (without the end token) and why it stopped.

    `steps` counts every token the model generated for the row, the end token included.
    """

    token_ids: tuple[int, ...]
    finish: str
    steps: int


def gumbel_noise(size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise [size] from `generator`: argmax(logits + noise) samples softmax(logits).

    Gumbel-max is used rather than inverse-CDF sampling because its choice only flips when the two best perturbed
    scores are within rounding error of each other, so a row samples the same tokens whatever it is batched with.
    """
    return gumbel_noise_rows(size, [generator], device)[0]


def gumbel_noise_rows(size: int, generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
    """Gumbel noise [len(generators), size], row i drawn from generators[i] only (same values as gumbel_noise)."""
    noise = torch.empty((len(generators), size), device=device, dtype=torch.float32)
    for row, generator in zip(noise, generators, strict=True):
        row.exponential_(generator=generator)
    return noise.clamp_(min=torch.finfo(torch.float32).tiny).log_().neg_()  # -log(Exp(1)) is Gumbel(0, 1)


#: Candidates looked at first for nucleus filtering; the full sort runs only when a nucleus is larger than this.
TOP_P_CANDIDATES = 1024


def _keep_nucleus(
    logits: torch.Tensor, best: torch.Tensor, order: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """`logits` with -inf outside each row's nucleus, given its tokens sorted by probability (best, order, probs)."""
    mass_before = probs.cumsum(dim=-1) - probs
    kept = best.masked_fill(mass_before >= top_p.unsqueeze(-1), float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, kept)


def filter_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf, per row, the logits outside the smallest set of tokens whose probability reaches `top_p` [B].

    The most likely token is always kept; rows with top_p >= 1 are returned unchanged. The nucleus is looked for
    among the TOP_P_CANDIDATES best tokens (a partial sort); only rows whose nucleus is larger get a full sort.
    Both give the same set.
    """
    filtering = top_p < 1.0
    if not bool(filtering.any()):
        return logits
    out = logits.clone()
    rows = filtering.nonzero().squeeze(-1)
    sub, sub_p = logits[rows], top_p[rows]
    k = min(logits.shape[-1], TOP_P_CANDIDATES)
    best, order = sub.topk(k, dim=-1)
    probs = (best - torch.logsumexp(sub, dim=-1, keepdim=True)).exp()
    covered = probs.sum(dim=-1) >= sub_p if k < logits.shape[-1] else torch.ones_like(sub_p, dtype=torch.bool)
    if bool(covered.any()):
        out[rows[covered]] = _keep_nucleus(sub[covered], best[covered], order[covered], probs[covered], sub_p[covered])
    if not bool(covered.all()):
        wide = ~covered
        best, order = sub[wide].sort(dim=-1, descending=True)
        out[rows[wide]] = _keep_nucleus(sub[wide], best, order, best.softmax(dim=-1), sub_p[wide])
    return out


def sample_next(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """Next token per row [B] from float32 `logits` [B, V], each row with its temperature, top_p and generator.

    Temperature 0 is greedy (argmax); otherwise tokens are drawn by Gumbel-max from the temperature-scaled,
    nucleus-filtered distribution. Every row draws its noise even when greedy, so its stream is the same either way.
    """
    if logits.shape[0] != len(generators):
        raise ValueError(f"{logits.shape[0]} rows of logits but {len(generators)} generators")
    noise = gumbel_noise_rows(logits.shape[-1], generators, logits.device)
    greedy = temperature <= 0.0
    scaled = logits / temperature.clamp(min=1e-6).unsqueeze(-1)
    scaled = filter_top_p(scaled, top_p)
    sampled = (scaled + noise).argmax(dim=-1)
    return torch.where(greedy, logits.argmax(dim=-1), sampled)


def _accepts_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


@torch.inference_mode()
def generate_rows(
    model: Any, rows: Sequence[GenerationRow], *, eos_token_ids: Iterable[int], pad_token_id: int
) -> list[GeneratedRow]:
    """Sample every row to its end token, its max_new_tokens or its abort flag, all rows in one batch.

    Prompts are left-padded (position ids follow the attention mask), the KV cache is reused at every step, rows
    that finish are pruned from the batch and the cache, and the loop stops as soon as every row has finished.
    Rows with the same prompt (the n candidates of one call) share one prefill: each distinct prompt is run once
    and its cache rows are copied to the rows that share it. Results keep the order of `rows`.
    """
    if not rows:
        return []
    for index, row in enumerate(rows):
        if not row.prompt_ids:
            raise ValueError(f"row {index} has an empty prompt")
        if row.max_new_tokens < 1:
            raise ValueError(f"row {index} has max_new_tokens {row.max_new_tokens}")
    device = _model_device(model)
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
    distinct: dict[tuple[int, ...], int] = {}
    owner = [distinct.setdefault(tuple(row.prompt_ids), len(distinct)) for row in rows]  # row -> its prompt's slot
    prompts = list(distinct)
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        input_ids[i, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention[i, longest - len(prompt) :] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
    temperature = torch.tensor([row.temperature for row in rows], dtype=torch.float32, device=device)
    top_p = torch.tensor([row.top_p for row in rows], dtype=torch.float32, device=device)
    generators = []
    for row in rows:
        generator = torch.Generator(device=device)
        generator.manual_seed(row.seed)
        generators.append(generator)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}

    tokens: list[list[int]] = [[] for _ in rows]
    finish: list[str | None] = [None] * len(rows)
    active = list(range(len(rows)))  # original index of each batch position
    cache: Any = None
    step_ids, step_positions = input_ids, positions
    while active:
        out = model(
            input_ids=step_ids,
            attention_mask=attention,
            position_ids=step_positions,
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()
        if step_ids is input_ids and len(prompts) < len(rows):  # after the shared prefill: one cache row per row
            rows_of = torch.tensor(owner, device=device)
            cache.batch_select_indices(rows_of)
            logits, attention, step_positions = logits[rows_of], attention[rows_of], step_positions[rows_of]
        active_index = torch.tensor(active, device=device)
        chosen = sample_next(logits, temperature[active_index], top_p[active_index], [generators[i] for i in active])
        is_end = torch.isin(chosen, eos).tolist() if eos.numel() else [False] * len(active)
        chosen_list = chosen.tolist()
        keep: list[int] = []
        for position, original in enumerate(active):
            row = rows[original]
            if is_end[position]:
                finish[original] = FINISH_STOP
                continue
            tokens[original].append(chosen_list[position])
            if len(tokens[original]) >= row.max_new_tokens:
                finish[original] = FINISH_LENGTH
            elif row.abort is not None and row.abort.is_set():
                finish[original] = FINISH_ABORTED
            else:
                keep.append(position)
        if not keep:
            break
        if len(keep) < len(active):
            kept = torch.tensor(keep, device=device)
            if hasattr(cache, "batch_select_indices"):
                cache.batch_select_indices(kept)
            else:  # pragma: no cover - every transformers 5 cache has it
                raise RuntimeError(f"{type(cache).__name__} cannot drop finished rows")
            attention = attention[kept]
            step_positions = step_positions[kept]
            chosen = chosen[kept]
            active = [active[p] for p in keep]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
        step_positions = step_positions[:, -1:] + 1
        step_ids = chosen.unsqueeze(-1)
    return [
        GeneratedRow(tuple(tokens[i]), finish[i] or FINISH_LENGTH, len(tokens[i]) + (finish[i] == FINISH_STOP))
        for i in range(len(rows))
    ]
