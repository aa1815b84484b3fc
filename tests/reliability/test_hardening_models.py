"""Issue 12 against the model services (detector, proposer, scorer) and the runtime they share: one large text,
malformed request bytes and invisible texts are refused cleanly, and a call is refused at once when it cannot be
served before its deadline, instead of queueing to time out.

Classes of the issue covered here: 4 (byte limits before any work, work stops when the caller is gone), 5 (admission
by expected wait), 8 (malformed bytes are INVALID_ARGUMENT with nothing internal; invisible texts count as empty).
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from google.protobuf import json_format

from crucible.runtime.errors import DeadlineExceeded, ResourceExhausted, parse_status_details
from tests.reliability.support import AUTH, SERVER_FAULTS, SERVING, Running, all_methods, health, request_class

BIG = "x" * (1 << 20)  # 1 MiB: far past every model service's per-text limit (32 KiB, the fleet's detector 4000 bytes)
INVISIBLE = "\u200b\u200f\ufeff\u202e\u2060\u00a0\u180e"  # zero-width space, RLM, BOM, RLO, word joiner, NBSP, MVS


def _method(service: str, name: str):
    return next(m for s, m in all_methods() if s == service and m.name == name)


def _call(fleet: dict[str, Running], service: str, name: str, fields: dict) -> grpc.RpcError | None:
    """One unary call built from JSON fields; the error it failed with, or None."""
    method = _method(service, name)
    message = json_format.ParseDict(fields, request_class(method)())
    path = f"/{method.containing_service.full_name}/{method.name}"
    with grpc.insecure_channel(fleet[service].address) as channel:
        stub = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b)
        try:
            stub(message, timeout=60, metadata=AUTH)
        except grpc.RpcError as err:
            assert health(channel, fleet[service].service) == SERVING
            return err
    return None


def _invalid(err: grpc.RpcError | None, field: str, reason: str) -> None:
    assert err is not None, "the request was accepted"
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    info, violations = parse_status_details(err)
    assert info is not None and info.reason == reason, (info, err.details())
    assert [f for f, _ in violations] == [field], violations


# ---- class 4: every text field of every model RPC has a byte limit, checked before any work ------------------------

PAIRS = [{"first": "The vote was postponed.", "second": "They delayed the vote."}] * 2
OVERSIZED = [
    ("detector", "Detect", {"texts": ["ok text one", "ok text two", BIG]}, "texts[2]"),
    (
        "proposer",
        "Propose",
        {
            "text": "Which gas do plants absorb?",
            "mode": "PROPOSE_MODE_EQUIVALENT_QUESTION",
            "options": ["Oxygen", "Carbon dioxide", BIG],
            "correct_option_index": 1,
        },
        "options[2]",
    ),
    (
        "proposer",
        "Propose",
        {"text": "How do vaccines work?", "mode": "PROPOSE_MODE_PARAPHRASE", "instruction": BIG},
        "instruction",
    ),
    ("proposer", "Embed", {"texts": ["a", "b", "c", "d", "e", BIG]}, "texts[5]"),
    (
        "proposer",
        "CheckEquivalence",
        {"pairs": [*PAIRS, {"first": "fine", "second": BIG}], "method": "EQUIVALENCE_METHOD_EMBEDDING_COSINE"},
        "pairs[2].second",
    ),
    (
        "scorer",
        "ScoreChoices",
        {
            "items": [{"raw_prompt": "Capital of France?", "choices": [" Paris", " Rome"]}] * 3
            + [{"raw_prompt": "Capital of Italy?", "choices": [" Rome", BIG]}]
        },
        "items[3].choices[1]",
    ),
    (
        "scorer",
        "ScoreChoices",
        {"items": [{"question": {"subject": "geo", "question": "Capital of France?", "options": ["Paris", BIG]}}]},
        "items[0].question.options[1]",
    ),
    ("scorer", "ScoreTexts", {"items": [{"text": "A fine text."}, {"text": "Paris.", "prefix": BIG}]}, "items[1].prefix"),
    ("scorer", "ScoreTexts", {"items": [{"text": BIG}]}, "items[0].text"),
]


@pytest.mark.parametrize(("service", "name", "fields", "field"), OVERSIZED, ids=[f"{s}.{n}.{f}" for s, n, _, f in OVERSIZED])
def test_one_large_text_is_refused_naming_its_field(
    fleet: dict[str, Running], service: str, name: str, fields: dict, field: str
) -> None:
    _invalid(_call(fleet, service, name, fields), field, "TEXT_TOO_LARGE")


def test_a_large_text_in_a_detect_stream_is_refused_naming_its_place_in_the_stream(fleet: dict[str, Running]) -> None:
    from crucible.api.detector.v1 import detector_service_pb2 as pb
    from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc

    chunks = [pb.DetectStreamRequest(texts=["first chunk text", "second text"]), pb.DetectStreamRequest(texts=["ok", BIG])]
    with grpc.insecure_channel(fleet["detector"].address) as channel, pytest.raises(grpc.RpcError) as err:
        list(pb_grpc.DetectorServiceStub(channel).DetectStream(iter(chunks), timeout=60, metadata=AUTH))
    _invalid(err.value, "texts[3]", "TEXT_TOO_LARGE")


async def test_the_texts_of_one_request_together_are_bounded(model_folders) -> None:
    """Texts each under the per-text limit but together over max_request_bytes: refused before tokenising."""
    from crucible.api.scorer.v1 import scorer_service_pb2 as pb
    from crucible.api.scorer.v1 import scorer_service_pb2_grpc as pb_grpc
    from tests.reliability.support import service_settings, start_service

    settings = {**service_settings("scorer", model_folders, None), "max_request_bytes": 6000}  # type: ignore[arg-type]
    running = await start_service("scorer", settings)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pb_grpc.ScorerServiceStub(channel)
            items = [pb.TextItem(text="word " * 500) for _ in range(3)]  # 2500 bytes each
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ScoreTexts(pb.ScoreTextsRequest(items=items), timeout=60)
            _invalid(err.value, "items[2].text", "REQUEST_TOO_LARGE")
            assert len((await stub.ScoreTexts(pb.ScoreTextsRequest(items=items[:2]), timeout=60)).scores) == 2
    finally:
        await running.server.stop(0)


TOKENISING = [
    (
        "detector",
        "Detect",
        {"texts": ["A text tokenised somewhere."]},
        lambda service: service.engine.require_ready().detector,
        "prepare",
    ),
    (
        "scorer",
        "ScoreTexts",
        {"items": [{"text": "A text tokenised somewhere."}]},
        lambda service: service.engine.require_ready().scorer,
        "prepare_texts",
    ),
    (
        "scorer",
        "ScoreChoices",
        {"items": [{"raw_prompt": "Capital of France?", "choices": [" Paris", " Rome"]}]},
        lambda service: service.engine.require_ready().scorer,
        "prepare_choices",
    ),
    (
        "proposer",
        "Propose",
        {"text": "How do vaccines work?", "mode": "PROPOSE_MODE_PARAPHRASE", "seed": 3},
        lambda service: service.engine,
        "render",
    ),
]


@pytest.mark.parametrize(
    ("service", "name", "fields", "owner", "attribute"), TOKENISING, ids=[f"{s}.{n}" for s, n, *_ in TOKENISING]
)
def test_tokenising_runs_off_the_event_loop(
    fleet: dict[str, Running], monkeypatch: pytest.MonkeyPatch, service: str, name: str, fields: dict, owner, attribute: str
) -> None:
    target = owner(fleet[service].server.service)
    original = getattr(target, attribute)
    threads: list[str] = []

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attribute, recording)
    assert _call(fleet, service, name, fields) is None
    assert threads and "reliability-servers" not in threads, threads  # the loop thread of the in-process servers


async def test_a_batch_whose_callers_are_gone_stops_between_steps() -> None:
    """A running batch is told when every caller has gone (deadline or cancel) and stops at its next step."""
    from crucible.runtime.batching import BatchCancelled, BatchSettings, DynamicBatcher

    steps: list[int] = []
    stopped = threading.Event()

    def run(items: list[str], cancel) -> list[str]:
        for step in range(200):
            if cancel.cancelled():
                stopped.set()
                raise BatchCancelled("callers gone")
            steps.append(step)
            time.sleep(0.01)
        return items

    batcher = DynamicBatcher("steps", run, BatchSettings(max_batch_size=4, max_batch_tokens=0, max_wait_s=0.0))
    batcher.start()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit("a"), 0.1)
        assert await asyncio.to_thread(stopped.wait, 10), "the batch kept computing for a caller that had gone"
        assert len(steps) < 100
        # The batcher keeps serving afterwards (this batch is shorter: nobody cancels it).
        steps.clear()
        assert await asyncio.wait_for(batcher.submit("b"), 30) == "b"
    finally:
        await batcher.stop()


def test_scorer_stops_multi_token_choices_once_its_callers_are_gone(model_folders) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crucible.runtime.batching import BatchCancel, BatchCancelled
    from crucible.scorer.scoring import ChoiceRequest, Limits, TargetScorer

    model = AutoModelForCausalLM.from_pretrained(model_folders["lm"])
    scorer = TargetScorer(model, AutoTokenizer.from_pretrained(model_folders["lm"]), Limits())
    jobs = [
        p.job for p in scorer.prepare_choices([ChoiceRequest(prompt="Name a city:", choices=(" Paris, France", " Rome, Italy"))])
    ]
    assert len(scorer.run_batch(jobs, BatchCancel())) == 1
    cancel = BatchCancel()
    cancel.set()
    with pytest.raises(BatchCancelled):
        scorer.run_batch(jobs, cancel)


# ---- class 5: admission by expected wait ---------------------------------------------------------------------------


async def test_a_call_that_cannot_finish_before_its_deadline_is_refused_at_once() -> None:
    """Queued tokens over measured tokens/s against each call's deadline: refused at once, with the numbers."""
    from crucible.runtime.batching import BatchSettings, DynamicBatcher

    def run(items: list[str]) -> list[str]:
        time.sleep(0.002 * sum(len(i) for i in items))  # 500 tokens/s
        return items

    batcher = DynamicBatcher(
        "paced", run, BatchSettings(max_batch_size=2, max_batch_tokens=0, max_wait_s=0.0, max_queue_size=1000), cost=len
    )
    batcher.start()
    try:
        await batcher.submit("m" * 50)  # the first measurement: ~500 tokens/s
        backlog = [asyncio.ensure_future(batcher.submit("b" * 100)) for _ in range(10)]  # ~2 s of work, no deadline
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        with pytest.raises(ResourceExhausted) as err:
            await batcher.submit("h" * 50, timeout=0.5)
        refused_after = time.perf_counter() - t0
        assert err.value.reason == "QUEUE_WAIT_EXCEEDS_DEADLINE"
        assert float(err.value.metadata["expected_wait_s"]) > float(err.value.metadata["deadline_s"]) == 0.5
        assert refused_after < 0.5  # refused before its deadline rather than left to expire in the queue
        # A call with room for the wait is admitted and served.
        assert await batcher.submit("p" * 10, timeout=60) == "p" * 10
        await asyncio.gather(*backlog)
    finally:
        await batcher.stop()


