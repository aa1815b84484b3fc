"""gRPC servicer of the proposer service: protobuf <-> domain translation only.

The work (validation, prompts, batched generation, cleaning, meaning checks) lives in the ProposerEngine.
"""

from __future__ import annotations

import grpc

from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as pb_grpc
from crucible.proposer import cleaning, generation, prompts
from crucible.proposer.engine import ProposerEngine
from crucible.proposer.requests import METHOD_COSINE, METHOD_JUDGE, METHOD_NLI, METHOD_QUESTION, ProposeSpec
from crucible.runtime.convert import batching_settings, model_identity, remaining_seconds

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["ProposerService"]

_MODES = {
    pb.PROPOSE_MODE_PARAPHRASE: prompts.MODE_PARAPHRASE,
    pb.PROPOSE_MODE_EQUIVALENT_QUESTION: prompts.MODE_EQUIVALENT_QUESTION,
}
_METHODS = {
    pb.EQUIVALENCE_METHOD_EMBEDDING_COSINE: METHOD_COSINE,
    pb.EQUIVALENCE_METHOD_NLI_ENTAILMENT: METHOD_NLI,
    pb.EQUIVALENCE_METHOD_QUESTION: METHOD_QUESTION,
    pb.EQUIVALENCE_METHOD_LLM_JUDGE: METHOD_JUDGE,
}
_METHOD_ENUMS = {name: value for value, name in _METHODS.items()}
_DROP_REASONS = {
    cleaning.EMPTY: pb.DROP_REASON_EMPTY,
    cleaning.DEGENERATE: pb.DROP_REASON_DEGENERATE,
    cleaning.NOT_A_QUESTION: pb.DROP_REASON_NOT_A_QUESTION,
    cleaning.ANSWERS: pb.DROP_REASON_ANSWERS,
    cleaning.REPEATS_OPTIONS: pb.DROP_REASON_REPEATS_OPTIONS,
    cleaning.NEAR_COPY: pb.DROP_REASON_NEAR_COPY,
    cleaning.LENGTH_CHANGE: pb.DROP_REASON_LENGTH_CHANGE,
    cleaning.MEANING_CHANGE: pb.DROP_REASON_MEANING_CHANGE,
    cleaning.CONTENT_CHANGE: pb.DROP_REASON_CONTENT_CHANGE,
}
_FINISH = {generation.FINISH_STOP: pb.FINISH_REASON_STOP, generation.FINISH_LENGTH: pb.FINISH_REASON_LENGTH}


