"""The SDK's channel layer against real runtime servers: retries from service config, round robin, metadata, pickling.

Servers run the scripted test servicer on the detector contract; the typed DetectorClient is the code under test.
"""

from __future__ import annotations

import asyncio
import pickle

import grpc
import pytest
from prometheus_client import CollectorRegistry

from crucible.api.detector.v1 import detector_service_pb2 as pb
from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc
from crucible.clients.channel import REQUEST_ID, ChannelConfig, service_config
from crucible.clients.detector import DetectorClient
from crucible.clients.mesh import Mesh, MeshConfig
from crucible.clients.sync import SyncMesh
from crucible.detector.config import DetectorConfig
from crucible.runtime.config import load_config
from crucible.runtime.errors import Unavailable
from crucible.runtime.server import create_server
from crucible.runtime.service import BaseService

SERVICE = "crucible.detector.v1.DetectorService"


class Recording(pb_grpc.DetectorServiceServicer):
    """Fails the first `fail_first` calls with UNAVAILABLE; records metadata; answers one detection per text."""

    def __init__(self, name: str, fail_first: int = 0) -> None:
        self.name = name
        self.fail_first = fail_first
        self.calls = 0
        self.metadata: list[dict[str, str]] = []

    async def Detect(self, request, context):
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if self.calls <= self.fail_first:
            raise Unavailable("warming up")
        return pb.DetectResponse(
            detections=[pb.Detection(index=i, criterion=float(len(t)), token_count=len(t)) for i, t in enumerate(request.texts)]
        )


async def _server(servicer, **settings):
    config = load_config(DetectorConfig, "detector", env={}, port=0, metrics_enabled=False, **settings)
    service = BaseService("detector", [SERVICE], servicer, pb_grpc.add_DetectorServiceServicer_to_server)
    server, port = create_server(config, service, CollectorRegistry())
    await server.start()
    await server.wait_ready(10)
    return server, port


async def test_typed_detect_returns_dataclasses_and_sends_request_id_and_token():
    servicer = Recording("a")
    server, port = await _server(servicer, auth_token="tok")
    try:
        async with DetectorClient(ChannelConfig((f"127.0.0.1:{port}",), token="tok")) as client:
            REQUEST_ID.set("trace-1")
            result = await client.detect(["ab", "abcd"])
            REQUEST_ID.set("")
        assert [d.token_count for d in result.detections] == [2, 4]
        assert result.detections[1].probability is None  # unset optional stays None, never 0.0
        assert servicer.metadata[0]["x-request-id"] == "trace-1"
        assert servicer.metadata[0]["authorization"] == "Bearer tok"
    finally:
        await server.stop(0)


async def test_unavailable_is_retried_by_the_channel_for_idempotent_methods():
    servicer = Recording("a", fail_first=2)
    server, port = await _server(servicer)
    try:
        async with DetectorClient(ChannelConfig((f"127.0.0.1:{port}",), max_attempts=4)) as client:
            result = await client.detect(["x"])
        assert len(result.detections) == 1 and servicer.calls == 3
    finally:
        await server.stop(0)


async def test_no_retries_when_disabled_surfaces_unavailable():
    servicer = Recording("a", fail_first=1)
    server, port = await _server(servicer)
    try:
        async with DetectorClient(ChannelConfig((f"127.0.0.1:{port}",), max_attempts=1)) as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.detect(["x"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 1
    finally:
        await server.stop(0)


async def test_several_addresses_are_balanced_round_robin():
    first, second = Recording("a"), Recording("b")
    (s1, p1), (s2, p2) = await _server(first), await _server(second)
    try:
        async with DetectorClient(ChannelConfig((f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"))) as client:
            for _ in range(10):
                await client.detect(["x"])
                await asyncio.sleep(0)
        assert first.calls > 0 and second.calls > 0 and first.calls + second.calls == 10
    finally:
        await s1.stop(0)
        await s2.stop(0)


def test_host_names_need_a_dns_target_for_balancing():
    with pytest.raises(ValueError, match="dns:///"):
        _ = ChannelConfig(("detector-a:50051", "detector-b:50051")).target
    assert ChannelConfig(("dns:///detector.svc:50051",)).target == "dns:///detector.svc:50051"


def test_service_config_retries_only_unavailable_on_idempotent_methods():
    import json

    config = json.loads(service_config("crucible.cost.v1.CostService", 4))
    policy = config["methodConfig"][0]
    assert policy["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    methods = {m["method"] for m in policy["name"]}
    assert "EstimateCost" in methods and "RefreshPrices" not in methods
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]


async def test_mesh_pickles_and_reconnects_lazily():
    servicer = Recording("a")
    server, port = await _server(servicer)
    try:
        mesh = Mesh(MeshConfig.from_mapping({"detector": {"addresses": [f"127.0.0.1:{port}"]}, "timeout_s": 5}))
        await mesh.detector.detect(["x"])
        clone = pickle.loads(pickle.dumps(mesh))
        assert (await clone.detector.detect(["yy"])).detections[0].token_count == 2
        await mesh.close()
        await clone.close()
    finally:
        await server.stop(0)


def test_env_config_reads_addresses_token_and_timeout():
    config = MeshConfig.from_env(
        {"CRUCIBLE_SCORER_ADDRESS": "127.0.0.1:1,127.0.0.1:2", "CRUCIBLE_CLIENT_TOKEN": "t", "CRUCIBLE_CLIENT_TIMEOUT_S": "7"}
    )
    scorer = config.services["scorer"]
    assert scorer.addresses == ("127.0.0.1:1", "127.0.0.1:2") and scorer.token == "t" and scorer.timeout_s == 7
    assert config.services["detector"].addresses == ("127.0.0.1:50051",)
    with pytest.raises(ValueError, match="unknown client setting"):
        MeshConfig.from_mapping({"tokne": "x"})


def test_sync_facade_blocks_and_returns_results():
    async def start():
        return await _server(Recording("a"))

    loop = asyncio.new_event_loop()
    server, port = loop.run_until_complete(start())
    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with SyncMesh(MeshConfig.from_mapping({"detector": {"addresses": [f"127.0.0.1:{port}"]}})) as mesh:
            result = mesh.detector.detect(["abc"])
        assert result.detections[0].token_count == 3
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_token_file_is_read_when_no_token_variable(tmp_path):
    token = tmp_path / "token"
    token.write_text("from-file\n")
    config = MeshConfig.from_env({"CRUCIBLE_CLIENT_TOKEN_FILE": str(token)})
    assert all(c.token == "from-file" for c in config.services.values())
    assert (
        MeshConfig.from_env({"CRUCIBLE_CLIENT_TOKEN": "direct", "CRUCIBLE_CLIENT_TOKEN_FILE": str(token)}).services["cost"].token
        == "direct"
    )