async def test_a_shared_in_flight_item_survives_its_first_caller_leaving() -> None:
    """Identical in-flight items share one computation; the first caller leaving must not fail the second."""
    from crucible.runtime.batching import BatchSettings, DynamicBatcher

    gate = threading.Event()

    def run(items: list[str]) -> list[str]:
        gate.wait(10)
        return [i.upper() for i in items]

    batcher = DynamicBatcher(
        "shared", run, BatchSettings(max_batch_size=1, max_batch_tokens=0, max_wait_s=0.0), dedup_key=lambda item: item
    )
    batcher.start()
    try:
        blocker = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.05)
        leaving = asyncio.ensure_future(batcher.submit("same"))
        staying = asyncio.ensure_future(batcher.submit("same"))
        await asyncio.sleep(0.05)
        leaving.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        assert await asyncio.wait_for(staying, 10) == "SAME"
        assert await blocker == "FIRST"
    finally:
        gate.set()
        await batcher.stop()


async def test_queued_items_still_expire_when_admission_cannot_tell() -> None:
    """Before any measurement admission by wait has no rate: deadlines are then enforced in the queue, as before."""
    from crucible.runtime.batching import BatchSettings, DynamicBatcher

    gate = threading.Event()
    batcher = DynamicBatcher(
        "cold", lambda items: (gate.wait(10), items)[1], BatchSettings(max_batch_size=1, max_batch_tokens=0, max_wait_s=0.0)
    )
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit("b", timeout=0.1)
        gate.set()
        assert await first == "a"
    finally:
        gate.set()
        await batcher.stop()