class ProposerServicer(pb_grpc.ProposerServiceServicer):
    """Translates ProposerService calls to ProposerEngine calls."""

    def __init__(self, engine: ProposerEngine) -> None:
        self.engine = engine

    async def Propose(self, request: pb.ProposeRequest, context: grpc.aio.ServicerContext) -> pb.ProposeResponse:
        spec = ProposeSpec(
            text=request.text,
            mode=_MODES.get(request.mode),
            options=tuple(request.options),
            correct_option_index=request.correct_option_index if request.HasField("correct_option_index") else None,
            n=request.n,
            instruction=request.instruction,
            temperature=request.temperature if request.HasField("temperature") else None,
            top_p=request.top_p if request.HasField("top_p") else None,
            max_new_tokens=request.max_new_tokens,
            seed=request.seed if request.HasField("seed") else None,
        )
        result = await self.engine.propose(spec, timeout=remaining_seconds(context))
        return pb.ProposeResponse(
            candidates=[
                pb.Candidate(text=c.text, generated_tokens=c.generated_tokens, finish_reason=_FINISH[c.finish])
                for c in result.candidates
            ],
            dropped_empty=result.dropped_empty,
            dropped_degenerate=result.dropped_degenerate,
            seed=result.seed,
            prompt=result.prompt,
            model=model_identity(result.model),
            dropped=[pb.DropCount(reason=_DROP_REASONS[reason], count=count) for reason, count in result.dropped.items()],
        )

    async def CheckEquivalence(
        self, request: pb.CheckEquivalenceRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckEquivalenceResponse:
        result = await self.engine.check_equivalence(
            [(pair.first, pair.second) for pair in request.pairs],
            _METHODS.get(request.method),
            request.threshold if request.HasField("threshold") else None,
            timeout=remaining_seconds(context),
            pair_options=[tuple(pair.options) for pair in request.pairs],
            content_threshold=request.content_threshold if request.HasField("content_threshold") else None,
        )
        results = []
        for verdict in result.verdicts:
            item = pb.EquivalenceResult(
                score=verdict.score,
                equivalent=verdict.equivalent,
                form_violation=_DROP_REASONS.get(verdict.form_violation, pb.DROP_REASON_UNSPECIFIED),
                form_detail=verdict.form_detail,
            )
            if verdict.entailment_forward is not None:
                item.entailment_forward = verdict.entailment_forward
            if verdict.entailment_backward is not None:
                item.entailment_backward = verdict.entailment_backward
            if verdict.content is not None:
                item.content_score = verdict.content.score
                item.content_recall = verdict.content.recall
                item.content_precision = verdict.content.precision
                item.dropped_words.extend(verdict.content.dropped)
                item.added_words.extend(verdict.content.added)
            results.append(item)
        return pb.CheckEquivalenceResponse(
            results=results,
            method=_METHOD_ENUMS[result.method],
            threshold=result.threshold,
            model=model_identity(result.model),
            similarity_method=_METHOD_ENUMS.get(result.similarity_method, pb.EQUIVALENCE_METHOD_UNSPECIFIED),
            content_threshold=result.content_threshold,
        )

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        result = await self.engine.embed(list(request.texts), timeout=remaining_seconds(context))
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(values=e.vector, token_count=e.token_count, truncated=e.truncated) for e in result.embeddings
            ],
            dimension=result.dimension,
            model=model_identity(result.model),
        )

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        engine = self.engine
        engine.require_ready()
        cfg = engine.config
        equivalence = [
            pb.EquivalenceSettings(
                method=pb.EQUIVALENCE_METHOD_EMBEDDING_COSINE,
                default_threshold=cfg.cosine_threshold,
                model=model_identity(engine.embedder.identity),
            )
        ]
        response = pb.GetInfoResponse(
            generator_model=model_identity(engine.generator.identity),
            chat_template=engine.chat_template,
            embedding_model=model_identity(engine.embedder.identity),
            embedding_dimension=engine.embedding_dimension,
            defaults=pb.GenerationDefaults(
                temperature=cfg.default_temperature, top_p=cfg.default_top_p, max_new_tokens=cfg.default_max_new_tokens
            ),
            limits=pb.Limits(
                max_candidates=cfg.max_candidates,
                max_new_tokens=cfg.max_new_tokens_limit,
                max_text_chars=cfg.max_text_chars,
                max_instruction_chars=cfg.max_instruction_chars,
                max_pairs_per_call=cfg.max_pairs_per_call,
                max_texts_per_call=cfg.max_texts_per_call,
            ),
            batching=batching_settings(engine.generation_settings),
            content_threshold=cfg.content_threshold,
        )
        if engine.nli is not None:
            response.nli_model.CopyFrom(model_identity(engine.nli.identity))
            equivalence.append(
                pb.EquivalenceSettings(
                    method=pb.EQUIVALENCE_METHOD_NLI_ENTAILMENT,
                    default_threshold=cfg.nli_threshold,
                    model=model_identity(engine.nli.identity),
                )
            )
        scoring = equivalence[-1]  # QUESTION scores with NLI when configured, else cosine
        equivalence.append(
            pb.EquivalenceSettings(
                method=pb.EQUIVALENCE_METHOD_QUESTION, default_threshold=scoring.default_threshold, model=scoring.model
            )
        )
        if engine.judge is not None:
            response.judge_model.CopyFrom(model_identity(engine.judge.identity))
            equivalence.append(
                pb.EquivalenceSettings(
                    method=pb.EQUIVALENCE_METHOD_LLM_JUDGE,
                    default_threshold=cfg.judge_threshold,
                    model=model_identity(engine.judge.identity),
                )
            )
        response.equivalence.extend(equivalence)
        return response
