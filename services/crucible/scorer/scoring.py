"""Scoring with the target causal LM: log-probabilities of answer choices after a prompt, and text likelihoods.

Pure torch and tokenizer logic with no gRPC: requests are validated and tokenised here, then scored in batches.

Tokenisation rule (ScoreChoices and ScoreTexts alike): the prompt (or prefix) and the continuation are tokenised
separately and concatenated. The prompt gets the special tokens the tokenizer puts *before* a text (a BOS token,
if any; trailing ones such as an appended EOS are never added); the continuation gets none. So the prompt's tokens
are the same for every choice and a choice's tokens are exactly the tokens scored, whatever the tokenizer would
merge across the boundary ("option: " + "A" scores the token "A" after the space token, not the merged " A").

Batching of ScoreChoices: one forward pass over the batch's distinct prompts (left-padded, logits of the last
position only) gives every choice's first token; choices of two or more tokens then run only their own tokens in a
second pass that reuses the prompts' key/value cache, so a prompt is never recomputed per choice.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from crucible.runtime.batching import BatchCancel
from crucible.runtime.errors import InvalidArgument
from crucible.runtime.validation import is_blank
from crucible.scorer.seca import (
    McqQuestion,
    QuestionError,
    build_seca_prompt,
    option_letters,
)

log = logging.getLogger(__name__)

# Positions whose log-softmax over the vocabulary is computed at once (bounds the float32 temporaries).
_LOGSOFTMAX_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-call limits; exceeding one is INVALID_ARGUMENT (except the truncation ScoreTexts documents)."""

    max_items_per_call: int = 64
    max_choices_per_item: int = 26
    #: Most tokens in one sequence: prompt plus its longest choice, or prefix plus text.
    max_tokens: int = 2048

    def __post_init__(self) -> None:
        if min(self.max_items_per_call, self.max_choices_per_item) < 1 or self.max_tokens < 2:
            raise ValueError("limits must be positive (max_tokens at least 2)")


# ---- requests (domain form of the proto messages) -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChoiceRequest:
    """One prompt (raw text, or an MMLU question turned into the SECA prompt) and the choices to score after it."""

    prompt: str | None = None
    question: McqQuestion | None = None
    choices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TextRequest:
    """A text to score, optionally conditioned on a prefix that is not scored."""

    text: str
    prefix: str = ""


# ---- jobs (what the model runs; hashable so identical in-flight jobs can share one computation) -----------------


@dataclasses.dataclass(frozen=True)
class ChoiceJob:
    """Token ids of one prompt and of each of its choices."""

    prompt_ids: tuple[int, ...]
    choice_ids: tuple[tuple[int, ...], ...]

    @property
    def cost(self) -> int:
        """Tokens of the longest sequence this job stands for (prompt plus its longest choice)."""
        return len(self.prompt_ids) + max(len(c) for c in self.choice_ids)


@dataclasses.dataclass(frozen=True)
class TextJob:
    """Token ids of the unscored context and of the scored tokens that follow it."""

    context_ids: tuple[int, ...]
    scored_ids: tuple[int, ...]

    @property
    def cost(self) -> int:
        """Tokens of the sequence."""
        return len(self.context_ids) + len(self.scored_ids)


@dataclasses.dataclass(frozen=True)
class PreparedChoices:
    """A validated ChoiceRequest: the exact prompt text, the choice texts (defaults filled in) and the job."""

    prompt: str
    choices: tuple[str, ...]
    job: ChoiceJob


@dataclasses.dataclass(frozen=True)
class PreparedText:
    """A validated TextRequest: the job, and whether the end of the text was cut to fit Limits.max_tokens."""

    job: TextJob
    truncated: bool


# ---- results ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChoiceScores:
    """Per choice: summed natural-log probability, token count, and probability within the choices; the top choice."""

    logprobs: tuple[float, ...]
    token_counts: tuple[int, ...]
    probabilities: tuple[float, ...]
    top_index: int


@dataclasses.dataclass(frozen=True)
class TextScores:
    """Log-likelihood of the scored tokens (nats), mean negative log-likelihood, perplexity and token count."""

    log_likelihood: float
    mean_nll: float
    perplexity: float
    token_count: int


def choice_distribution(logprobs: Sequence[float]) -> tuple[tuple[float, ...], int]:
    """Softmax of the choices' log-probabilities and the index of the largest (ties go to the lowest index)."""
    top = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
    peak = logprobs[top]
    weights = [math.exp(lp - peak) for lp in logprobs]
    total = math.fsum(weights)
    return tuple(w / total for w in weights), top


