"""Batched, mask-aware Fast-DetectGPT analytic criterion (and the Binoculars score from the same pass), pure torch.

Every statistic is computed in fp32 over the scored tokens only, in row chunks, so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Default bound on the logits materialised at once in the statistics (rows x vocabulary, fp32 elements).
DEFAULT_CHUNK_ELEMENTS = 1 << 21


class VocabularyMismatchError(ValueError):
    """The sampling and scoring models do not share a tokenizer, so their token ids mean different things."""


@dataclasses.dataclass(frozen=True)
class TokenStatistics:
    """Per-text sums over the scored tokens, each a float32 tensor [B] (scored_tokens is int64 [B]).

    With p the scoring model's log-probabilities and q the sampling model's distribution at scored position t:
    ll_t = log p(x_t), mu_t = sum_v q(v) log p(v), var_t = sum_v q(v) log p(v)^2 - mu_t^2.
    """

    log_likelihood: torch.Tensor
    expected_log_likelihood: torch.Tensor
    variance: torch.Tensor
    scored_tokens: torch.Tensor

    def criterion(self) -> torch.Tensor:
        """Fast-DetectGPT analytic sampling discrepancy (sum ll - sum mu) / sqrt(sum var) [B]; higher = machine."""
        return (self.log_likelihood - self.expected_log_likelihood) / self.variance.clamp_min(1e-12).sqrt()

    def perplexity(self) -> torch.Tensor:
        """Scoring-model perplexity exp(mean negative log-likelihood) over the scored tokens [B]."""
        return torch.exp(-self.log_likelihood / self.scored_tokens.clamp_min(1).to(torch.float32))

    def binoculars(self) -> torch.Tensor:
        """Binoculars score ppl / x_ppl with observer = sampling and performer = scoring model [B]; lower = machine.

        log-ppl = mean_t(-ll_t) and x-ppl = mean_t(-sum_v q(v) log p(v)) = mean_t(-mu_t) share the token count,
        so the ratio is sum ll / sum mu.
        """
        return self.log_likelihood / self.expected_log_likelihood

    def select(self, index: int) -> dict[str, float]:
        """The scores of one text as Python floats (one host transfer per batch is done by the caller)."""
        return {
            "criterion": float(self.criterion()[index]),
            "perplexity": float(self.perplexity()[index]),
            "binoculars": float(self.binoculars()[index]),
            "scored_tokens": int(self.scored_tokens[index]),
        }


def scored_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, T-1]: label position t (token t+1) is scored when it and its preceding token are real tokens.

    With right padding this equals attention_mask[:, 1:]; with left padding it also leaves out the first real
    token, whose context would otherwise be padding (the first token of a text is never scored).
    """
    mask = attention_mask.bool()
    return mask[:, 1:] & mask[:, :-1]


