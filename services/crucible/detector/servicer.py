"""gRPC servicer of the detector service: protobuf <-> domain translation only.

The work happens in the DetectorEngine's pipeline (checks, caches, batching, calibration) and its core (models).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc
from crucible.detector.calibration import METHOD_LOGISTIC_ENSEMBLE, METHOD_NONE, METHOD_TWO_GAUSSIAN
from crucible.detector.core import BINOCULARS, CLASSIFIER, FAST_DETECTGPT, LIKELIHOOD, MemberDescription
from crucible.detector.engine import DetectorEngine
from crucible.detector.pipeline import CallResult, DetectionPipeline, DetectionResult
from crucible.detector.reliability import REASON_INVISIBLE_CHARACTERS, REASON_NONE, REASON_TOO_FEW_TOKENS
from crucible.runtime.convert import batching_settings, model_identity, remaining_seconds
from crucible.runtime.errors import InvalidArgument

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["DetectorService"]

MEMBER_TO_PROTO = {
    FAST_DETECTGPT: pb.MEMBER_FAST_DETECTGPT,
    BINOCULARS: pb.MEMBER_BINOCULARS,
    CLASSIFIER: pb.MEMBER_CLASSIFIER,
    LIKELIHOOD: pb.MEMBER_LIKELIHOOD,
}
MEMBER_FROM_PROTO = {v: k for k, v in MEMBER_TO_PROTO.items()}
METHOD_TO_PROTO = {
    METHOD_NONE: pb.CALIBRATION_METHOD_NONE,
    METHOD_TWO_GAUSSIAN: pb.CALIBRATION_METHOD_TWO_GAUSSIAN,
    METHOD_LOGISTIC_ENSEMBLE: pb.CALIBRATION_METHOD_LOGISTIC_ENSEMBLE,
}
REASON_TO_PROTO = {
    REASON_NONE: pb.UNRELIABLE_REASON_UNSPECIFIED,
    REASON_TOO_FEW_TOKENS: pb.UNRELIABLE_REASON_TOO_FEW_TOKENS,
    REASON_INVISIBLE_CHARACTERS: pb.UNRELIABLE_REASON_INVISIBLE_CHARACTERS,
}

# Chunks of one DetectStream computed at once; more requests wait in gRPC flow control.
_STREAM_CHUNKS_IN_FLIGHT = 4


def _members(values: Any, field: str) -> list[str]:
    out = []
    for i, value in enumerate(values):
        name = MEMBER_FROM_PROTO.get(value)
        if name is None:
            label = pb.Member.Name(value) if value in pb.Member.values() else str(value)
            raise InvalidArgument.field(
                f"{field}[{i}]",
                f"{label} is not a member; name one of {', '.join(pb.Member.Name(v) for v in MEMBER_TO_PROTO.values())}",
                reason="INVALID_MEMBER",
            )
        out.append(name)
    return out


class DetectorServicer(detector_service_pb2_grpc.DetectorServiceServicer):
    """Answers Detect, DetectStream and GetInfo from the engine's pipeline (UNAVAILABLE until the models are loaded)."""

    def __init__(self, engine: DetectorEngine) -> None:
        self.engine = engine

    def _ready(self) -> DetectionPipeline:
        return self.engine.require_ready()

    # ---- translation ------------------------------------------------------------------------------------------------

    def _models(self) -> pb.DetectorModels:
        ids = self._ready().detector.identities
        return pb.DetectorModels(**{role: model_identity(identity) for role, identity in ids.items()})

    def _member_info(self, member: MemberDescription) -> pb.MemberInfo:
        calibrated = member.member in self._ready().calibration.members
        return pb.MemberInfo(
            member=MEMBER_TO_PROTO[member.member],
            single_model=member.single_model,
            calibrated=calibrated,
            machine_label=member.machine_label,
            max_tokens=member.max_tokens,
            notes=list(member.notes),
        )

    def _calibration(self, method: str) -> pb.CalibrationInfo:
        cal = self._ready().calibration
        if method == METHOD_NONE:
            return pb.CalibrationInfo(calibrated=False, method=pb.CALIBRATION_METHOD_NONE)
        return pb.CalibrationInfo(calibrated=True, method=METHOD_TO_PROTO[method], version=cal.version, source=cal.source)

    @staticmethod
    def _detection(d: DetectionResult) -> pb.Detection:
        out = pb.Detection(
            index=d.index,
            criterion=d.criterion,
            perplexity=d.perplexity,
            token_count=d.token_count,
            truncated=d.truncated,
            cached=d.cached,
            tokens_scored=d.tokens_scored,
            reliable=d.reliability.reliable,
            unreliable_reason=REASON_TO_PROTO[d.reliability.reason],
            unreliable_detail=d.reliability.detail,
            log_likelihood=d.log_likelihood,
            log_rank=d.log_rank,
            entropy=d.entropy,
        )
        if d.probability is not None:
            out.probability = d.probability
        for m in d.members:
            score = out.member_scores.add(
                member=MEMBER_TO_PROTO[m.member], raw_score=m.raw_score, token_count=m.token_count, truncated=m.truncated
            )
            if m.probability is not None:
                score.probability = m.probability
        return out

    def _fill(self, response: Any, result: CallResult) -> Any:
        response.detections.extend(self._detection(d) for d in result.detections)
        response.models.CopyFrom(self._models())
        response.calibration.CopyFrom(self._calibration(result.method))
        response.members.extend(self._member_info(m) for m in result.members)
        return response

    # ---- RPCs -------------------------------------------------------------------------------------------------------

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        pipeline = self._ready()
        members = _members(request.members, "members")
        result = await pipeline.detect(
            list(request.texts), members=members, skip_cache=request.skip_cache, timeout=remaining_seconds(context)
        )
        return self._fill(pb.DetectResponse(), result)

    async def DetectStream(
        self, request_iterator: AsyncIterator[pb.DetectStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DetectStreamResponse]:
        pipeline = self._ready()
        pending: asyncio.Queue[asyncio.Future[CallResult] | None] = asyncio.Queue(maxsize=_STREAM_CHUNKS_IN_FLIGHT)

        async def read() -> None:
            index = 0
            try:
                async for request in request_iterator:
                    members = _members(request.members, "members")
                    task = asyncio.ensure_future(
                        pipeline.detect(
                            list(request.texts),
                            members=members,
                            skip_cache=request.skip_cache,
                            timeout=remaining_seconds(context),
                            field="texts",
                            first_index=index,
                        )
                    )
                    index += len(request.texts)
                    await pending.put(task)
            except Exception as err:  # a bad chunk ends the stream after the chunks before it were answered
                failed: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
                failed.set_exception(err)
                await pending.put(failed)
            await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                result = await task
                yield self._fill(pb.DetectStreamResponse(), result)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        pipeline = self._ready()
        cal = pipeline.calibration
        method = pipeline.method_for(pipeline.detector.enabled_members) if cal.calibrated else METHOD_NONE
        cfg = self.engine.config
        return pb.GetInfoResponse(
            models=self._models(),
            members=[self._member_info(m) for m in pipeline.detector.members],
            calibration=self._calibration(method),
            limits=pb.Limits(
                max_tokens=cfg.max_tokens,
                max_texts_per_call=cfg.max_texts_per_call,
                max_text_bytes=cfg.max_text_bytes,
                min_reliable_tokens=cfg.min_reliable_tokens,
                max_invisible_fraction=cfg.max_invisible_fraction,
            ),
            batching=batching_settings(pipeline.batcher.settings),
            cache_capacity=pipeline.memory.capacity,
            persistent_cache=pipeline.disk is not None,
        )
