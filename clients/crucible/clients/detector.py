"""Typed async client of crucible.detector.v1.DetectorService: Detect and streaming detection as dataclasses.

`probability` is None when the model pair has no calibration or the detection is not `reliable` (too few tokens,
mostly invisible characters): the service never invents one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
from crucible.clients.base import ServiceClient, model_dict, optional_field

MEMBERS = {
    "fast_detectgpt": pb.MEMBER_FAST_DETECTGPT,
    "binoculars": pb.MEMBER_BINOCULARS,
    "classifier": pb.MEMBER_CLASSIFIER,
    "likelihood": pb.MEMBER_LIKELIHOOD,
}
_MEMBER_NAMES = {v: k for k, v in MEMBERS.items()}
#: Detection.unreliable_reason as a short name ("" when the detection is reliable).
UNRELIABLE_REASONS = {
    pb.UNRELIABLE_REASON_UNSPECIFIED: "",
    pb.UNRELIABLE_REASON_TOO_FEW_TOKENS: "too_few_tokens",
    pb.UNRELIABLE_REASON_INVISIBLE_CHARACTERS: "invisible_characters",
}


@dataclasses.dataclass(frozen=True)
class MemberScore:
    """One ensemble member's score of a text."""

    member: str
    raw_score: float
    probability: float | None
    token_count: int
    truncated: bool


@dataclasses.dataclass(frozen=True)
class Detection:
    """How machine-written one text looks: criterion (higher = more machine-like) and, when calibrated, P(machine).

    `reliable` is False (and `probability` None) when `tokens_scored` is below the service's minimum or the text is
    mostly invisible characters; `unreliable_reason` ("too_few_tokens", "invisible_characters") and
    `unreliable_detail` say why. `log_likelihood`, `log_rank` and `entropy` are per-scored-token means of the pass.
    """

    index: int
    criterion: float
    probability: float | None
    perplexity: float
    token_count: int
    truncated: bool
    cached: bool
    members: dict[str, MemberScore]
    tokens_scored: int = 0
    reliable: bool = True
    unreliable_reason: str = ""
    unreliable_detail: str = ""
    log_likelihood: float = 0.0
    log_rank: float = 0.0
    entropy: float = 0.0


@dataclasses.dataclass(frozen=True)
class DetectResult:
    """Detections in request order plus the models and calibration that produced them."""

    detections: list[Detection]
    models: dict[str, dict[str, str]]
    calibrated: bool
    calibration_version: str


def _detection(d: pb.Detection) -> Detection:
    members = {
        _MEMBER_NAMES.get(m.member, str(m.member)): MemberScore(
            _MEMBER_NAMES.get(m.member, str(m.member)),
            m.raw_score,
            optional_field(m, "probability"),
            m.token_count,
            m.truncated,
        )
        for m in d.member_scores
    }
    return Detection(
        d.index,
        d.criterion,
        optional_field(d, "probability"),
        d.perplexity,
        d.token_count,
        d.truncated,
        d.cached,
        members,
        tokens_scored=d.tokens_scored,
        reliable=d.reliable,
        unreliable_reason=UNRELIABLE_REASONS.get(d.unreliable_reason, str(d.unreliable_reason)),
        unreliable_detail=d.unreliable_detail,
        log_likelihood=d.log_likelihood,
        log_rank=d.log_rank,
        entropy=d.entropy,
    )


def _result(reply: pb.DetectResponse | pb.DetectStreamResponse) -> DetectResult:
    models = {
        role: model_dict(getattr(reply.models, role))
        for role in ("sampling", "scoring", "observer", "performer", "classifier", "likelihood")
        if reply.models.HasField(role)
    }
    return DetectResult(
        [_detection(d) for d in reply.detections], models, reply.calibration.calibrated, reply.calibration.version
    )


def _members(members: Sequence[str]) -> list[pb.Member.ValueType]:
    unknown = [m for m in members if m not in MEMBERS]
    if unknown:
        raise ValueError(f"unknown detector member(s) {unknown}; choose from {sorted(MEMBERS)}")
    return [MEMBERS[m] for m in members]


class DetectorClient(ServiceClient["pb_grpc.DetectorServiceAsyncStub"]):  # the aio stub type (type-checking only)
    """Client of the detector service."""

    SERVICE = "crucible.detector.v1.DetectorService"
    STUB = pb_grpc.DetectorServiceStub

    async def detect(
        self, texts: Sequence[str], *, members: Sequence[str] = (), skip_cache: bool = False, timeout: float | None = None
    ) -> DetectResult:
        """Score `texts` (one call; the service batches concurrent calls together)."""
        request = pb.DetectRequest(texts=list(texts), members=_members(members), skip_cache=skip_cache)
        return _result(await self.stub.Detect(request, timeout=self.timeout(timeout)))

    async def detect_stream(
        self, chunks: Iterable[Sequence[str]], *, members: Sequence[str] = (), timeout: float | None = None
    ) -> AsyncIterator[DetectResult]:
        """Stream large sets: one result per chunk of texts, in order; indexes count across the whole stream."""
        member_ids = _members(members)
        requests = (pb.DetectStreamRequest(texts=list(chunk), members=member_ids) for chunk in chunks)
        async for reply in self.stub.DetectStream(requests, timeout=self.timeout(timeout)):
            yield _result(reply)

    async def info(self, *, timeout: float | None = None) -> pb.GetInfoResponse:
        """The service's models, members, calibration and limits (the raw message: it is descriptive)."""
        return await self.stub.GetInfo(pb.GetInfoRequest(), timeout=self.timeout(timeout))
