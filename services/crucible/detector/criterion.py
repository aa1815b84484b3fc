"""Batched, mask-aware Fast-DetectGPT analytic criterion (and the Binoculars score from the same pass), pure torch.

Every statistic is computed in fp32 over real tokens only, in row chunks (a fused torch.compile kernel when it works).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from crucible.runtime.startup import startup_phase

log = logging.getLogger(__name__)

#: Default bound on the logits materialised at once in the statistics (rows x vocabulary, fp32 elements): the
#: service's default (DetectorConfig.stats_chunk_elements, which the engine passes; a unit test keeps them equal).
DEFAULT_CHUNK_ELEMENTS = 1 << 22


class VocabularyMismatchError(ValueError):
    """The sampling and scoring models do not share a tokenizer, so their token ids mean different things."""


@dataclasses.dataclass(frozen=True)
class TokenStatistics:
    """Per-text sums over a padded batch, each a float32 tensor [B] (the two counts are int64 [B]).

    With p the scoring model's distribution and q the sampling model's at a position t, predicting token x_{t+1}:
    ll_t = log p(x_{t+1}), mu_t = sum_v q(v) log p(v), var_t = sum_v q(v) log p(v)^2 - mu_t^2,
    rank_t = 1 + #{v: l_t(v) > l_t(x_{t+1})} (scoring logits l), h_t = -sum_v p(v) log p(v).
    `log_likelihood`, `expected_log_likelihood`, `variance`, `log_rank` and `entropy` sum over the scored positions
    (a real token followed by a real token: the Fast-DetectGPT positions); `cross_log_likelihood` sums mu_t over
    every real position, the last one included (the Binoculars cross-perplexity positions).
    """

    log_likelihood: torch.Tensor
    expected_log_likelihood: torch.Tensor
    variance: torch.Tensor
    scored_tokens: torch.Tensor
    log_rank: torch.Tensor
    entropy: torch.Tensor
    cross_log_likelihood: torch.Tensor
    real_tokens: torch.Tensor

    def criterion(self) -> torch.Tensor:
        """Fast-DetectGPT analytic sampling discrepancy (sum ll - sum mu) / sqrt(sum var) [B]; higher = machine."""
        return (self.log_likelihood - self.expected_log_likelihood) / self.variance.clamp_min(1e-12).sqrt()

    def _per_scored(self, total: torch.Tensor) -> torch.Tensor:
        return total / self.scored_tokens.clamp_min(1).to(torch.float32)

    def perplexity(self) -> torch.Tensor:
        """Scoring-model perplexity exp(mean negative log-likelihood) over the scored tokens [B]."""
        return torch.exp(-self._per_scored(self.log_likelihood))

    def binoculars(self) -> torch.Tensor:
        """Binoculars score ppl / x_ppl as ahans30/Binoculars computes it [B]; lower = machine.

        Observer = sampling model, performer = scoring model. ppl = mean over the scored positions of -log p(x_{t+1})
        (the reference's shifted attention mask); x_ppl = mean over every real position, the last one included, of
        -sum_v q(v) log p(v) (the reference's cross-entropy runs over all positions, masked by the unshifted mask).
        """
        ppl = -self._per_scored(self.log_likelihood)
        x_ppl = -self.cross_log_likelihood / self.real_tokens.clamp_min(1).to(torch.float32)
        return ppl / x_ppl

    def mean_log_likelihood(self) -> torch.Tensor:
        """Mean log p(x_t) over the scored tokens [B] (the reference's likelihood baseline; higher = machine)."""
        return self._per_scored(self.log_likelihood)

    def mean_log_rank(self) -> torch.Tensor:
        """Mean log rank (1 = most likely token) of the observed tokens [B] (the log-rank baseline negates it)."""
        return self._per_scored(self.log_rank)

    def mean_entropy(self) -> torch.Tensor:
        """Mean entropy of the scoring model's next-token distribution over the scored positions [B], in nats."""
        return self._per_scored(self.entropy)

    def select(self, index: int) -> dict[str, float]:
        """The scores of one text as Python floats (one host transfer per batch is done by the caller)."""
        return {
            "criterion": float(self.criterion()[index]),
            "perplexity": float(self.perplexity()[index]),
            "binoculars": float(self.binoculars()[index]),
            "log_likelihood": float(self.mean_log_likelihood()[index]),
            "log_rank": float(self.mean_log_rank()[index]),
            "entropy": float(self.mean_entropy()[index]),
            "scored_tokens": int(self.scored_tokens[index]),
        }

    def columns(self) -> dict[str, list[float]]:
        """Every per-text score as a list (one host transfer each)."""
        return {
            "criterion": self.criterion().tolist(),
            "perplexity": self.perplexity().tolist(),
            "binoculars": self.binoculars().tolist(),
            "log_likelihood": self.mean_log_likelihood().tolist(),
            "log_rank": self.mean_log_rank().tolist(),
            "entropy": self.mean_entropy().tolist(),
        }


def scored_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, T-1]: label position t (token t+1) is scored when it and its preceding token are real tokens.

    With right padding this equals attention_mask[:, 1:]; with left padding it also leaves out the first real
    token, whose context would otherwise be padding (the first token of a text is never scored).
    """
    mask = attention_mask.bool()
    return mask[:, 1:] & mask[:, :-1]


def vocabulary_statistics(
    score_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ll, mu, var, log-rank and entropy [N] in fp32 for N positions, from scoring logits [N, V] (any dtype).

    `ref_logits` [N, V'] are the sampling model's (None: the scoring model samples too); the vocabulary is cut to
    min(V, V'). One pass of reductions per row: log p = l - logsumexp(l), mu = E_q[log p], var = E_q[(log p - mu)^2]
    (the centred form: no cancellation of E_q[(log p)^2] - mu^2 on flat distributions), ll = log p(label),
    log-rank = log(1 + #{v: l(v) > l(label)}), entropy = -E_p[log p]. Written without in-place operations so that
    torch.compile fuses it into a few loops over the logits that never materialise an fp32 copy; eager mode runs the
    same code.
    """
    score = score_logits.float()
    if ref_logits is not None:
        vocab = min(score.shape[-1], ref_logits.shape[-1])
        score = score[:, :vocab]
    shifted = score - score.amax(dim=-1, keepdim=True)
    log_norm = shifted.exp().sum(dim=-1, keepdim=True).log()
    log_p = shifted - log_norm
    p = log_p.exp()
    if ref_logits is None:
        q = p
    else:
        ref = ref_logits[:, :vocab].float()
        ref_shifted = ref - ref.amax(dim=-1, keepdim=True)
        ref_exp = ref_shifted.exp()
        q = ref_exp / ref_exp.sum(dim=-1, keepdim=True)
    mu = (q * log_p).sum(dim=-1)
    var = (q * (log_p - mu.unsqueeze(-1)).square()).sum(dim=-1)
    observed = shifted.gather(-1, labels.unsqueeze(-1))
    ll = (observed - log_norm).squeeze(-1)
    rank = (shifted > observed).sum(dim=-1)
    log_rank = torch.log1p(rank.float())
    entropy = -mu if ref_logits is None else -(p * log_p).sum(dim=-1)
    return ll, mu, var, log_rank, entropy


def compiler_available(device: torch.device) -> bool:
    """Whether torch.compile can build kernels here: a C++ compiler on CPU, Triton on CUDA (else eager mode)."""
    if device.type == "cuda":
        import importlib.util

        return importlib.util.find_spec("triton") is not None
    if device.type != "cpu":
        return False
    candidates = (os.environ.get("CXX", ""), "g++", "c++", "clang++")
    return any(name and shutil.which(name) for name in candidates)


class StatisticsKernel:
    """`vocabulary_statistics`, eager or compiled with torch.compile (fused: a few passes over bf16/fp32 logits).

    `compile(...)` compiles for one vocabulary width and logits dtype, checks the compiled kernel against eager
    mode on a probe and keeps eager mode (logging why) when compiling fails or disagrees. Calls are thread-safe;
    the kernel in use only ever switches from eager to a checked compiled one.
    """

    #: Largest |compiled - eager| accepted on the probe (fp32 reductions in another order differ by ~1e-6 per row).
    PROBE_TOLERANCE = 1e-3

    def __init__(self) -> None:
        self._compiled: Any = None
        self.mode = "eager"
        self.failure = ""

    def __call__(
        self, score_logits: torch.Tensor, ref_logits: torch.Tensor | None, labels: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        compiled = self._compiled
        rows = labels.shape[0]
        if compiled is None or rows == 0:
            return vocabulary_statistics(score_logits, ref_logits, labels)
        if rows == 1:  # a one-row input would specialise (and recompile) the dynamic-shape kernel
            out = compiled(score_logits.repeat(2, 1), None if ref_logits is None else ref_logits.repeat(2, 1), labels.repeat(2))
            return tuple(t[:1] for t in out)
        return compiled(score_logits, ref_logits, labels)

    def compile(
        self,
        vocab: int,
        dtype: torch.dtype,
        device: torch.device,
        *,
        two_models: bool = False,
        ref_vocab: int | None = None,
        cache_dir: Path | None = None,
    ) -> bool:
        """Compile for logits [N, vocab] of `dtype` on `device`; True when the compiled kernel is now in use.

        The compiled code is cached on disk in `cache_dir` (the detector passes `kernel_cache.kernel_cache_dir(...)`;
        None leaves $TORCHINDUCTOR_CACHE_DIR or torch's default): the first compile costs ~15 CPU-seconds, a later
        start with the cache a few (tracing only). The kernel cache module imports this one, not the reverse."""
        if cache_dir is not None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
        with startup_phase("compile_statistics"):
            return self._compile(vocab, dtype, device, two_models, ref_vocab)

    def _compile(self, vocab: int, dtype: torch.dtype, device: torch.device, two_models: bool, ref_vocab: int | None) -> bool:
        try:
            compiled = torch.compile(vocabulary_statistics, dynamic=True)
            g = torch.Generator().manual_seed(0)
            checks = []
            with torch.inference_mode():
                for rows in (3, 5):
                    score = (torch.randn(rows, vocab, generator=g) * 4).to(device=device, dtype=dtype)
                    ref = None
                    if two_models:
                        ref = (torch.randn(rows, ref_vocab or vocab, generator=g) * 4).to(device=device, dtype=dtype)
                    labels = torch.randint(0, min(vocab, ref_vocab or vocab), (rows,), generator=g).to(device)
                    got = compiled(score, ref, labels)
                    want = vocabulary_statistics(score, ref, labels)
                    checks.append(max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True)))
            if max(checks) > self.PROBE_TOLERANCE:
                raise RuntimeError(f"compiled statistics differ from eager mode by {max(checks):.3g}")
        except Exception as exc:  # no compiler, unsupported backend, ...: eager mode is always correct
            self.failure = f"{type(exc).__name__}: {exc}"
            log.warning("statistics kernel: torch.compile failed, staying in eager mode (%s)", self.failure[:500])
            return False
        self._compiled = compiled
        self.mode = "compiled"
        log.info("statistics kernel: compiled (vocabulary %s, %s, %s)", vocab, dtype, device)
        return True


def _positions(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols) of every real token [N] and whether the token after it is real too (a scored position) [N]."""
    real = attention_mask.bool()
    followed = torch.zeros_like(real)
    followed[:, :-1] = real[:, 1:]
    rows, cols = real.nonzero(as_tuple=True)
    return rows, cols, followed[rows, cols]


def _next_tokens(input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The token after each position (0 after the last column; such positions are never scored)."""
    following = torch.zeros_like(input_ids)
    following[:, :-1] = input_ids[:, 1:]
    return following[rows, cols]


class _Collected:
    """The per-position statistics of a batch, written chunk by chunk into buffers allocated before the loop.

    Keeping each chunk's small output tensors alive until the end (a list of parts) pinned the allocator's heap
    between the chunks' large temporaries: 32 texts of ~230 tokens took 5.7 GB resident through SmolLM2's 49k
    vocabulary instead of about 1.2 GB. Writing into preallocated buffers frees every temporary of a chunk."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.values = torch.empty((5, n), dtype=torch.float32, device=device)

    def put(self, start: int, stats: tuple[torch.Tensor, ...]) -> None:
        for k, value in enumerate(stats):
            self.values[k, start : start + value.shape[0]] = value

    def parts(self) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(self.values.unbind(0))]


def _reduce(
    batch: int, rows: torch.Tensor, scored: torch.Tensor, parts: list[tuple[torch.Tensor, ...]], device: torch.device
) -> TokenStatistics:
    """Per-text sums of the per-position statistics (index_add: padding never enters)."""
    if parts:
        ll, mu, var, log_rank, entropy = (torch.cat(p) for p in zip(*parts, strict=True))
    else:
        ll = mu = var = log_rank = entropy = torch.zeros(0, dtype=torch.float32, device=device)
    rows = rows.to(ll.device)
    weight = scored.to(device=ll.device, dtype=torch.float32)

    def total(values: torch.Tensor, w: torch.Tensor | None = weight) -> torch.Tensor:
        out = torch.zeros(batch, dtype=torch.float32, device=ll.device)
        return out.index_add_(0, rows, values if w is None else values * w).cpu()

    scored_tokens = torch.zeros(batch, dtype=torch.int64).index_add_(0, rows.cpu(), scored.cpu().to(torch.int64))
    real_tokens = torch.bincount(rows.cpu(), minlength=batch).to(torch.int64)
    return TokenStatistics(
        total(ll), total(mu), total(var), scored_tokens, total(log_rank), total(entropy), total(mu, None), real_tokens
    )


def analytic_statistics(
    ref_logits: torch.Tensor,
    score_logits: torch.Tensor | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    kernel: StatisticsKernel | None = None,
) -> TokenStatistics:
    """Masked statistics of a padded batch from full logits [B, T, V] (any dtype), input ids and mask [B, T].

    Only real positions are gathered, then processed `chunk_elements` logits at a time, so the fp32
    softmax/log-softmax never exist for the whole batch. `score_logits=None` means the same model for both roles
    (its logits are `ref_logits`).
    """
    kernel = kernel or StatisticsKernel()
    rows, cols, scored = _positions(attention_mask)
    labels = _next_tokens(input_ids, rows, cols).to(ref_logits.device)
    step = max(1, chunk_elements // ref_logits.shape[-1])
    out_device = ref_logits.device if score_logits is None else score_logits.device
    collected = _Collected(rows.numel(), out_device)
    for start in range(0, rows.numel(), step):
        r, c = rows[start : start + step], cols[start : start + step]
        if score_logits is None:
            collected.put(start, kernel(ref_logits[r, c], None, labels[start : start + step]))
        else:
            collected.put(
                start,
                kernel(
                    score_logits[r, c],
                    ref_logits[r, c].to(score_logits.device),
                    labels[start : start + step].to(score_logits.device),
                ),
            )
    return _reduce(input_ids.shape[0], rows, scored, collected.parts(), ref_logits.device)


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

    def hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
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
    kernel: StatisticsKernel | None = None,
) -> TokenStatistics:
    """Statistics of a padded batch [B, T] (left or right padding), masked, fp32, memory-bounded.

    `sampling=None` (or the same scorer) means one model in both roles: one forward pass. Two different models run
    one forward pass each on the same token ids; the caller guarantees they share the tokenizer.
    """
    kernel = kernel or StatisticsKernel()
    same = sampling is None or sampling is scoring
    sampler = scoring if sampling is None else sampling  # the model in the sampling role
    with torch.inference_mode():
        input_ids = input_ids.to(scoring.device)
        attention_mask = attention_mask.to(scoring.device)
        split = scoring.split and (same or sampler.split)
        if not split:
            score_logits = scoring.logits(input_ids, attention_mask)
            if same:
                return analytic_statistics(
                    score_logits, None, input_ids, attention_mask, chunk_elements=chunk_elements, kernel=kernel
                )
            assert sampling is not None
            sampled_logits = sampling.logits(input_ids.to(sampling.device), attention_mask.to(sampling.device))
            return analytic_statistics(
                sampled_logits.to(scoring.device),
                score_logits,
                input_ids,
                attention_mask,
                chunk_elements=chunk_elements,
                kernel=kernel,
            )
        rows, cols, scored = _positions(attention_mask)
        labels = _next_tokens(input_ids, rows, cols)
        h_score = scoring.hidden(input_ids, attention_mask, rows, cols)
        h_ref = None
        if not same:
            assert sampling is not None
            h_ref = sampling.hidden(
                input_ids.to(sampling.device),
                attention_mask.to(sampling.device),
                rows.to(sampling.device),
                cols.to(sampling.device),
            )
        vocab = scoring.vocab_size if same else max(scoring.vocab_size, sampler.vocab_size)
        step = max(1, chunk_elements // vocab)
        collected = _Collected(rows.numel(), scoring.device)
        for start in range(0, rows.numel(), step):
            score_logits = scoring.head(h_score[start : start + step])
            ref_logits: torch.Tensor | None = None
            if h_ref is not None:
                assert sampling is not None
                ref_logits = sampling.head(h_ref[start : start + step]).to(scoring.device)
            collected.put(start, kernel(score_logits, ref_logits, labels[start : start + step]))
            del score_logits, ref_logits
        return _reduce(input_ids.shape[0], rows, scored, collected.parts(), scoring.device)


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
