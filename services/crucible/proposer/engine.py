"""The proposer's engine: loads the generator, embedder and optional NLI model, runs their batchers (start/stop/ready)
and serves Propose / CheckEquivalence / Embed as plain calls. Request types and checks: requests.py; placement:
placement.py. No gRPC here: the servicer translates protobuf to these calls and back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from crucible.proposer import alignment, cleaning, equivalence, generation, judge, prompts
from crucible.proposer.config import ProposerConfig
from crucible.proposer.placement import plan_placement
from crucible.proposer.requests import (
    METHOD_COSINE,
    METHOD_JUDGE,
    METHOD_NLI,
    METHOD_QUESTION,
    CandidateResult,
    EmbedResult,
    EquivalenceResult,
    ProposeResult,
    ProposeSpec,
    validate_pairs,
    validate_propose,
    validate_texts,
)
from crucible.runtime.batching import BatcherMetrics, BatchSettings, DynamicBatcher
from crucible.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from crucible.runtime.startup import startup_phase

log = logging.getLogger(__name__)


class ProposerEngine:
    """Loads the generator, embedder and optional NLI model, and serves the proposer's operations through batchers."""

    def __init__(self, config: ProposerConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self._metrics = BatcherMetrics(registry)
        self.generated_tokens = Counter(
            "crucible_proposer_generated_tokens_total",
            "Tokens generated for Propose candidates, kept or dropped.",
            registry=registry,
        )
        self.candidates = Counter(
            "crucible_proposer_candidates_total", "Propose candidates by outcome.", ["outcome"], registry=registry
        )
        # Generation time goes with decode steps x batch fill, not with tokens of cost, so a tokens/s estimate
        # would refuse calls that fit; rows stop at their caller's deadline instead (GenerationRow.abort).
        self.generation_settings = dataclasses.replace(config.batch_settings(), admit_by_wait=False)
        self.embedding_settings = BatchSettings(
            max_batch_size=config.embed_max_batch_size,
            max_batch_tokens=0,
            max_wait_s=config.max_wait_ms / 1000.0,
            max_queue_size=config.embed_max_queue_size,
        )
        self.generator: Any = None
        self.embedder: Any = None
        self.nli: Any = None
        self.judge: Any = None
        self.embedding_dimension = 0
        self._eos_ids: list[int] = []
        self._pad_id = 0
        self._batchers: list[DynamicBatcher[Any, Any]] = []
        self._generate: DynamicBatcher[generation.GenerationRow, generation.GeneratedRow] | None = None
        self._embed: DynamicBatcher[str, equivalence.EmbeddedText] | None = None
        self._entail: DynamicBatcher[tuple[str, str], float] | None = None
        self._words: DynamicBatcher[str, alignment.WordVectors] | None = None
        self._judge: DynamicBatcher[tuple[str, str], float] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check placement, load the models (in a thread), start the batchers and warm every path once."""
        from crucible.models import (
            load_causal_lm,
            load_embedding_model,
            load_sequence_classifier,
        )

        cfg = self.config
        cache = cfg.model_cache_path()
        declared = int(cfg.memory_limit_gb * 1e9) if cfg.memory_limit_gb > 0 else None
        await asyncio.to_thread(plan_placement, cfg)
        self.generator = await asyncio.to_thread(
            load_causal_lm,
            cfg.model,
            device=cfg.device,
            dtype=cfg.dtype,
            quantize=cfg.quantize,
            cache_dir=cache,
            available_bytes=declared,
        )
        self.embedder = await asyncio.to_thread(
            load_embedding_model,
            cfg.embedding_model,
            device=cfg.device,
            dtype=cfg.equivalence_dtype,
            cache_dir=cache,
            available_bytes=declared,
        )
        if cfg.nli_model:
            self.nli = await asyncio.to_thread(
                load_sequence_classifier,
                cfg.nli_model,
                device=cfg.device,
                dtype=cfg.equivalence_dtype,
                cache_dir=cache,
                available_bytes=declared,
            )
            equivalence.entailment_label_index(self.nli.model.config.id2label)  # refuse a non-NLI classifier now
        if cfg.judge_model:
            self.judge = await asyncio.to_thread(
                load_causal_lm, cfg.judge_model, device=cfg.device, dtype=cfg.dtype, cache_dir=cache, available_bytes=declared
            )
            judge.answer_token_ids(self.judge.tokenizer)  # refuse a judge that cannot say Yes and No apart now
        self._eos_ids = self._end_token_ids(self.generator)
        self._pad_id = int(
            self.generator.tokenizer.pad_token_id
            if self.generator.tokenizer.pad_token_id is not None
            else (self._eos_ids[0] if self._eos_ids else 0)
        )

        self._generate = DynamicBatcher(
            "proposer_generate",
            self._run_generation,
            self.generation_settings,
            cost=lambda row: len(row.prompt_ids) + row.max_new_tokens,
            metrics=self._metrics,
        )
        self._embed = DynamicBatcher(
            "proposer_embed",
            self._run_embedding,
            self.embedding_settings,
            dedup_key=lambda text: text,
            metrics=self._metrics,
        )
        self._words = DynamicBatcher(
            "proposer_words",
            self._run_word_vectors,
            self.embedding_settings,
            dedup_key=lambda text: text,
            metrics=self._metrics,
        )
        self._batchers = [self._generate, self._embed, self._words]
        if self.judge is not None:
            self._judge = DynamicBatcher(
                "proposer_judge",
                self._run_judge,
                dataclasses.replace(self.embedding_settings, max_batch_size=8),
                dedup_key=lambda pair: pair,
                metrics=self._metrics,
            )
            self._batchers.append(self._judge)
        if self.nli is not None:
            self._entail = DynamicBatcher(
                "proposer_nli",
                self._run_entailment,
                self.embedding_settings,
                dedup_key=lambda pair: pair,
                metrics=self._metrics,
            )
            self._batchers.append(self._entail)
        for batcher in self._batchers:
            batcher.start()
        with startup_phase("warm_up"):
            warm = await self._embed.submit("warm-up")
            self.embedding_dimension = len(warm.vector)
            await self._generate.submit(generation.GenerationRow((self._pad_id,), 1.0, 1.0, 2, 0))
            await self._words.submit("warm-up")
            if self._entail is not None:
                await self._entail.submit(("warm-up", "warm-up"))
            if self._judge is not None:
                await self._judge.submit(("warm-up", "warm-up"))
        log.info(
            "proposer ready",
            extra={
                "generator": dataclasses.asdict(self.generator.identity),
                "embedder": dataclasses.asdict(self.embedder.identity),
                "nli": dataclasses.asdict(self.nli.identity) if self.nli else None,
                "judge": dataclasses.asdict(self.judge.identity) if self.judge else None,
            },
        )

    async def stop(self) -> None:
        """Stop the batchers (waiting calls fail with UNAVAILABLE) and release the models."""
        for batcher in self._batchers:
            await batcher.stop()
        self._batchers = []
        self.generator = self.embedder = self.nli = self.judge = None

    @staticmethod
    def _end_token_ids(loaded: Any) -> list[int]:
        """Token ids that end a turn: the tokenizer's EOS, the generation config's, and <|im_end|>/<|eot_id|> if known."""
        ids: set[int] = set()
        tokenizer = loaded.tokenizer
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        configured = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif isinstance(configured, (list, tuple)):
            ids.update(int(i) for i in configured)
        vocab = tokenizer.get_vocab()
        for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|endoftext|>"):
            if token in vocab:
                ids.add(int(vocab[token]))
        return sorted(ids)

    # ---- batch functions (worker threads) ---------------------------------------------------------------------------

    def _run_generation(self, rows: list[generation.GenerationRow]) -> list[generation.GeneratedRow]:
        generated = generation.generate_rows(self.generator.model, rows, eos_token_ids=self._eos_ids, pad_token_id=self._pad_id)
        self.generated_tokens.inc(sum(row.steps for row in generated))
        return generated

    def _run_embedding(self, texts: list[str]) -> list[equivalence.EmbeddedText]:
        return equivalence.embed_texts(self.embedder, texts, batch_size=self.config.embed_max_batch_size)

    def _run_entailment(self, pairs: list[tuple[str, str]]) -> list[float]:
        probs = equivalence.entailment_probabilities(
            self.nli, [p for p, _ in pairs], [h for _, h in pairs], batch_size=self.config.embed_max_batch_size
        )
        return [float(p) for p in probs]

    def _run_word_vectors(self, texts: list[str]) -> list[alignment.WordVectors]:
        return alignment.word_vectors(self.embedder, texts, batch_size=self.config.embed_max_batch_size)

    def _run_judge(self, pairs: list[tuple[str, str]]) -> list[float]:
        pad = self.judge.tokenizer.pad_token_id
        return judge.judge_probabilities(self.judge, pairs, pad_token_id=int(pad if pad is not None else 0))

    @property
    def ready(self) -> bool:
        """True between a finished `start` and `stop`."""
        return self._generate is not None and self.generator is not None

    def require_ready(self) -> None:
        """UNAVAILABLE (NOT_READY) while the models load or after shutdown."""
        if not self.ready:
            raise Unavailable("the proposer's models are still loading", reason="NOT_READY")

    # ---- Propose ---------------------------------------------------------------------------------------------------

    def render(self, spec: ProposeSpec) -> str:
        """The exact prompt text for a validated spec."""
        messages = prompts.build_messages(
            spec.mode or "",
            spec.text,
            options=spec.options,
            correct_option_index=spec.correct_option_index,
            instruction=spec.instruction,
        )
        return prompts.render_prompt(self.generator.tokenizer, messages)

    def _render_and_encode(self, spec: ProposeSpec) -> tuple[str, tuple[int, ...]]:
        prompt = self.render(spec)
        return prompt, tuple(prompts.encode_prompt(self.generator.tokenizer, prompt))

    async def propose(self, spec: ProposeSpec, *, timeout: float | None = None) -> ProposeResult:
        """Validate, build the prompt, generate n rows through the batcher, then clean and filter the candidates.

        `timeout` is the caller's remaining deadline: rows still queued then are dropped, rows being generated stop
        at the next token, and the call fails with DEADLINE_EXCEEDED. A cancelled caller stops its rows the same way.
        """
        validate_propose(spec, self.config)
        self.require_ready()
        assert self._generate is not None
        cfg = self.config
        prompt, prompt_ids = await asyncio.to_thread(self._render_and_encode, spec)  # tokenising off the event loop
        max_new = spec.max_new_tokens or cfg.default_max_new_tokens
        if spec.mode == prompts.MODE_EQUIVALENT_QUESTION and not spec.max_new_tokens:
            max_new = min(max_new, prompts.question_token_budget(spec.text))  # longer rewrites are dropped anyway
        context = self.generator.max_length
        if context is not None and len(prompt_ids) + max_new > context:
            raise InvalidArgument.field(
                "text",
                f"the prompt is {len(prompt_ids)} tokens; with max_new_tokens {max_new} it exceeds the "
                f"model's context of {context} tokens",
                reason="PROMPT_TOO_LONG",
            )
        budget = self.generation_settings.max_batch_tokens
        if budget and len(prompt_ids) + max_new > budget:
            raise InvalidArgument.field(
                "text",
                f"the prompt is {len(prompt_ids)} tokens; with max_new_tokens {max_new} it exceeds the batch "
                f"token budget of {budget}",
                reason="PROMPT_TOO_LONG",
            )
        seed = spec.seed if spec.seed is not None else secrets.randbits(63)
        temperature = cfg.default_temperature if spec.temperature is None else spec.temperature
        top_p = cfg.default_top_p if spec.top_p is None else spec.top_p
        abort = threading.Event()
        rows = [
            generation.GenerationRow(prompt_ids, float(temperature), float(top_p), max_new, generation.row_seed(seed, i), abort)
            for i in range(max(spec.n, 1))
        ]
        loop = asyncio.get_running_loop()
        timer = loop.call_later(max(timeout, 0.0), abort.set) if timeout is not None else None
        try:
            generated = await self._generate.submit_many(rows, timeout=timeout)
        except BaseException:
            abort.set()  # cancelled or failed: stop this call's rows if they are being generated
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if any(row.finish == generation.FINISH_ABORTED for row in generated):
            raise DeadlineExceeded(
                "the deadline passed while the candidates were being generated", reason="DEADLINE_IN_GENERATION"
            )
        drifted: frozenset[str] = frozenset()
        if spec.mode == prompts.MODE_EQUIVALENT_QUESTION and cfg.question_filter:
            kept = [c.text for row in generated if (c := self._clean(spec, row)).outcome == cleaning.KEPT]
            if kept:
                aligned = await self._content([(spec.text, text) for text in dict.fromkeys(kept)], None, timeout=timeout)
                drifted = frozenset(text for text, a in zip(dict.fromkeys(kept), aligned, strict=True) if not a[1])
        return self.collect_candidates(spec, prompt, seed, generated, drifted)

    def _clean(self, spec: ProposeSpec, row: generation.GeneratedRow) -> cleaning.Cleaned:
        raw = self.generator.tokenizer.decode(list(row.token_ids), skip_special_tokens=True)
        if spec.mode == prompts.MODE_EQUIVALENT_QUESTION:
            return cleaning.clean_question(raw, source=spec.text, options=spec.options)
        return cleaning.clean_candidate(raw, source=spec.text, mode=spec.mode or "")

    def collect_candidates(
        self,
        spec: ProposeSpec,
        prompt: str,
        seed: int,
        generated: Sequence[generation.GeneratedRow],
        drifted: frozenset[str] = frozenset(),
    ) -> ProposeResult:
        """Clean every generated row, drop and count the invalid ones (and, for questions, the kept texts in
        `drifted`, which failed the content alignment: CONTENT_CHANGE), and build the result."""
        kept: list[CandidateResult] = []
        dropped: dict[str, int] = {}
        for row in generated:
            cleaned = self._clean(spec, row)
            if cleaned.outcome == cleaning.KEPT and cleaned.text in drifted:
                cleaned = cleaning.Cleaned(cleaned.text, cleaning.CONTENT_CHANGE)
            if cleaned.outcome == cleaning.KEPT:
                kept.append(CandidateResult(cleaned.text, row.steps, row.finish))
            else:
                dropped[cleaned.outcome] = dropped.get(cleaned.outcome, 0) + 1
        self.candidates.labels(cleaning.KEPT).inc(len(kept))
        for reason, count in dropped.items():
            self.candidates.labels(reason).inc(count)
        ordered = {r: dropped[r] for r in cleaning.DROP_REASONS if r in dropped}
        return ProposeResult(
            kept,
            dropped.get(cleaning.EMPTY, 0),
            dropped.get(cleaning.DEGENERATE, 0),
            seed,
            prompt,
            self.generator.identity,
            ordered,
        )

    # ---- CheckEquivalence and Embed ---------------------------------------------------------------------------------

    async def _content(
        self, pairs: Sequence[tuple[str, str]], threshold: float | None, *, timeout: float | None
    ) -> list[tuple[alignment.Alignment, bool]]:
        """Content alignment of each (original, rewording) and whether it passes (`threshold` None = configured)."""
        assert self._words is not None
        cut = self.config.content_threshold if threshold is None else threshold
        vectors = await self._words.submit_many([a for a, _ in pairs] + [b for _, b in pairs], timeout=timeout)
        n = len(pairs)
        aligned = [alignment.align(vectors[i], vectors[n + i], cut) for i in range(n)]
        return [(a, a.score >= cut) for a in aligned]

    async def _check_questions(
        self,
        pairs: Sequence[tuple[str, str]],
        pair_options: Sequence[Sequence[str]],
        threshold: float | None,
        *,
        timeout: float | None,
        content_threshold: float | None = None,
    ) -> EquivalenceResult:
        """METHOD_QUESTION: the form checks first (a failing pair is refused with score 0), then the content
        alignment both ways (a pair that adds, drops or swaps a content word is refused with CONTENT_CHANGE), then
        bidirectional NLI entailment when an NLI model is loaded, else embedding cosine, on the pairs that passed."""
        problems = [
            cleaning.question_problem(second, first, options, near_copy=False)
            for (first, second), options in zip(pairs, pair_options, strict=True)
        ]
        formed = [i for i, (reason, _) in enumerate(problems) if not reason]
        content: dict[int, alignment.Alignment] = {}
        if formed:
            aligned = await self._content([pairs[i] for i in formed], content_threshold, timeout=timeout)
            for i, (a, ok) in zip(formed, aligned, strict=True):
                content[i] = a
                if not ok:
                    words = [*(f"drops '{w}'" for w in a.dropped), *(f"adds '{w}'" for w in a.added)]
                    if a.repeats >= alignment.MAX_REPEATS:
                        words.append(f"repeats content words {a.repeats} times more than the original")
                    words += [f"name '{w}' not in both" for w in a.names]
                    words += [f"adds the scope '{w}'" for w in a.scope]
                    problems[i] = (cleaning.CONTENT_CHANGE, "; ".join(words) or f"content score {a.score:.2f}")
        passing = [i for i, (reason, _) in enumerate(problems) if not reason]
        scoring = METHOD_NLI if self._entail is not None else METHOD_COSINE
        scored: dict[int, equivalence.PairVerdict] = {}
        if passing:
            inner = await self.check_equivalence([pairs[i] for i in passing], scoring, threshold, timeout=timeout)
            scored = dict(zip(passing, inner.verdicts, strict=True))
            cut, model = inner.threshold, inner.model
        else:
            cut = (
                (self.config.nli_threshold if scoring == METHOD_NLI else self.config.cosine_threshold)
                if threshold is None
                else threshold
            )
            model = (self.nli if scoring == METHOD_NLI else self.embedder).identity
        verdicts = [
            scored[i] if i in scored else equivalence.PairVerdict(0.0, False, form_violation=reason, form_detail=detail)
            for i, (reason, detail) in enumerate(problems)
        ]
        verdicts = [dataclasses.replace(v, content=content[i]) if i in content else v for i, v in enumerate(verdicts)]
        content_cut = self.config.content_threshold if content_threshold is None else content_threshold
        return EquivalenceResult(verdicts, METHOD_QUESTION, cut, model, scoring, content_cut)

    async def check_equivalence(
        self,
        pairs: Sequence[tuple[str, str]],
        method: str | None,
        threshold: float | None,
        *,
        timeout: float | None = None,
        pair_options: Sequence[Sequence[str]] | None = None,
        content_threshold: float | None = None,
    ) -> EquivalenceResult:
        """Score and judge every pair with embedding cosine, bidirectional NLI entailment, the LLM judge both ways,
        or (METHOD_QUESTION) the question form checks and content alignment followed by NLI or cosine;
        `pair_options` are each pair's answer options (QUESTION)."""
        cfg = self.config
        validate_pairs(
            pairs, method, threshold, pair_options, cfg, nli_loaded=self.nli is not None, content_threshold=content_threshold
        )
        self.require_ready()
        if method == METHOD_QUESTION:
            return await self._check_questions(
                pairs, pair_options or [() for _ in pairs], threshold, timeout=timeout, content_threshold=content_threshold
            )
        if method == METHOD_JUDGE:
            if self._judge is None:
                raise FailedPrecondition(
                    "LLM_JUDGE needs a judge model: start the proposer with --judge-model DIR", reason="JUDGE_NOT_CONFIGURED"
                )
            cut = cfg.judge_threshold if threshold is None else threshold
            return await self._both_ways(self._judge, pairs, cut, METHOD_JUDGE, self.judge.identity, timeout=timeout)
        if method == METHOD_NLI:
            if self._entail is None:
                raise FailedPrecondition(
                    "NLI_ENTAILMENT needs an NLI model: start the proposer with --nli-model DIR", reason="NLI_NOT_CONFIGURED"
                )
            cut = cfg.nli_threshold if threshold is None else threshold
            return await self._both_ways(self._entail, pairs, cut, METHOD_NLI, self.nli.identity, timeout=timeout)
        assert self._embed is not None
        cut = cfg.cosine_threshold if threshold is None else threshold
        embedded = await self._embed.submit_many([a for a, _ in pairs] + [b for _, b in pairs], timeout=timeout)
        import torch

        vectors = torch.tensor([e.vector for e in embedded], dtype=torch.float32)
        n = len(pairs)
        scores = equivalence.cosine_scores(vectors[:n], vectors[n:]).tolist()
        return EquivalenceResult(
            equivalence.cosine_verdicts(scores, cut), METHOD_COSINE, cut, self.embedder.identity, METHOD_COSINE
        )

    @staticmethod
    async def _both_ways(
        batcher: DynamicBatcher[tuple[str, str], float],
        pairs: Sequence[tuple[str, str]],
        cut: float,
        method: str,
        model: Any,
        *,
        timeout: float | None,
    ) -> EquivalenceResult:
        """A pair-probability model (NLI entailment, the LLM judge) run on each pair in both orders: equivalent when
        both reach `cut`."""
        probs = await batcher.submit_many([(a, b) for a, b in pairs] + [(b, a) for a, b in pairs], timeout=timeout)
        n = len(pairs)
        return EquivalenceResult(equivalence.nli_verdicts(probs[:n], probs[n:], cut), method, cut, model, method)

    async def embed(self, texts: Sequence[str], *, timeout: float | None = None) -> EmbedResult:
        """L2-normalised embeddings of `texts` (batched with concurrent calls), with token counts."""
        validate_texts(texts, self.config)
        self.require_ready()
        assert self._embed is not None
        embedded = await self._embed.submit_many(list(texts), timeout=timeout)
        return EmbedResult(list(embedded), self.embedding_dimension, self.embedder.identity)

    @property
    def generation_queue_depth(self) -> int:
        """Rows waiting for generation (not yet in a running batch)."""
        return self._generate.queue_depth if self._generate is not None else 0

    @property
    def chat_template(self) -> bool:
        """True when the generator has a chat template (Propose uses it)."""
        return prompts.has_chat_template(self.generator.tokenizer)