def text_scores(log_likelihood: float, token_count: int) -> TextScores:
    """The derived statistics of a summed log-likelihood over `token_count` tokens."""
    mean_nll = -log_likelihood / token_count
    perplexity = math.exp(mean_nll) if mean_nll < 709.0 else math.inf
    return TextScores(log_likelihood, mean_nll, perplexity, token_count)


# ---- tokenizer and model helpers --------------------------------------------------------------------------------


def leading_special_tokens(tokenizer: Any) -> tuple[int, ...]:
    """The special tokens the tokenizer puts before a text (e.g. Llama-3's BOS); () when it adds none before it."""
    probe = "Probe text."
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    log.warning("the tokenizer's special tokens could not be located around a text; none are added")
    return ()


def supports_logits_mask(model: Any) -> bool:
    """Whether the model's forward takes a boolean `logits_to_keep` mask (logits only where needed)."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return False
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            out = model(
                input_ids=torch.zeros((1, 2), dtype=torch.long, device=device),
                logits_to_keep=torch.tensor([[False, True]], device=device),
                use_cache=False,
            )
    except Exception:
        log.info("model forward does not take a logits mask; computing full logits")
        return False
    return tuple(out.logits.shape[:-1]) == (1,)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per row of `logits` [N, V], in float32 chunks -> [N] float64."""
    out = torch.empty(logits.shape[0], dtype=torch.float64)
    for start in range(0, logits.shape[0], _LOGSOFTMAX_CHUNK):
        chunk = logits[start : start + _LOGSOFTMAX_CHUNK].float()
        picked = chunk.gather(1, targets[start : start + _LOGSOFTMAX_CHUNK, None].to(chunk.device)).squeeze(1)
        out[start : start + chunk.shape[0]] = (picked - torch.logsumexp(chunk, dim=-1)).double().cpu()
    return out


def _select_cache_rows(cache: Any, rows: torch.Tensor, *, copy_first: bool) -> Any:
    """The key/value cache restricted (and repeated) to `rows`; with copy_first the original stays intact."""
    if copy_first:
        cache = copy.copy(cache)
        layers = []
        for layer in cache.layers:
            clone = copy.copy(layer)
            for name, value in vars(clone).items():  # counters some layers update in place must not be shared
                if isinstance(value, torch.Tensor) and name not in ("keys", "values"):
                    setattr(clone, name, value.clone())
            layers.append(clone)
        cache.layers = layers
    cache.batch_select_indices(rows)
    return cache


# ---- the scorer -------------------------------------------------------------------------------------------------