# ---- class 8: malformed request bytes, invisible texts ---------------------------------------------------------------

# Bytes no message can parse, whatever its fields: an unterminated tag, a field longer than the payload, wire type 7.
MALFORMED = {"unterminated tag": b"\xff\xff\xff\xff", "truncated field": b"\x0a\x05ab", "wire type 7": b"\x0f\x01"}


def _send_raw(channel: grpc.Channel, method, payload: bytes) -> None:
    """Send `payload` as the request bytes of `method` (one message for a stream) and read every answer."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    identity = {"request_serializer": None, "response_deserializer": None}
    if method.client_streaming:
        call = channel.stream_stream(path, **identity) if method.server_streaming else channel.stream_unary(path, **identity)
        result = call(iter([payload]), timeout=30, metadata=AUTH)
    else:
        call = channel.unary_stream(path, **identity) if method.server_streaming else channel.unary_unary(path, **identity)
        result = call(payload, timeout=30, metadata=AUTH)
    if method.server_streaming:
        list(result)


def _malformed(err: grpc.RpcError, method) -> None:
    assert err.code() not in SERVER_FAULTS, (method.full_name, err.code(), err.details())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.full_name, err.code(), err.details())
    assert err.details() == f"request is not a valid {method.input_type.full_name}", err.details()
    info, _ = parse_status_details(err)
    assert info is not None and info.reason == "MALFORMED_REQUEST"


@pytest.mark.parametrize("payload", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_request_bytes_are_invalid_argument_with_nothing_internal(fleet: dict[str, Running], payload: bytes) -> None:
    """Every RPC of all five services: INVALID_ARGUMENT naming the message, no Python class or parser text."""
    for service, method in all_methods():
        with grpc.insecure_channel(fleet[service].address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                _send_raw(channel, method, payload)
            _malformed(err.value, method)
            assert health(channel, fleet[service].service) == SERVING


@pytest.mark.parametrize(
    ("service", "name"), [("detector", "Detect"), ("detector", "DetectStream"), ("proposer", "Embed"), ("proposer", "Propose")]
)
def test_a_string_that_is_not_utf8_is_a_malformed_request(fleet: dict[str, Running], service: str, name: str) -> None:
    method = _method(service, name)
    assert method.input_type.fields_by_number[1].type == method.input_type.fields_by_number[1].TYPE_STRING
    with grpc.insecure_channel(fleet[service].address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _send_raw(channel, method, b"\x0a\x02\xff\xfe")  # field 1, two bytes that are not UTF-8
        _malformed(err.value, method)


BLANK = [
    ("detector", "Detect", {"texts": ["A real text here.", INVISIBLE]}, "texts[1]", "EMPTY_TEXT"),
    ("proposer", "Propose", {"text": INVISIBLE, "mode": "PROPOSE_MODE_PARAPHRASE"}, "text", "EMPTY_TEXT"),
    (
        "proposer",
        "Propose",
        {
            "text": "Which gas do plants absorb?",
            "mode": "PROPOSE_MODE_EQUIVALENT_QUESTION",
            "options": ["Oxygen", "\u200d\u200c", "Nitrogen"],
            "correct_option_index": 0,
        },
        "options[1]",
        "EMPTY_OPTION",
    ),
    ("proposer", "Embed", {"texts": ["fine", "\ufeff"]}, "texts[1]", "EMPTY_TEXT"),
    (
        "scorer",
        "ScoreChoices",
        {"items": [{"raw_prompt": "\u2066\u2069\u200b", "choices": [" A", " B"]}]},
        "items[0].raw_prompt",
        "EMPTY_PROMPT",
    ),
    (
        "scorer",
        "ScoreChoices",
        {"items": [{"raw_prompt": "Pick one:", "choices": [" A", "\u200b"]}]},
        "items[0].choices[1]",
        "EMPTY_CHOICE",
    ),
    (
        "scorer",
        "ScoreChoices",
        {"items": [{"question": {"subject": "geo", "question": "\u200b\u200b", "options": ["Paris", "Rome"]}}]},
        "items[0].question.question",
        "EMPTY_TEXT",
    ),
    ("scorer", "ScoreTexts", {"items": [{"text": "\u202a\u202c\u2060\u3164"}]}, "items[0].text", "EMPTY_TEXT"),
]


@pytest.mark.parametrize(("service", "name", "fields", "field", "reason"), BLANK, ids=[f"{s}.{n}.{f}" for s, n, _, f, _ in BLANK])
def test_a_text_of_only_invisible_characters_is_empty(
    fleet: dict[str, Running], service: str, name: str, fields: dict, field: str, reason: str
) -> None:
    _invalid(_call(fleet, service, name, fields), field, reason)


@pytest.mark.parametrize("method", ["EQUIVALENCE_METHOD_EMBEDDING_COSINE", "EQUIVALENCE_METHOD_NLI_ENTAILMENT"])
def test_two_invisible_texts_are_never_equivalent(fleet: dict[str, Running], method: str) -> None:
    err = _call(
        fleet, "proposer", "CheckEquivalence", {"pairs": [{"first": "\u200b\u200e", "second": "\ufeff\u2060"}], "method": method}
    )
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = parse_status_details(err)
    assert [f for f, _ in violations] == ["pairs[0].first", "pairs[0].second"]


# ---- class 5 against a real server: a burst of long Detect calls ----------------------------------------------------

BURST_CALLS = 200
BURST_DEADLINE_S = 6.0
# ~600 tokens with the tiny byte-level tokenizer: every text is scored at the server's 512-token limit.
BURST_TEXT = " ".join(f"clause {i} on the slow river, the quiet town and its café." for i in range(45))


class _RssSampler:
    """Samples a process's RSS every 20 ms in a thread; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        from tests.reliability.support import rss_bytes

        self._read = lambda: rss_bytes(pid)
        self.peak = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._read())

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.slow
async def test_a_burst_of_long_detect_calls_is_refused_at_once_not_left_to_time_out(model_folders, tmp_path) -> None:
    """200 concurrent 512-token Detect calls with deadlines the model cannot meet for all of them: what cannot be
    served in time is refused at once with RESOURCE_EXHAUSTED, what is admitted is served, and memory comes back."""
    from crucible.api.detector.v1 import detector_service_pb2 as pb
    from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
    from crucible.clients.health import wait_serving
    from tests.conftest import free_port_block
    from tests.reliability.support import ServiceProcess, child_env, rss_bytes, serve_command, wide_lm_folder

    port = free_port_block(1)
    model = wide_lm_folder(tmp_path / "wide-lm", model_folders["lm"])
    argv = serve_command(
        "detector",
        port,
        "--model",
        str(model),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-tokens",
        "512",
        "--max-batch-size",
        "8",
        "--max-queue-size",
        "2048",
        "--cache-size",
        "0",
    )
    proc = ServiceProcess(argv, tmp_path / "detector.log", child_env())
    try:
        await wait_serving(f"127.0.0.1:{port}", "crucible.detector.v1.DetectorService", timeout=180)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DetectorServiceStub(channel)

            async def one(i: int) -> tuple[grpc.StatusCode, str, float]:
                start = time.perf_counter()
                try:
                    await stub.Detect(pb.DetectRequest(texts=[f"{i}: {BURST_TEXT}"]), timeout=BURST_DEADLINE_S)
                    return grpc.StatusCode.OK, "", time.perf_counter() - start
                except grpc.aio.AioRpcError as err:
                    info, _ = parse_status_details(err)
                    return err.code(), info.reason if info else "", time.perf_counter() - start

            await one(-1)  # warm the channel
            idle = rss_bytes(proc.pid)
            with _RssSampler(proc.pid) as sampler:
                results = await asyncio.gather(*(one(i) for i in range(BURST_CALLS)))
            await asyncio.sleep(2.0)  # the batcher trims the heap once its queue has drained
            after = rss_bytes(proc.pid)
        codes = [c for c, _, _ in results]
        refused = [(r, t) for c, r, t in results if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
        served = codes.count(grpc.StatusCode.OK)
        late = codes.count(grpc.StatusCode.DEADLINE_EXCEEDED)
        slowest = max((t for c, _, t in results if c == grpc.StatusCode.OK), default=0.0)
        print(
            f"\nburst: {served} served (slowest {slowest:.1f} s), {len(refused)} refused, {late} past their deadline; RSS idle "
            f"{idle / 2**20:.0f} MiB, peak {sampler.peak / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB"
        )
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
        assert refused, "every call of the burst was admitted, more than the model can score before the deadline"
        assert {r for r, _ in refused} == {"QUEUE_WAIT_EXCEEDS_DEADLINE"}
        assert max(t for _, t in refused) < BURST_DEADLINE_S / 2, "refusals came late, not at once"
        # Admission did not refuse what the model could serve: what it admitted filled a good part of the deadline
        # (or even ran past it, when the machine slowed down after the calls were admitted).
        assert served + late >= 1 and (late or slowest > BURST_DEADLINE_S / 4), "admission refused what it could serve"
        assert late <= 0.1 * BURST_CALLS, f"{late} admitted calls still ran past their deadline"
        assert after - idle < 256 * 2**20, "the burst left the server far above its idle memory"
    finally:
        proc.stop()