def position_statistics(
    ref_logits: torch.Tensor,
    score_logits: torch.Tensor | None,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ll, mu, var [N] in fp32 for N scored positions, from sampling logits [N, V1] and scoring logits [N, V2].

    `score_logits=None` means one model plays both roles (its logits are `ref_logits`). Uses
    mu = E_q[log p] and var = E_q[(log p - mu)^2] (= E_q[(log p)^2] - mu^2) with log p = l - logsumexp(l),
    vocabulary cut to min(V1, V2).
    """
    ref = ref_logits.to(torch.float32)
    if score_logits is None:
        log_p = ref - torch.logsumexp(ref, dim=-1, keepdim=True)
        q = log_p.exp()
    else:
        vocab = min(ref.shape[-1], score_logits.shape[-1])
        ref = ref[..., :vocab]
        score = score_logits[..., :vocab].to(torch.float32)
        log_p = score - torch.logsumexp(score, dim=-1, keepdim=True)
        q = torch.softmax(ref, dim=-1)
    ll = log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    mu = (q * log_p).sum(-1)
    # Centred second pass: E_q[(log p - mu)^2] equals E_q[(log p)^2] - mu^2 without its cancellation when the
    # distribution is flat (var much smaller than mu^2). The chunk is small, so the extra pass stays in cache.
    centred = log_p.sub_(mu.unsqueeze(-1))
    var = centred.square_().mul_(q).sum(-1)
    return ll, mu, var


def _accumulate(rows: torch.Tensor, batch: int, *parts: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for part in parts:
        total = torch.zeros(batch, dtype=torch.float32, device=part.device)
        out.append(total.index_add_(0, rows, part))
    return out


def analytic_statistics(
    ref_logits: torch.Tensor,
    score_logits: torch.Tensor | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> TokenStatistics:
    """Masked statistics of a padded batch from full logits [B, T, V] (any dtype), input ids and mask [B, T].

    Only scored positions are gathered, then processed `chunk_elements` logits at a time, so the fp32
    softmax/log-softmax never exist for the whole batch. `score_logits=None` means the same model for both roles.
    """
    batch = input_ids.shape[0]
    valid = scored_mask(attention_mask)
    rows, cols = valid.nonzero(as_tuple=True)
    labels = input_ids[:, 1:][rows, cols]
    ll_parts, mu_parts, var_parts = [], [], []
    vocab = ref_logits.shape[-1]
    step = max(1, chunk_elements // vocab)
    for start in range(0, rows.numel(), step):
        r, c = rows[start : start + step], cols[start : start + step]
        ref = ref_logits[r, c]
        score = score_logits[r, c] if score_logits is not None else None
        ll, mu, var = position_statistics(ref, score, labels[start : start + step])
        ll_parts.append(ll)
        mu_parts.append(mu)
        var_parts.append(var)
    device = ref_logits.device
    if ll_parts:
        ll_all, mu_all, var_all = (torch.cat(p) for p in (ll_parts, mu_parts, var_parts))
    else:
        ll_all = mu_all = var_all = torch.zeros(0, dtype=torch.float32, device=device)
    ll_sum, mu_sum, var_sum = _accumulate(rows.to(device), batch, ll_all, mu_all, var_all)
    return TokenStatistics(ll_sum, mu_sum, var_sum, valid.sum(dim=1).to(torch.int64))


def reference_criterion(ref_logits: torch.Tensor, score_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The straightforward per-text formula of the reference implementation, for one unpadded text, in fp32.

    `ref_logits`/`score_logits` [T-1, V] are the logits predicting `labels` [T-1] (the text's tokens 1..T-1).
    Kept deliberately naive (whole softmax and log-softmax at once): golden tests (with float64 logits, as the exact
    value) and the benchmark's baseline use it. Half-precision logits are cast to fp32 first.
    """
    vocab = min(ref_logits.shape[-1], score_logits.shape[-1])
    dtype = torch.promote_types(score_logits.dtype, torch.float32)
    lprobs_score = torch.log_softmax(score_logits[..., :vocab].to(dtype), dim=-1)
    probs_ref = torch.softmax(ref_logits[..., :vocab].to(dtype), dim=-1)
    log_likelihood = lprobs_score.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)
    mean_ref = (probs_ref * lprobs_score).sum(dim=-1)
    var_ref = (probs_ref * torch.square(lprobs_score)).sum(dim=-1) - torch.square(mean_ref)
    return float((log_likelihood.sum() - mean_ref.sum()) / var_ref.sum().sqrt())


# ---- running models -------------------------------------------------------------------------------------------------


def _accepts(module: Any, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens, so left-padded rows see the same positions as unpadded ones."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class CausalScorer:
    """Runs one causal LM on padded batches: hidden states of the scored positions, then its output head in chunks.

    Splitting the model at its output head means logits are computed only for scored (non-padding) positions and
    never for the whole batch at once. Architectures whose head is not a plain linear layer on the last hidden
    state (logit soft-capping or scaling) are detected at construction by comparing against a full forward pass,
    and then fall back to full logits.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self._pass_positions = _accepts(model, "position_ids")
        self.split = self._can_split()

    def _can_split(self) -> bool:
        config = self.model.config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
            return False
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        base = getattr(self.model, "base_model", None)
        if not isinstance(head, torch.nn.Linear) or base is None or base is self.model:
            return False
        ids = torch.arange(3, 11, device=self.device).unsqueeze(0) % int(config.vocab_size)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            full = self.model(input_ids=ids, attention_mask=mask).logits.float()
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            split = head(hidden).float()
        same = split.shape == full.shape and torch.allclose(split, full, rtol=1e-3, atol=1e-3)
        if not same:
            log.warning("%s: output head is not a plain linear layer; computing full logits", type(self.model).__name__)
        return bool(same)

    def _kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._pass_positions:
            kwargs["position_ids"] = _position_ids(attention_mask)
        return kwargs

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
               cols: torch.Tensor) -> torch.Tensor:
        """Last hidden states [N, D] at the given (row, column) positions (split models only)."""
        out = self.model.base_model(**self._kwargs(input_ids, attention_mask), use_cache=False)
        return out.last_hidden_state[rows, cols]

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Full logits [B, T, V] in the model's dtype."""
        return self.model(**self._kwargs(input_ids, attention_mask), use_cache=False).logits

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] of hidden states [n, D]."""
        return self.model.get_output_embeddings()(hidden)

    @property
    def vocab_size(self) -> int:
        """Width of this model's logits."""
        head = self.model.get_output_embeddings()
        return int(head.weight.shape[0]) if head is not None else int(self.model.config.vocab_size)


