"""Typed async client of crucible.proposer.v1.ProposerService: rewrites, meaning checks and embeddings.

Rewrites come back with the drop counts so callers can see how many candidates the service rejected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as pb_grpc
from crucible.clients.base import ServiceClient, model_dict, optional_field

MODES = {"paraphrase": pb.PROPOSE_MODE_PARAPHRASE, "equivalent_question": pb.PROPOSE_MODE_EQUIVALENT_QUESTION}
METHODS = {
    "embedding": pb.EQUIVALENCE_METHOD_EMBEDDING_COSINE,
    "nli": pb.EQUIVALENCE_METHOD_NLI_ENTAILMENT,
    "question": pb.EQUIVALENCE_METHOD_QUESTION,
    "judge": pb.EQUIVALENCE_METHOD_LLM_JUDGE,
}
_METHOD_NAMES = {v: k for k, v in METHODS.items()}


def _reason(value: pb.DropReason.ValueType) -> str:
    """A DropReason as the lower-case name the service's cleaning uses ("not_a_question"); "" for UNSPECIFIED."""
    return "" if value == pb.DROP_REASON_UNSPECIFIED else pb.DropReason.Name(value)[len("DROP_REASON_") :].lower()


@dataclasses.dataclass(frozen=True)
class Proposal:
    """Candidates of one Propose call (invalid ones already dropped and counted: `dropped` by reason)."""

    candidates: list[str]
    finish_reasons: list[str]
    dropped_empty: int
    dropped_degenerate: int
    seed: int
    prompt: str
    model: dict[str, str]
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Equivalence:
    """Verdict on one (first, second) pair: `score` is cosine or min entailment; `equivalent` = score >= threshold."""

    score: float
    equivalent: bool
    threshold: float
    method: str
    entailment_forward: float | None = None
    entailment_backward: float | None = None
    #: "question" method: why the pair failed the form checks ("not_a_question", "answers", ...); "" when it passed.
    form_violation: str = ""
    form_detail: str = ""
    #: The method that produced the score ("question" scores with "nli" or "embedding").
    similarity_method: str = ""
    #: "question" method, pairs that passed the form checks: the content-alignment score (weakest content-word match
    #: either way), its mean each way, and the content words without a counterpart ("content_change" below threshold).
    content_score: float | None = None
    content_recall: float | None = None
    content_precision: float | None = None
    dropped_words: tuple[str, ...] = ()
    added_words: tuple[str, ...] = ()


class ProposerClient(ServiceClient["pb_grpc.ProposerServiceAsyncStub"]):  # the aio stub type (type-checking only)
    """Client of the proposer service."""

    SERVICE = "crucible.proposer.v1.ProposerService"
    STUB = pb_grpc.ProposerServiceStub

    async def propose(
        self,
        text: str,
        *,
        mode: str = "paraphrase",
        options: Sequence[str] = (),
        correct_option_index: int | None = None,
        n: int = 1,
        instruction: str = "",
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int = 0,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> Proposal:
        """Rewrite `text` n times; for mode="equivalent_question" give the options and the correct option's index."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
        request = pb.ProposeRequest(
            text=text, mode=MODES[mode], options=list(options), n=n, instruction=instruction, max_new_tokens=max_new_tokens
        )
        if correct_option_index is not None:
            request.correct_option_index = correct_option_index
        if temperature is not None:
            request.temperature = temperature
        if top_p is not None:
            request.top_p = top_p
        if seed is not None:
            request.seed = seed
        reply = await self.stub.Propose(request, timeout=self.timeout(timeout))
        return Proposal(
            [c.text for c in reply.candidates],
            [pb.FinishReason.Name(c.finish_reason) for c in reply.candidates],
            reply.dropped_empty,
            reply.dropped_degenerate,
            reply.seed,
            reply.prompt,
            model_dict(reply.model),
            {_reason(d.reason): d.count for d in reply.dropped},
        )

    async def check_equivalence(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        method: str = "embedding",
        threshold: float | None = None,
        options: Sequence[str] = (),
        content_threshold: float | None = None,
        timeout: float | None = None,
    ) -> list[Equivalence]:
        """Whether each (first, second) pair means the same; method "embedding" (default), "nli", "judge" (an LLM judge,
        when the proposer has one) or "question" (first = a question stem, second = its rewording; `options` are the
        question's answer options; `content_threshold` the content-alignment bar, None = the proposer's)."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        request = pb.CheckEquivalenceRequest(
            pairs=[pb.TextPair(first=a, second=b, options=list(options)) for a, b in pairs], method=METHODS[method]
        )
        if threshold is not None:
            request.threshold = threshold
        if content_threshold is not None:
            request.content_threshold = content_threshold
        reply = await self.stub.CheckEquivalence(request, timeout=self.timeout(timeout))
        used = _METHOD_NAMES.get(reply.method, str(reply.method))
        scoring = _METHOD_NAMES.get(reply.similarity_method, used)
        return [
            Equivalence(
                r.score,
                r.equivalent,
                reply.threshold,
                used,
                optional_field(r, "entailment_forward"),
                optional_field(r, "entailment_backward"),
                _reason(r.form_violation),
                r.form_detail,
                scoring,
                optional_field(r, "content_score"),
                optional_field(r, "content_recall"),
                optional_field(r, "content_precision"),
                tuple(r.dropped_words),
                tuple(r.added_words),
            )
            for r in reply.results
        ]

    async def embed(self, texts: Sequence[str], *, timeout: float | None = None) -> list[list[float]]:
        """L2-normalised embeddings, one per text."""
        reply = await self.stub.Embed(pb.EmbedRequest(texts=list(texts)), timeout=self.timeout(timeout))
        return [list(e.values) for e in reply.embeddings]

    async def info(self, *, timeout: float | None = None) -> pb.GetInfoResponse:
        """Models, defaults and limits of the service (the raw message)."""
        return await self.stub.GetInfo(pb.GetInfoRequest(), timeout=self.timeout(timeout))
