"""gRPC servicer of the scorer service: protobuf <-> domain translation only.

Validation, tokenisation and scoring live in scoring.py and seca.py; batching in crucible.runtime.batching.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING

import grpc
from crucible.api.common.v1 import common_pb2
from crucible.api.scorer.v1 import scorer_service_pb2 as pb
from crucible.api.scorer.v1 import scorer_service_pb2_grpc as pb_grpc
from crucible.scorer.scoring import ChoiceRequest, TextRequest
from crucible.scorer.seca import SECA_PROMPT_TEMPLATE, McqQuestion
from google.protobuf import duration_pb2

if TYPE_CHECKING:
    from crucible.scorer.service import ScorerService

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


def _identity(loaded: object) -> common_pb2.ModelIdentity:
    ident = loaded.identity  # type: ignore[attr-defined]
    return common_pb2.ModelIdentity(
        name=ident.name, revision=ident.revision, dtype=ident.dtype, device=ident.device, quantization=ident.quantization
    )


class ScorerServicer(pb_grpc.ScorerServiceServicer):
    """Translates ScoreChoices / ScoreTexts / GetInfo to the scorer core and back."""

    def __init__(self, service: ScorerService) -> None:
        self._service = service

    async def ScoreChoices(self, request: pb.ScoreChoicesRequest, context: grpc.aio.ServicerContext) -> pb.ScoreChoicesResponse:
        """Validate and tokenise the items, score them through the batcher, answer in request order."""
        runtime = self._service.ready()
        # Byte limits were checked by the runtime before this handler ran. A call that could not be scored before its
        # deadline even at 2 tokens an item is refused before tokenising, which happens off the event loop.
        runtime.batcher.check_wait(2 * len(request.items), context.time_remaining(), items=len(request.items))
        prepared = await asyncio.to_thread(runtime.scorer.prepare_choices, [_choice_request(item) for item in request.items])
        scores = await runtime.batcher.submit_many([p.job for p in prepared], timeout=context.time_remaining())
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
        return pb.ScoreChoicesResponse(results=results, model=_identity(runtime.loaded))

    async def ScoreTexts(self, request: pb.ScoreTextsRequest, context: grpc.aio.ServicerContext) -> pb.ScoreTextsResponse:
        """Validate and tokenise the texts, score them through the batcher, answer in request order."""
        runtime = self._service.ready()
        runtime.batcher.check_wait(2 * len(request.items), context.time_remaining(), items=len(request.items))
        prepared = await asyncio.to_thread(runtime.scorer.prepare_texts,
                                           [TextRequest(text=i.text, prefix=i.prefix) for i in request.items])
        scores = await runtime.batcher.submit_many([p.job for p in prepared], timeout=context.time_remaining())
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
            model=_identity(runtime.loaded),
        )

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        """The model, its CPU placement, the SECA template, the limits and the batching settings."""
        runtime = self._service.ready()
        limits = runtime.scorer.limits
        batching = runtime.batcher.settings
        placement = runtime.placement
        wait = duration_pb2.Duration()
        wait.FromTimedelta(datetime.timedelta(seconds=batching.max_wait_s))
        return pb.GetInfoResponse(
            model=_identity(runtime.loaded),
            intra_op_threads=placement.intra_op_threads,
            inter_op_threads=placement.inter_op_threads,
            cores=list(placement.cores),
            cores_pinned=placement.pinned,
            seca_prompt_template=SECA_PROMPT_TEMPLATE,
            limits=pb.Limits(
                max_items_per_call=limits.max_items_per_call,
                max_choices_per_item=limits.max_choices_per_item,
                max_tokens=limits.max_tokens,
            ),
            batching=common_pb2.BatchingSettings(
                max_batch_size=batching.max_batch_size,
                max_batch_tokens=batching.max_batch_tokens,
                max_wait=wait,
                max_queue_size=batching.max_queue_size,
            ),
        )