def model_statistics(
    scoring: CausalScorer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampling: CausalScorer | None = None,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> TokenStatistics:
    """Fast-DetectGPT statistics of a padded batch [B, T] (left or right padding), masked, fp32, memory-bounded.

    `sampling=None` (or the same scorer) means one model in both roles: one forward pass. Two different models run
    one forward pass each on the same token ids; the caller guarantees they share the tokenizer.
    """
    same = sampling is None or sampling is scoring
    with torch.inference_mode():
        input_ids = input_ids.to(scoring.device)
        attention_mask = attention_mask.to(scoring.device)
        split = scoring.split and (same or sampling.split)  # type: ignore[union-attr]
        if not split:
            score_logits = scoring.logits(input_ids, attention_mask)
            if same:
                return analytic_statistics(score_logits, None, input_ids, attention_mask, chunk_elements=chunk_elements)
            assert sampling is not None
            ref_logits = sampling.logits(input_ids.to(sampling.device), attention_mask.to(sampling.device))
            return analytic_statistics(ref_logits.to(scoring.device), score_logits, input_ids, attention_mask,
                                       chunk_elements=chunk_elements)
        batch = input_ids.shape[0]
        valid = scored_mask(attention_mask)
        rows, cols = valid.nonzero(as_tuple=True)
        labels = input_ids[:, 1:][rows, cols]
        h_score = scoring.hidden(input_ids, attention_mask, rows, cols)
        h_ref = None
        if not same:
            assert sampling is not None
            h_ref = sampling.hidden(input_ids.to(sampling.device), attention_mask.to(sampling.device),
                                    rows.to(sampling.device), cols.to(sampling.device))
        vocab = scoring.vocab_size if same else max(scoring.vocab_size, sampling.vocab_size)  # type: ignore[union-attr]
        step = max(1, chunk_elements // vocab)
        ll_parts, mu_parts, var_parts = [], [], []
        for start in range(0, rows.numel(), step):
            score_logits = scoring.head(h_score[start : start + step])
            if h_ref is None:
                ll, mu, var = position_statistics(score_logits, None, labels[start : start + step])
            else:
                assert sampling is not None
                ref_logits = sampling.head(h_ref[start : start + step]).to(scoring.device)
                ll, mu, var = position_statistics(ref_logits, score_logits, labels[start : start + step])
            ll_parts.append(ll)
            mu_parts.append(mu)
            var_parts.append(var)
        if ll_parts:
            ll_all, mu_all, var_all = (torch.cat(p) for p in (ll_parts, mu_parts, var_parts))
        else:
            ll_all = mu_all = var_all = torch.zeros(0, dtype=torch.float32, device=scoring.device)
        ll_sum, mu_sum, var_sum = _accumulate(rows, batch, ll_all, mu_all, var_all)
        return TokenStatistics(ll_sum.cpu(), mu_sum.cpu(), var_sum.cpu(), valid.sum(dim=1).to(torch.int64).cpu())


def pad_batch(sequences: list[list[int]], pad_id: int, *, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into input_ids and attention_mask [B, T] (int64), padding on the `side` given."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    longest = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(sequences), longest), dtype=torch.int64)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        sl = slice(0, n) if side == "right" else slice(longest - n, longest)
        ids[i, sl] = torch.tensor(seq, dtype=torch.int64)
        mask[i, sl] = 1
    return ids, mask


def check_same_tokenizer(scoring_tokenizer: Any, sampling_tokenizer: Any, scoring_name: str, sampling_name: str) -> None:
    """Raise VocabularyMismatchError unless both tokenizers map every token to the same id (and split text alike)."""
    if scoring_tokenizer is sampling_tokenizer:
        return
    a, b = scoring_tokenizer.get_vocab(), sampling_tokenizer.get_vocab()
    if a != b:
        only_a = len(a.keys() - b.keys())
        differ = sum(1 for k in a.keys() & b.keys() if a[k] != b[k])
        raise VocabularyMismatchError(
            f"sampling model {sampling_name!r} and scoring model {scoring_name!r} do not share a tokenizer "
            f"(vocabularies of {len(b)} and {len(a)} tokens; {only_a} tokens only in the scoring one, {differ} with "
            "different ids); Fast-DetectGPT needs both models to read the same token ids: pick a pair from one family"
        )
    probe = "Tokenizer probe: The quick brown fox, 1234 jumps; über-naïve café."
    if scoring_tokenizer(probe)["input_ids"] != sampling_tokenizer(probe)["input_ids"]:
        raise VocabularyMismatchError(
            f"sampling model {sampling_name!r} and scoring model {scoring_name!r} have the same vocabulary but split "
            "text differently (special tokens or normalisation differ); Fast-DetectGPT needs identical token ids"
        )