class TargetScorer:
    """Validates, tokenises and scores ScoreChoices / ScoreTexts items with one causal LM (any device, any dtype)."""

    def __init__(
        self, model: Any, tokenizer: Any, limits: Limits, *, model_max_length: int | None = None, tail_tokens: int = 16384
    ) -> None:
        """`tail_tokens` bounds one cached pass over multi-token choices: rows x (prompt + choice width) tokens."""
        if tail_tokens < 1:
            raise ValueError("tail_tokens must be positive")
        self.tail_tokens = tail_tokens
        self.model = model
        self.tokenizer = tokenizer
        max_tokens = min(limits.max_tokens, model_max_length) if model_max_length else limits.max_tokens
        self.limits = dataclasses.replace(limits, max_tokens=max_tokens)
        self.device = next(model.parameters()).device
        self.lead_ids = leading_special_tokens(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        if len(tokenizer) > self.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's output layer only {self.vocab_size}: "
                "they do not belong together (check the model folder)"
            )
        self.logits_mask = supports_logits_mask(model)
        self._letters: dict[int, tuple[str, ...]] = {}

    # ---- tokenisation ------------------------------------------------------------------------------------------

    def encode_prompts(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Prompt (or prefix) token ids: the leading special tokens, then the text's tokens."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [self.lead_ids + tuple(ids) for ids in encoded]

    def encode_continuations(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Continuation token ids: the text's tokens on their own, no special tokens."""
        if not texts:
            return []
        return [tuple(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def default_choices(self, count: int) -> tuple[str, ...]:
        """The choices of a question item sent without any: the option letters as the paper reads them.

        SECA scores the single token of the letter as it follows "option: " in running text (Llama-3 and Qwen2.5
        " A" = id 362, Llama-2 "▁A" = 319). So each letter gets a leading space when " A" is one token for this
        tokenizer (byte-level BPE: GPT-2, Llama-3, Qwen, SmolLM), and is sent bare otherwise (SentencePiece, whose
        "A" already is the word-start token).
        """
        cached = self._letters.get(count)
        if cached is None:
            letters = option_letters(count)
            spaced = self.encode_continuations([" " + letter for letter in letters])
            cached = tuple(" " + letter if len(ids) == 1 else letter for letter, ids in zip(letters, spaced, strict=True))
            self._letters[count] = cached
        return cached

    # ---- validation ---------------------------------------------------------------------------------------------

    def _check_item_count(self, count: int) -> None:
        if count == 0:
            raise InvalidArgument.field("items", "must hold at least one item", reason="NO_ITEMS")
        if count > self.limits.max_items_per_call:
            raise InvalidArgument.field(
                "items", f"{count} items exceed the limit of {self.limits.max_items_per_call} per call", reason="TOO_MANY_ITEMS"
            )

    def prepare_choices(self, requests: Sequence[ChoiceRequest]) -> list[PreparedChoices]:
        """Validate and tokenise ScoreChoices items; raises InvalidArgument naming the first bad field."""
        self._check_item_count(len(requests))
        prompts: list[str] = []
        choice_lists: list[tuple[str, ...]] = []
        limit = self.limits.max_choices_per_item
        for index, request in enumerate(requests):
            where = f"items[{index}]"
            if request.question is not None:
                q = request.question
                for name, text in (
                    ("subject", q.subject),
                    ("question", q.question),
                    *((f"options[{j}]", o) for j, o in enumerate(q.options)),
                ):
                    if text.strip() and is_blank(text):  # empty or whitespace: the question checks' own messages
                        raise InvalidArgument.field(
                            f"{where}.question.{name}", "must contain a visible character", reason="EMPTY_TEXT"
                        )
                try:
                    prompt = build_seca_prompt(q.subject, q.question, q.options)
                except QuestionError as err:
                    raise InvalidArgument.field(f"{where}.question.{err.field}", err.description, reason=err.reason) from None
                choices = request.choices or self.default_choices(len(q.options))
            elif request.prompt is not None:
                if is_blank(request.prompt):
                    raise InvalidArgument.field(
                        f"{where}.raw_prompt", "must contain a non-whitespace character", reason="EMPTY_PROMPT"
                    )
                prompt = request.prompt
                choices = request.choices
                if not choices:
                    raise InvalidArgument.field(
                        f"{where}.choices", "a raw_prompt item needs at least one choice", reason="NO_CHOICES"
                    )
            else:
                raise InvalidArgument.field(f"{where}.prompt", "set raw_prompt or question", reason="PROMPT_UNSET")
            if len(choices) > limit:
                raise InvalidArgument.field(
                    f"{where}.choices", f"{len(choices)} choices exceed the limit of {limit}", reason="TOO_MANY_CHOICES"
                )
            seen: dict[str, int] = {}
            for j, choice in enumerate(choices):
                if is_blank(choice):
                    raise InvalidArgument.field(
                        f"{where}.choices[{j}]",
                        "must contain a visible character (not only whitespace or invisible characters)",
                        reason="EMPTY_CHOICE",
                    )
                if choice in seen:
                    raise InvalidArgument.field(
                        f"{where}.choices[{j}]", f"duplicates choices[{seen[choice]}] ({choice!r})", reason="DUPLICATE_CHOICE"
                    )
                seen[choice] = j
            prompts.append(prompt)
            choice_lists.append(tuple(choices))

        prompt_ids = self.encode_prompts(prompts)
        flat = self.encode_continuations([c for choices in choice_lists for c in choices])
        prepared = []
        offset = 0
        for index, (prompt, choices, ids) in enumerate(zip(prompts, choice_lists, prompt_ids, strict=True)):
            where = f"items[{index}]"
            if not ids:
                raise InvalidArgument.field(f"{where}.raw_prompt", "tokenises to no tokens", reason="EMPTY_PROMPT")
            choice_ids = tuple(flat[offset : offset + len(choices)])
            offset += len(choices)
            for j, cids in enumerate(choice_ids):
                if not cids:
                    raise InvalidArgument.field(f"{where}.choices[{j}]", "tokenises to no tokens", reason="EMPTY_CHOICE")
            job = ChoiceJob(ids, choice_ids)
            if job.cost > self.limits.max_tokens:
                longest = max(len(c) for c in choice_ids)
                raise InvalidArgument.field(
                    where,
                    f"prompt ({len(ids)} tokens) plus its longest choice ({longest} tokens) exceed max_tokens "
                    f"({self.limits.max_tokens}); shorten the prompt, it is never cut",
                    reason="PROMPT_TOO_LONG",
                )
            prepared.append(PreparedChoices(prompt, choices, job))
        return prepared

    def prepare_texts(self, requests: Sequence[TextRequest]) -> list[PreparedText]:
        """Validate and tokenise ScoreTexts items (truncating texts that overflow); raises InvalidArgument."""
        self._check_item_count(len(requests))
        for index, request in enumerate(requests):
            if is_blank(request.text):
                raise InvalidArgument.field(
                    f"items[{index}].text", "must contain a non-whitespace character", reason="EMPTY_TEXT"
                )
        texts = self.encode_continuations([r.text for r in requests])
        prefixes = self.encode_prompts([r.prefix for r in requests])
        limit = self.limits.max_tokens
        prepared = []
        for index, (_request, text_ids, context) in enumerate(zip(requests, texts, prefixes, strict=True)):
            where = f"items[{index}]"
            scored = text_ids
            if not context:  # no BOS and no prefix: the text's first token is the context
                context, scored = text_ids[:1], text_ids[1:]
                if not scored:
                    raise InvalidArgument.field(
                        f"{where}.text",
                        "is a single token and has no context (no prefix, no BOS token): nothing to score; add a prefix",
                        reason="TEXT_TOO_SHORT",
                    )
            if len(context) >= limit:
                raise InvalidArgument.field(
                    f"{where}.prefix",
                    f"prefix ({len(context)} tokens) leaves no room under max_tokens ({limit})",
                    reason="PREFIX_TOO_LONG",
                )
            truncated = len(context) + len(scored) > limit
            if truncated:
                scored = scored[: limit - len(context)]
            prepared.append(PreparedText(TextJob(tuple(context), tuple(scored)), truncated))
        return prepared

    # ---- model --------------------------------------------------------------------------------------------------

    def _forward(self, keep: torch.Tensor | int, **inputs: Any) -> Any:
        """Run the model keeping logits only where `keep` says (a [B, T] bool mask -> [N, V], or the last k)."""
        if isinstance(keep, torch.Tensor):
            if self.logits_mask:
                return self.model(**inputs, logits_to_keep=keep)
            out = self.model(**inputs)
            out.logits = out.logits[keep]
            return out
        if self.logits_mask:
            return self.model(**inputs, logits_to_keep=keep)
        out = self.model(**inputs)
        out.logits = out.logits[:, -keep:]
        return out

    def score_choices(self, jobs: Sequence[ChoiceJob], cancel: BatchCancel | None = None) -> list[ChoiceScores]:
        """Summed log-probability of every choice of every job: one prompt pass, then one cached pass for tails.

        `cancel` is checked between passes: once every caller of the batch has gone, the rest is not computed."""
        if not jobs:
            return []
        rows: dict[tuple[int, ...], int] = {}
        for job in jobs:
            rows.setdefault(job.prompt_ids, len(rows))
        prompts = list(rows)
        needs_tail = any(len(c) > 1 for job in jobs for c in job.choice_ids)
        # segment s = (job, choice) in order; its total is the sum of the token log-probs added to it
        segment_row: list[int] = []
        first_token: list[int] = []
        tails: list[tuple[int, int, tuple[int, ...]]] = []  # (segment, prompt row, choice tokens)
        for job in jobs:
            row = rows[job.prompt_ids]
            for cids in job.choice_ids:
                if len(cids) > 1:
                    tails.append((len(segment_row), row, cids))
                segment_row.append(row)
                first_token.append(cids[0])
        totals = torch.zeros(len(segment_row), dtype=torch.float64)
        with torch.inference_mode():
            ids, mask = _left_pad(prompts, self.pad_id, self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self._forward(1, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=needs_tail)
            last = out.logits[:, -1, :].float()  # [P, V]
            lse = torch.logsumexp(last, dim=-1)
            seg_rows = torch.tensor(segment_row, device=last.device)
            picked = last[seg_rows, torch.tensor(first_token, device=last.device)] - lse[seg_rows]
            totals += picked.double().cpu()
            if tails:
                for part, copy_first in self._tail_passes(tails, ids.shape[1]):
                    if cancel is not None:
                        cancel.raise_if_cancelled()
                    select = torch.tensor([row for _, row, _ in part], device=self.device)
                    cache = _select_cache_rows(out.past_key_values, select, copy_first=copy_first)
                    # feed c[0..k-2]; the logits at those positions predict c[1..k-1]
                    fed, fed_mask = _right_pad([c[:-1] for _, _, c in part], self.pad_id, self.device)
                    tail_positions = mask[select].sum(-1, keepdim=True) + torch.arange(fed.shape[1], device=self.device)
                    tail_out = self._forward(
                        fed_mask.bool(),
                        input_ids=fed,
                        attention_mask=torch.cat([mask[select], fed_mask], dim=1),
                        position_ids=tail_positions,
                        past_key_values=cache,
                        use_cache=False,
                    )
                    targets = torch.tensor([t for _, _, c in part for t in c[1:]])
                    segments = torch.tensor([s for s, _, c in part for _ in c[1:]])
                    totals.index_add_(0, segments, _token_logprobs(tail_out.logits, targets))
        values = totals.tolist()
        results = []
        offset = 0
        for job in jobs:
            logprobs = tuple(values[offset : offset + len(job.choice_ids)])
            offset += len(job.choice_ids)
            probabilities, top = choice_distribution(logprobs)
            results.append(ChoiceScores(logprobs, tuple(len(c) for c in job.choice_ids), probabilities, top))
        return results

    def _tail_passes(
        self, tails: list[tuple[int, int, tuple[int, ...]]], prompt_width: int
    ) -> list[tuple[list[tuple[int, int, tuple[int, ...]]], bool]]:
        """Split the multi-token choices into cached passes: by fed length class (1, 2, 3-4, 5-8, ... tokens, so
        padding at most doubles a pass) and by the `tail_tokens` budget. Each pass says whether it must work on a
        copy of the prompt cache (when another pass still needs the original)."""
        classes: dict[int, list[tuple[int, int, tuple[int, ...]]]] = {}
        for tail in tails:
            classes.setdefault((len(tail[2]) - 1).bit_length(), []).append(tail)
        passes: list[list[tuple[int, int, tuple[int, ...]]]] = []
        for _, members in sorted(classes.items()):
            width = prompt_width + max(len(c) for _, _, c in members) - 1
            rows = max(1, self.tail_tokens // width)
            passes.extend(members[start : start + rows] for start in range(0, len(members), rows))
        return [(part, len(passes) > 1) for part in passes]

    def score_texts(self, jobs: Sequence[TextJob]) -> list[TextScores]:
        """Log-likelihood of each job's scored tokens given everything before them: one right-padded pass."""
        if not jobs:
            return []
        rows = [job.context_ids + job.scored_ids for job in jobs]
        with torch.inference_mode():
            ids, mask = _right_pad(rows, self.pad_id, self.device)
            keep = torch.zeros_like(mask, dtype=torch.bool)
            for i, job in enumerate(jobs):
                start = len(job.context_ids) - 1  # the position before the first scored token predicts it
                keep[i, start : start + len(job.scored_ids)] = True
            out = self._forward(keep, input_ids=ids, attention_mask=mask, use_cache=False)
            targets = torch.tensor([t for job in jobs for t in job.scored_ids])
            segments = torch.tensor([i for i, job in enumerate(jobs) for _ in job.scored_ids])
            totals = torch.zeros(len(jobs), dtype=torch.float64).index_add_(0, segments, _token_logprobs(out.logits, targets))
        return [text_scores(total, len(job.scored_ids)) for total, job in zip(totals.tolist(), jobs, strict=True)]

    def run_batch(
        self, jobs: Sequence[ChoiceJob | TextJob], cancel: BatchCancel | None = None
    ) -> list[ChoiceScores | TextScores]:
        """The batcher's entry point: a batch holds one kind of job (the batcher groups them by kind); `cancel` says
        when every caller of the batch has gone."""
        if cancel is not None:
            cancel.raise_if_cancelled()
        choice_jobs = [job for job in jobs if isinstance(job, ChoiceJob)]
        if len(choice_jobs) == len(jobs):
            return list(self.score_choices(choice_jobs, cancel))
        text_jobs = [job for job in jobs if isinstance(job, TextJob)]
        if len(text_jobs) == len(jobs):
            return list(self.score_texts(text_jobs))
        raise TypeError("a batch mixes choice and text jobs; the batcher must group them by kind")
