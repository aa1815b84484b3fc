"""Typed async client of crucible.scorer.v1.ScorerService: answer-choice log-probabilities and text likelihoods.

A question can be sent as a raw prompt or as an MMLU-format question (the server builds the SECA prompt).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from crucible.api.scorer.v1 import scorer_service_pb2 as pb
from crucible.api.scorer.v1 import scorer_service_pb2_grpc as pb_grpc
from crucible.clients.base import ServiceClient


@dataclasses.dataclass(frozen=True)
class Question:
    """An MMLU-format multiple-choice question."""

    subject: str
    question: str
    options: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ChoiceQuery:
    """What to score: exactly one of `prompt` or `question`.

    For a question, empty `choices` means the answer letters as the target writes them after "option: " — " A", " B", ...
    when that is one token for the tokenizer, else "A", "B", ... (returned `choices` show which).
    """

    prompt: str | None = None
    question: Question | None = None
    choices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ChoiceScores:
    """Log-probability of each choice as the continuation, the distribution over the choices, and the top one."""

    prompt: str
    choices: list[str]
    logprobs: list[float]
    probabilities: list[float]
    token_counts: list[int]
    top_index: int

    @property
    def ranking(self) -> list[int]:
        """Choice indexes from most to least likely."""
        return sorted(range(len(self.logprobs)), key=lambda i: -self.logprobs[i])


@dataclasses.dataclass(frozen=True)
class TextScore:
    """Likelihood of one text (or of its continuation after a prefix)."""

    log_likelihood: float
    mean_nll: float
    perplexity: float
    token_count: int
    truncated: bool


class ScorerClient(ServiceClient["pb_grpc.ScorerServiceAsyncStub"]):  # the aio stub type (type-checking only)
    """Client of the target-scorer service."""

    SERVICE = "crucible.scorer.v1.ScorerService"
    STUB = pb_grpc.ScorerServiceStub

    async def score_choices(self, queries: Sequence[ChoiceQuery], *, timeout: float | None = None) -> list[ChoiceScores]:
        """Score several prompts/questions in one call."""
        items = []
        for i, q in enumerate(queries):
            if (q.prompt is None) == (q.question is None):
                raise ValueError(f"queries[{i}]: give exactly one of prompt or question")
            item = pb.ChoiceItem(choices=list(q.choices))
            if q.question is not None:
                item.question.CopyFrom(
                    pb.McqQuestion(subject=q.question.subject, question=q.question.question, options=list(q.question.options))
                )
            else:
                item.raw_prompt = q.prompt or ""
            items.append(item)
        reply = await self.stub.ScoreChoices(pb.ScoreChoicesRequest(items=items), timeout=self.timeout(timeout))
        return [
            ChoiceScores(
                r.prompt,
                [c.text for c in r.choices],
                [c.logprob for c in r.choices],
                [c.probability for c in r.choices],
                [c.token_count for c in r.choices],
                r.top_index,
            )
            for r in reply.results
        ]

    async def score_texts(
        self, texts: Sequence[str], *, prefixes: Sequence[str] | None = None, timeout: float | None = None
    ) -> list[TextScore]:
        """Log-likelihood, mean NLL and perplexity per text (continuation-only when a prefix is given)."""
        if prefixes is not None and len(prefixes) != len(texts):
            raise ValueError("prefixes must be as many as texts")
        items = [pb.TextItem(text=t, prefix=(prefixes[i] if prefixes else "")) for i, t in enumerate(texts)]
        reply = await self.stub.ScoreTexts(pb.ScoreTextsRequest(items=items), timeout=self.timeout(timeout))
        return [TextScore(s.log_likelihood, s.mean_nll, s.perplexity, s.token_count, s.truncated) for s in reply.scores]

    async def info(self, *, timeout: float | None = None) -> pb.GetInfoResponse:
        """Model identity, threads, pinned cores and limits (the raw message)."""
        return await self.stub.GetInfo(pb.GetInfoRequest(), timeout=self.timeout(timeout))
