"""Detections say how much evidence they rest on: tokens scored, reliable or not and why, and the by-products.

The detector server on port 0 with a tiny random model and a calibration file, so probabilities exist to withhold.
"""

from __future__ import annotations

import math

import grpc
import pytest

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
from crucible.clients.detector import _detection
from crucible.detector.calibration import CalibrationFile, fit_calibration
from crucible.detector.reliability import DEFAULT_MIN_RELIABLE_TOKENS
from tests.service.test_detector_service import _start, folders  # noqa: F401  (folders is a fixture)

SHORT = "The quick brown fox jumps over the lazy dog."
LONG = (
    "The farmer watched the fox from his porch every evening, and every evening the fox watched him back. "
    "Neither of them moved until the light was gone and the crickets had started their long slow song."
)


@pytest.fixture(scope="module")
async def stub(folders, tmp_path_factory):  # noqa: F811
    entry = fit_calibration(
        [{"fast_detectgpt": -1.0 + 0.1 * i, "binoculars": 1.0 + 0.01 * i} for i in range(10)],
        [{"fast_detectgpt": 1.0 + 0.1 * i, "binoculars": 0.9 - 0.01 * i} for i in range(10)],
        members=["fast_detectgpt", "binoculars"],
        sampling=(str(folders["lm"]), ""),
        scoring=(str(folders["lm"]), ""),
        version="tiny-reliability",
    )
    cal_path = tmp_path_factory.mktemp("cal") / "cal.json"
    CalibrationFile("tiny-reliability", str(cal_path), (entry,)).write(cal_path)
    srv = await _start(folders, calibration_file=str(cal_path), max_tokens=256)
    async with grpc.aio.insecure_channel(srv.address) as channel:
        yield pb_grpc.DetectorServiceStub(channel)
    await srv.stop(0)


async def test_short_text_is_scored_but_its_probability_is_withheld_with_a_reason(stub):
    reply = await stub.Detect(pb.DetectRequest(texts=[SHORT, LONG], skip_cache=True), timeout=60)
    short, long = reply.detections
    assert short.tokens_scored == short.token_count - 1 < DEFAULT_MIN_RELIABLE_TOKENS
    assert not short.reliable and short.unreliable_reason == pb.UNRELIABLE_REASON_TOO_FEW_TOKENS
    assert f"{short.tokens_scored} token(s) scored" in short.unreliable_detail
    assert not short.HasField("probability") and not any(m.HasField("probability") for m in short.member_scores)
    assert math.isfinite(short.criterion) and short.member_scores  # the raw scores stay
    assert long.tokens_scored >= DEFAULT_MIN_RELIABLE_TOKENS
    assert long.reliable and long.unreliable_reason == pb.UNRELIABLE_REASON_UNSPECIFIED and not long.unreliable_detail
    assert 0.0 <= long.probability <= 1.0 and all(m.HasField("probability") for m in long.member_scores)
    # The SDK dataclass carries the same.
    sdk = _detection(short)
    assert (sdk.reliable, sdk.unreliable_reason, sdk.probability) == (False, "too_few_tokens", None)
    assert sdk.tokens_scored == short.tokens_scored


async def test_invisible_heavy_text_is_flagged_even_when_long(stub):
    spiked = "\u200b".join(LONG)  # a zero-width space between every two characters
    [d] = (await stub.Detect(pb.DetectRequest(texts=[spiked]), timeout=60)).detections
    assert d.tokens_scored >= DEFAULT_MIN_RELIABLE_TOKENS
    assert not d.reliable and d.unreliable_reason == pb.UNRELIABLE_REASON_INVISIBLE_CHARACTERS
    assert not d.HasField("probability") and "invisible" in d.unreliable_detail


async def test_by_products_are_fields_of_each_detection(stub):
    [d] = (await stub.Detect(pb.DetectRequest(texts=[LONG]), timeout=60)).detections
    assert d.log_likelihood == pytest.approx(-math.log(d.perplexity), rel=1e-4)
    assert d.log_rank >= 0.0 and d.entropy > 0.0
    info = await stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert info.limits.min_reliable_tokens == DEFAULT_MIN_RELIABLE_TOKENS
    assert 0.0 < info.limits.max_invisible_fraction < 1.0
