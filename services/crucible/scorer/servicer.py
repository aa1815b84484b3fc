"""gRPC servicer of the scorer service: protobuf <-> domain translation only.

Validation, tokenisation and scoring live in scoring.py and seca.py; batching in crucible.runtime.batching.
"""

from __future__ import annotations

import asyncio

import grpc

from crucible.api.scorer.v1 import scorer_service_pb2 as pb
from crucible.api.scorer.v1 import scorer_service_pb2_grpc as pb_grpc
from crucible.runtime.convert import model_identity, remaining_seconds
from crucible.runtime.info import info_response
from crucible.scorer.engine import ScorerEngine
from crucible.scorer.scoring import ChoiceRequest, TextRequest
from crucible.scorer.seca import McqQuestion

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["ScorerService"]


def _choice_request(item: pb.ChoiceItem) -> ChoiceRequest:
    which = item.WhichOneof("prompt")
    if which == "question":
        q = item.question
        question = McqQuestion(subject=q.subject, question=q.question, options=tuple(q.options))
        return ChoiceRequest(question=question, choices=tuple(item.choices))
    if which == "raw_prompt":
        return ChoiceRequest(prompt=item.raw_prompt, choices=tuple(item.choices))
    return ChoiceRequest(choices=tuple(item.choices))  # neither set: the scorer names items[i].prompt


class ScorerServicer(pb_grpc.ScorerServiceServicer):
    """Translates ScoreChoices / ScoreTexts / GetInfo to the scorer core and back."""

    def __init__(self, engine: ScorerEngine) -> None:
        self.engine = engine

    async def ScoreChoices(self, request: pb.ScoreChoicesRequest, context: grpc.aio.ServicerContext) -> pb.ScoreChoicesResponse:
        """Validate and tokenise the items, score them through the batcher, answer in request order."""
        runtime = self.engine.require_ready()
        # Byte limits were checked by the runtime before this handler ran. A call that could not be scored before its
        # deadline even at 2 tokens an item is refused before tokenising, which happens off the event loop.
        runtime.batcher.check_wait(2 * len(request.items), remaining_seconds(context), items=len(request.items))
        prepared = await asyncio.to_thread(runtime.scorer.prepare_choices, [_choice_request(item) for item in request.items])
        scores = await runtime.batcher.submit_many([p.job for p in prepared], timeout=remaining_seconds(context))
        results = []
        for item, score in zip(prepared, scores, strict=True):
            results.append(
                pb.ChoiceResult(
                    prompt=item.prompt,
                    prompt_token_count=len(item.job.prompt_ids),
                    choices=[
                        pb.ChoiceScore(text=text, logprob=lp, token_count=n, probability=p)
                        for text, lp, n, p in zip(
                            item.choices, score.logprobs, score.token_counts, score.probabilities, strict=True
                        )
                    ],
                    top_index=score.top_index,
                )
            )
        return pb.ScoreChoicesResponse(results=results, model=model_identity(runtime.loaded.identity))

    async def ScoreTexts(self, request: pb.ScoreTextsRequest, context: grpc.aio.ServicerContext) -> pb.ScoreTextsResponse:
        """Validate and tokenise the texts, score them through the batcher, answer in request order."""
        runtime = self.engine.require_ready()
        runtime.batcher.check_wait(2 * len(request.items), remaining_seconds(context), items=len(request.items))
        prepared = await asyncio.to_thread(
            runtime.scorer.prepare_texts, [TextRequest(text=i.text, prefix=i.prefix) for i in request.items]
        )
        scores = await runtime.batcher.submit_many([p.job for p in prepared], timeout=remaining_seconds(context))
        return pb.ScoreTextsResponse(
            scores=[
                pb.TextScore(
                    log_likelihood=s.log_likelihood,
                    mean_nll=s.mean_nll,
                    perplexity=s.perplexity,
                    token_count=s.token_count,
                    truncated=p.truncated,
                )
                for p, s in zip(prepared, scores, strict=True)
            ],
            model=model_identity(runtime.loaded.identity),
        )

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        """The model, its CPU placement, the SECA template, the limits and the batching settings (the engine's info)."""
        return info_response(self.engine.info(), pb.GetInfoResponse)
