"""The shared server runtime on port 0: health transitions, reflection, metrics, auth, error details, TLS, shutdown.

A small test servicer on the real detector contract drives each behaviour; the runtime is the code under test.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client import CollectorRegistry

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
from crucible.detector.config import DetectorConfig
from crucible.detector.servicer import SERVICE_DESCRIPTOR
from crucible.runtime.config import load_config
from crucible.runtime.errors import InvalidArgument, NotFound, parse_status_details
from crucible.runtime.logs import configure_logging
from crucible.runtime.server import CrucibleServer, create_server, unimplemented_servicer
from crucible.runtime.service import BaseService

SERVICE = SERVICE_DESCRIPTOR.full_name
log = logging.getLogger("tests.runtime")


class ScriptedDetector(pb_grpc.DetectorServiceServicer):
    """Behaves as the first text says: 'sleep:S', 'invalid', 'missing', 'boom', 'log', else echo one detection per text."""

    def __init__(self) -> None:
        self.finished = 0

    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        first = request.texts[0] if request.texts else ""
        if first.startswith("sleep:"):
            await asyncio.sleep(float(first.split(":")[1]))
        elif first == "invalid":
            raise InvalidArgument.field("texts[1]", "must not be empty", reason="EMPTY_TEXT")
        elif first == "missing":
            raise NotFound("no such thing")
        elif first == "boom":
            raise RuntimeError("secret internal detail")
        elif first == "log":
            log.info("handling a logged call")
        self.finished += 1
        return pb.DetectResponse(detections=[pb.Detection(index=i, token_count=len(t)) for i, t in enumerate(request.texts)])

    async def DetectStream(self, request_iterator, context):
        async for req in request_iterator:
            if not req.texts:
                raise InvalidArgument.field("texts", "must not be empty")
            yield pb.DetectStreamResponse(detections=[pb.Detection(token_count=len(t)) for t in req.texts])


class GatedService(BaseService):
    """A service whose start hook waits for a test to open the gate (models 'loading')."""

    def __init__(self, servicer: pb_grpc.DetectorServiceServicer) -> None:
        super().__init__("detector", [SERVICE], servicer, pb_grpc.add_DetectorServiceServicer_to_server)
        self.gate = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        await self.gate.wait()

    async def stop(self) -> None:
        self.stopped = True


async def _started(servicer=None, *, open_gate: bool = True, **settings) -> tuple[CrucibleServer, GatedService]:
    config = load_config(DetectorConfig, "detector", env={}, port=0, metrics_port=0, **settings)
    service = GatedService(servicer or ScriptedDetector())
    server, port = create_server(config, service, CollectorRegistry())
    assert port > 0
    await server.start()
    if open_gate:
        service.gate.set()
        await server.wait_ready(10)
    return server, service


async def _health(address: str, service: str = "", metadata=()) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5, metadata=metadata
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_health_not_serving_until_started_then_serving_then_not_serving_while_draining():
    server, service = await _started(open_gate=False, shutdown_drain_s=1.0)
    try:
        assert await _health(server.address) == "NOT_SERVING"
        assert await _health(server.address, SERVICE) == "NOT_SERVING"
        service.gate.set()
        await server.wait_ready(5)
        assert await _health(server.address) == "SERVING"
        assert await _health(server.address, SERVICE) == "SERVING"
        stopping = asyncio.create_task(server.stop(grace=1))
        await asyncio.sleep(0.3)
        assert await _health(server.address, SERVICE) == "NOT_SERVING"
        await stopping
        assert service.stopped
    finally:
        await server.stop(0)


async def test_health_watch_sees_not_serving_on_shutdown():
    server, _ = await _started()
    async with grpc.aio.insecure_channel(server.address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        first = await stream.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopper = asyncio.create_task(server.stop(grace=1))
        second = await stream.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopper


async def test_failed_start_hook_keeps_not_serving_and_is_reported():
    class Broken(GatedService):
        async def start(self) -> None:
            raise OSError("weights missing")

    config = load_config(DetectorConfig, "detector", env={}, port=0, metrics_enabled=False)
    server, _ = create_server(config, Broken(ScriptedDetector()), CollectorRegistry())
    await server.start()
    with pytest.raises(RuntimeError, match="weights missing"):
        await server.wait_ready(5)
    assert await _health(server.address) == "NOT_SERVING"
    await server.stop(0)


async def test_reflection_lists_service_health_and_reflection_and_describes_messages():
    server, _ = await _started()
    try:
        with grpc.insecure_channel(server.address) as channel:  # the reflection client helper is synchronous
            db = ProtoReflectionDescriptorDatabase(channel)
            services = await asyncio.to_thread(db.get_services)
            assert SERVICE in services
            assert "grpc.health.v1.Health" in services
            assert "grpc.reflection.v1alpha.ServerReflection" in services
            file_proto = await asyncio.to_thread(db.FindFileContainingSymbol, "crucible.detector.v1.DetectRequest")
            assert file_proto.package == "crucible.detector.v1"
    finally:
        await server.stop(0)


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_started_handled_by_code_and_latency():
    server, _ = await _started()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            await stub.Detect(pb.DetectRequest(texts=["a", "bb"]), timeout=5)
            await stub.Detect(pb.DetectRequest(texts=["a"]), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Detect(pb.DetectRequest(texts=["invalid"]), timeout=5)
            replies = [r async for r in stub.DetectStream(iter([pb.DetectStreamRequest(texts=["x"])] * 3), timeout=5)]
            assert len(replies) == 3
        text = await asyncio.to_thread(_metrics_text, server.metrics_port)
        common = {"grpc_service": SERVICE, "grpc_method": "Detect", "grpc_type": "unary"}
        assert _sample(text, "grpc_server_started_total", **common) == 3
        assert _sample(text, "grpc_server_handled_total", grpc_code="OK", **common) == 2
        assert _sample(text, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **common) == 1
        assert _sample(text, "grpc_server_handling_seconds_count", **common) == 3
        stream = {"grpc_service": SERVICE, "grpc_method": "DetectStream", "grpc_type": "bidi_stream"}
        assert _sample(text, "grpc_server_msg_received_total", **stream) == 3
        assert _sample(text, "grpc_server_msg_sent_total", **stream) == 3
        assert _sample(text, "grpc_server_handled_total", grpc_code="OK", **stream) == 1
    finally:
        await server.stop(0)


async def test_bearer_token_required_except_for_health():
    server, _ = await _started(auth_token="s3cret-token")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret-token"),)]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Detect(pb.DetectRequest(texts=["a"]), timeout=5, metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "s3cret" not in (err.value.details() or "")
            ok = await stub.Detect(pb.DetectRequest(texts=["a"]), timeout=5, metadata=(("authorization", "Bearer s3cret-token"),))
            assert len(ok.detections) == 1
        assert await _health(server.address) == "SERVING"
    finally:
        await server.stop(0)


async def test_domain_errors_carry_error_info_and_bad_request_and_server_keeps_serving(caplog):
    servicer = ScriptedDetector()
    server, _ = await _started(servicer)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(pb.DetectRequest(texts=["invalid", ""]), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            info, violations = parse_status_details(err.value)
            assert info is not None and info.reason == "EMPTY_TEXT" and info.domain == "detector.crucible"
            assert violations == [("texts[1]", "must not be empty")]

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(pb.DetectRequest(texts=["missing"]), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(pb.DetectRequest(texts=["boom"]), timeout=5, metadata=(("x-request-id", "req-42"),))
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "secret internal detail" not in err.value.details()
            assert "req-42" in err.value.details()
            info, _ = parse_status_details(err.value)
            assert info.reason == "INTERNAL" and info.metadata["request_id"] == "req-42"

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DetectStream(iter([pb.DetectStreamRequest()]), timeout=5).read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            reply = await stub.Detect(pb.DetectRequest(texts=["fine"]), timeout=5)
            assert reply.detections[0].token_count == 4
        assert await _health(server.address) == "SERVING"
    finally:
        await server.stop(0)


async def test_unbuilt_rpcs_answer_unimplemented_never_a_fake_success():
    placeholder = unimplemented_servicer(pb_grpc.DetectorServiceServicer, SERVICE_DESCRIPTOR, "test")
    server, _ = await _started(placeholder)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(pb.DetectRequest(texts=["a"]), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            info, _ = parse_status_details(err.value)
            assert info.reason == "NOT_IMPLEMENTED"
            # No request is written: the server answers at call start, so the status never races a client send
            # (writing first could surface the send's own failure, INTERNAL, instead of the server's status).
            call = stub.DetectStream(timeout=5)
            assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


async def test_request_id_is_echoed_and_stamped_on_json_log_lines():
    buffer = io.StringIO()
    configure_logging("detector", "INFO", "json", stream=buffer)
    try:
        server, _ = await _started()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                call = pb_grpc.DetectorServiceStub(channel).Detect(
                    pb.DetectRequest(texts=["log"]), timeout=5, metadata=(("x-request-id", "rid-7"),)
                )
                await call
                assert ("x-request-id", "rid-7") in tuple(await call.trailing_metadata())
                generated = pb_grpc.DetectorServiceStub(channel).Detect(pb.DetectRequest(texts=["a"]), timeout=5)
                await generated
                assert len(dict(await generated.trailing_metadata())["x-request-id"]) == 32
                failed = pb_grpc.DetectorServiceStub(channel).Detect(
                    pb.DetectRequest(texts=["invalid"]), timeout=5, metadata=(("x-request-id", "rid-8"),)
                )
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await failed
                assert ("x-request-id", "rid-8") in tuple(err.value.trailing_metadata())
        finally:
            await server.stop(0)
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    handled = [line for line in lines if line["msg"] == "handling a logged call"]
    assert handled and handled[0]["request_id"] == "rid-7" and handled[0]["service"] == "detector"


async def test_graceful_shutdown_lets_in_flight_calls_finish_and_refuses_new_ones():
    servicer = ScriptedDetector()
    server, _ = await _started(servicer)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.DetectorServiceStub(channel)
        slow = asyncio.ensure_future(stub.Detect(pb.DetectRequest(texts=["sleep:1.0"]), timeout=10))
        await asyncio.sleep(0.3)
        await server.stop(grace=5)
        reply = await slow
        assert len(reply.detections) == 1 and servicer.finished == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Detect(pb.DetectRequest(texts=["a"]), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_calls_past_the_grace_period_are_cancelled():
    servicer = ScriptedDetector()
    server, _ = await _started(servicer)
    async with grpc.aio.insecure_channel(server.address) as channel:
        slow = asyncio.ensure_future(
            pb_grpc.DetectorServiceStub(channel).Detect(pb.DetectRequest(texts=["sleep:30"]), timeout=60)
        )
        await asyncio.sleep(0.3)
        await asyncio.wait_for(server.stop(grace=0.5), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await slow
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert servicer.finished == 0


async def test_message_size_limit_rejects_large_requests_and_keeps_serving():
    server, _ = await _started(max_message_bytes=4096)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.DetectorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Detect(pb.DetectRequest(texts=["x" * 10000]), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len((await stub.Detect(pb.DetectRequest(texts=["x"]), timeout=5)).detections) == 1
    finally:
        await server.stop(0)


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "cert.pem", tmp_path / "key.pem", cert_pem


async def test_tls_serves_with_certificate_and_plaintext_clients_fail(tmp_path):
    cert, key, cert_pem = _self_signed(tmp_path)
    server, _ = await _started(tls_cert_file=str(cert), tls_key_file=str(key), metrics_enabled=False)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        async with grpc.aio.secure_channel(f"localhost:{server.port}", creds) as channel:
            reply = await pb_grpc.DetectorServiceStub(channel).Detect(pb.DetectRequest(texts=["a"]), timeout=5)
            assert len(reply.detections) == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _health(f"127.0.0.1:{server.port}")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
