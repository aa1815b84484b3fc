"""The detector server on port 0 with tiny random models saved as local folders: every RPC, errors, batching, caches.

Real server, real gRPC channel; no mocks. The models are random, so only structure and exact equalities are checked.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
from crucible.detector.calibration import CalibrationFile, fit_calibration
from crucible.detector.config import DetectorConfig
from crucible.detector.server import create_server
from crucible.runtime.config import load_config
from crucible.runtime.errors import parse_status_details
from tests.unit.test_detector_engine import tiny_classifier_folder, tiny_lm_folder

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Machine-written text tends to be fluent, plain and predictable.",
    "Numbers 0123456789 and accents: café, naïve, über.",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("detector-service-models")
    return {"lm": tiny_lm_folder(root / "tiny-lm"), "classifier": tiny_classifier_folder(root / "tiny-clf")}


async def _start(folders, **settings):
    base = dict(
        port=0,
        metrics_port=0,
        model=str(folders["lm"]),
        device="cpu",
        dtype="float32",
        max_tokens=64,
        max_texts_per_call=16,
        max_batch_tokens=4096,
        log_format="text",
    )
    base.update(settings)
    server, _ = create_server(load_config(DetectorConfig, "detector", env={}, **base))
    await server.start()
    await server.wait_ready(120)
    return server


@pytest.fixture(scope="module")
async def server(folders):
    srv = await _start(folders, classifier_model=str(folders["classifier"]), max_wait_ms=200.0)
    yield srv
    await srv.stop(0)


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield pb_grpc.DetectorServiceStub(channel)


def _metric(server, name: str, **labels: str) -> float:
    value = server.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_detect_returns_one_detection_per_text_in_order(stub, folders):
    reply = await stub.Detect(pb.DetectRequest(texts=TEXTS, skip_cache=True), timeout=30)
    assert [d.index for d in reply.detections] == [0, 1, 2]
    assert [m.member for m in reply.members] == [pb.MEMBER_FAST_DETECTGPT, pb.MEMBER_BINOCULARS, pb.MEMBER_CLASSIFIER]
    for d in reply.detections:
        assert d.token_count > 2 and d.perplexity > 1 and not d.truncated and not d.cached
        assert not d.HasField("probability")  # a tiny random model has no calibration: nothing is invented
        assert [s.member for s in d.member_scores] == [m.member for m in reply.members]
        assert d.member_scores[0].raw_score == d.criterion
        assert 0.0 <= d.member_scores[2].raw_score <= 1.0
        assert not any(s.HasField("probability") for s in d.member_scores)
    assert not reply.calibration.calibrated and reply.calibration.method == pb.CALIBRATION_METHOD_NONE
    assert reply.models.scoring.name == str(folders["lm"]) and reply.models.scoring.dtype == "float32"
    assert reply.models.sampling == reply.models.scoring == reply.models.observer == reply.models.performer
    assert reply.models.classifier.name == str(folders["classifier"])
    binoculars = reply.members[1]
    assert binoculars.single_model and any("one model for observer and performer" in n for n in binoculars.notes)
    assert reply.members[2].machine_label == "Fake"


async def test_members_select_what_is_computed(stub):
    reply = await stub.Detect(pb.DetectRequest(texts=TEXTS[:1], members=[pb.MEMBER_CLASSIFIER]), timeout=30)
    assert [m.member for m in reply.members] == [pb.MEMBER_FAST_DETECTGPT, pb.MEMBER_CLASSIFIER]
    assert len(reply.detections[0].member_scores) == 2


async def test_get_info_describes_models_limits_and_batching(stub):
    info = await stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert [m.member for m in info.members] == [pb.MEMBER_FAST_DETECTGPT, pb.MEMBER_BINOCULARS, pb.MEMBER_CLASSIFIER]
    assert info.limits.max_tokens == 64 and info.limits.max_texts_per_call == 16
    assert info.batching.max_batch_tokens == 4096 and info.batching.max_wait.ToMilliseconds() == 200
    assert info.cache_capacity > 0 and not info.persistent_cache
    assert not info.calibration.calibrated


@pytest.mark.parametrize(
    ("request_", "field", "reason"),
    [
        (pb.DetectRequest(), "texts", "NO_TEXTS"),
        (pb.DetectRequest(texts=["fine text", "  \n "]), "texts[1]", "EMPTY_TEXT"),
        (pb.DetectRequest(texts=["fine text"] * 17), "texts", "TOO_MANY_TEXTS"),
        (pb.DetectRequest(texts=["fine text", "ok", "esc \x1b[31m"]), "texts[2]", "CONTROL_CHARACTER"),
        (pb.DetectRequest(texts=["x" * 300000]), "texts[0]", "TEXT_TOO_LARGE"),
        (pb.DetectRequest(texts=["fine text"], members=[pb.MEMBER_UNSPECIFIED]), "members[0]", "INVALID_MEMBER"),
        (pb.DetectRequest(texts=["fine text"], members=[pb.MEMBER_BINOCULARS, 7]), "members[1]", "INVALID_MEMBER"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(stub, request_, field, reason):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(request_, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = parse_status_details(err.value)
    assert info.reason == reason and violations[0][0] == field
    # The server keeps serving everyone else.
    reply = await stub.Detect(pb.DetectRequest(texts=["Still serving after a bad call."]), timeout=30)
    assert len(reply.detections) == 1


async def test_concurrent_calls_share_batches_and_results_do_not_depend_on_batching(server, stub):
    texts = [f"Concurrent text number {i} about the quick brown fox." for i in range(12)]
    alone = [(await stub.Detect(pb.DetectRequest(texts=[t], skip_cache=True), timeout=30)).detections[0] for t in texts[:2]]
    batches_before = _metric(server, "crucible_batcher_batch_size_count", batcher="detector")
    replies = await asyncio.gather(
        *(stub.Detect(pb.DetectRequest(texts=texts[i : i + 2], skip_cache=True), timeout=30) for i in range(0, 12, 2))
    )
    batches = _metric(server, "crucible_batcher_batch_size_count", batcher="detector") - batches_before
    assert 1 <= batches < 6  # six calls, fewer forward passes
    together = [d for r in replies for d in r.detections]
    assert [d.index for d in together] == [0, 1] * 6
    for a, b in zip(alone, together[:2], strict=True):
        assert b.criterion == pytest.approx(a.criterion, rel=1e-4, abs=1e-5)


async def test_second_call_is_served_from_the_cache(server, stub):
    text = ["A text that is scored twice, the second time from the cache."]
    first = await stub.Detect(pb.DetectRequest(texts=text), timeout=30)
    hits_before = _metric(server, "crucible_detector_cache_lookups_total", tier="memory", outcome="hit")
    second = await stub.Detect(pb.DetectRequest(texts=text), timeout=30)
    fresh = await stub.Detect(pb.DetectRequest(texts=text, skip_cache=True), timeout=30)
    assert not first.detections[0].cached and second.detections[0].cached and not fresh.detections[0].cached
    assert second.detections[0].criterion == first.detections[0].criterion
    assert _metric(server, "crucible_detector_cache_lookups_total", tier="memory", outcome="hit") == hits_before + 1
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for name in (
        "crucible_batcher_queue_depth",
        "crucible_batcher_queue_wait_seconds",
        "crucible_batcher_compute_seconds",
        "crucible_detector_cache_lookups_total",
    ):
        assert name in body


async def test_stream_answers_each_chunk_in_order_with_stream_wide_indices(stub):
    chunks = [
        pb.DetectStreamRequest(texts=TEXTS),
        pb.DetectStreamRequest(texts=TEXTS[:2]),
        pb.DetectStreamRequest(texts=TEXTS[2:], members=[pb.MEMBER_BINOCULARS]),
    ]
    replies = [r async for r in stub.DetectStream(iter(chunks), timeout=60)]
    assert [[d.index for d in r.detections] for r in replies] == [[0, 1, 2], [3, 4], [5]]
    assert [m.member for m in replies[2].members] == [pb.MEMBER_FAST_DETECTGPT, pb.MEMBER_BINOCULARS]
    assert replies[1].detections[0].criterion == pytest.approx(replies[0].detections[0].criterion, rel=1e-4)


async def test_stream_ends_with_invalid_argument_naming_the_stream_index(stub):
    chunks = [pb.DetectStreamRequest(texts=TEXTS), pb.DetectStreamRequest(texts=["fine text", " "])]
    call = stub.DetectStream(iter(chunks), timeout=60)
    first = await call.read()
    assert [d.index for d in first.detections] == [0, 1, 2]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert parse_status_details(err.value)[1][0][0] == "texts[4]"


async def test_full_queue_is_resource_exhausted_at_once_and_calibration_file_applies(folders, tmp_path):
    entry = fit_calibration(
        [{"fast_detectgpt": -1.0 + 0.1 * i, "binoculars": 1.0 + 0.01 * i} for i in range(10)],
        [{"fast_detectgpt": 1.0 + 0.1 * i, "binoculars": 0.9 - 0.01 * i} for i in range(10)],
        members=["fast_detectgpt", "binoculars"],
        sampling=(str(folders["lm"]), ""),
        scoring=(str(folders["lm"]), ""),
        version="tiny-1",
    )
    cal_path = tmp_path / "cal.json"
    CalibrationFile("tiny-1", str(cal_path), (entry,)).write(cal_path)
    # min_reliable_tokens=0: these short texts get probabilities here (test_detector_reliability.py covers the minimum).
    srv = await _start(
        folders, max_queue_size=4, calibration_file=str(cal_path), cache_path=str(tmp_path / "c.sqlite"), min_reliable_tokens=0
    )
    try:
        async with grpc.aio.insecure_channel(srv.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(pb.DetectRequest(texts=[f"queued text {i}" for i in range(5)]), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert parse_status_details(err.value)[0].reason == "QUEUE_FULL"
            reply = await stub.Detect(pb.DetectRequest(texts=TEXTS), timeout=30)
            assert reply.calibration.method == pb.CALIBRATION_METHOD_LOGISTIC_ENSEMBLE
            assert reply.calibration.version == "tiny-1" and reply.calibration.source == str(cal_path)
            for d in reply.detections:
                assert 0.0 <= d.probability <= 1.0
                assert all(s.HasField("probability") for s in d.member_scores)
            only = await stub.Detect(pb.DetectRequest(texts=TEXTS[:1], members=[pb.MEMBER_FAST_DETECTGPT]), timeout=30)
            assert only.calibration.method == pb.CALIBRATION_METHOD_TWO_GAUSSIAN
            assert only.detections[0].probability == only.detections[0].member_scores[0].probability
    finally:
        await srv.stop(0)
    # The SQLite cache survives the restart.
    again = await _start(folders, cache_path=str(tmp_path / "c.sqlite"))
    try:
        async with grpc.aio.insecure_channel(again.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            info = await stub.GetInfo(pb.GetInfoRequest(), timeout=10)
            assert info.persistent_cache
            reply = await stub.Detect(pb.DetectRequest(texts=TEXTS), timeout=30)
            assert all(d.cached for d in reply.detections)
            assert [d.criterion for d in reply.detections] == pytest.approx(
                [d.criterion for d in (await stub.Detect(pb.DetectRequest(texts=TEXTS, skip_cache=True), timeout=30)).detections],
                rel=1e-5,
            )
    finally:
        await again.stop(0)


async def test_expired_deadline_fails_the_call_and_the_server_keeps_serving(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(pb.DetectRequest(texts=[f"deadline text {i}" for i in range(16)], skip_cache=True), timeout=0.001)
    # Either the deadline passes first, or admission sees at once that 16 texts cannot be scored in 1 ms and refuses.
    assert err.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    if err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert parse_status_details(err.value)[0].reason == "QUEUE_WAIT_EXCEEDS_DEADLINE"
    reply = await stub.Detect(pb.DetectRequest(texts=["After a deadline."]), timeout=30)
    assert len(reply.detections) == 1


def test_help_names_the_detector_settings(capsys):
    from crucible.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "detector", "--help"])
    out = capsys.readouterr().out
    for flag in ("--sampling-model", "--classifier-model", "--calibration-file", "--cache-path", "--max-wait-ms"):
        assert flag in out


async def test_the_likelihood_member_reaches_grpc_and_the_sdk(folders, tmp_path):
    """A second causal model (its own tokenizer): MEMBER_LIKELIHOOD with its own token count, the `likelihood` model
    role in DetectorModels and GetInfo, and the SDK's member and model names."""
    from crucible.clients.channel import ChannelConfig
    from crucible.clients.detector import DetectorClient

    companion = tiny_lm_folder(tmp_path / "companion", seed=5, vocab=350)
    srv = await _start(folders, likelihood_model=str(companion))
    try:
        async with grpc.aio.insecure_channel(srv.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            reply = await stub.Detect(pb.DetectRequest(texts=TEXTS), timeout=60)
            info = await stub.GetInfo(pb.GetInfoRequest(), timeout=30)
        want = [pb.MEMBER_FAST_DETECTGPT, pb.MEMBER_BINOCULARS, pb.MEMBER_LIKELIHOOD]
        assert [m.member for m in reply.members] == want and [m.member for m in info.members] == want
        assert reply.models.likelihood.name == str(companion) and info.models.likelihood.name == str(companion)
        scores = [{s.member: s for s in d.member_scores}[pb.MEMBER_LIKELIHOOD] for d in reply.detections]
        assert all(s.raw_score < 0 for s in scores)  # a mean log-probability
        assert any(s.token_count != d.token_count for s, d in zip(scores, reply.detections, strict=True))
        async with DetectorClient(ChannelConfig((srv.address,))) as client:
            result = await client.detect(TEXTS[:1])
        assert result.models["likelihood"]["name"] == str(companion)
        assert result.detections[0].members["likelihood"].raw_score == pytest.approx(scores[0].raw_score)
    finally:
        await srv.stop(0)
