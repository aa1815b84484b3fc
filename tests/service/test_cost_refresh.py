"""RefreshPrices against loopback fakes of Lambda `GET /instance-types` and RunPod GraphQL `gpuTypes`.

The fakes serve the real schemas and misbehave on demand (429, 5xx, timeouts, malformed bodies, GraphQL errors).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from crucible.api.cost.v1 import cost_service_pb2 as pb
from crucible.api.cost.v1 import offer_pb2
from tests.service.test_cost_service import cost_server
from tests.unit.test_cost_refresh import LAMBDA_BODY, RUNPOD_BODY

LAMBDA_KEY = "sk-lambda-SECRET-123"
RUNPOD_KEY = "rp-SECRET-456"
USER_CATALOG = (
    "provider,instance_type,gpu_name,gpu_count,gpu_memory_gib,region,price_usd_per_hour,billing_granularity,source,observed_at\n"
    "lambda,gpu_1x_a10,A10,1,24,us-east-1,0.50,per_minute,reserved contract,2026-10-01\n"
)


class FakeProviders:
    """One loopback HTTP server playing Lambda (/lambda/...) and RunPod (/runpod/graphql); `mode[provider]` picks behaviour."""

    def __init__(self) -> None:
        self.mode = {"lambda": "ok", "runpod": "ok"}
        self.requests: list[tuple[str, str, str, bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def _answer(self, provider: str, body: object) -> None:
                mode = fake.mode[provider]
                if mode == "timeout":
                    time.sleep(1.5)
                if mode == "429":
                    self._send(429, {"error": {"code": "global/rate-limited", "message": "slow down"}}, {"Retry-After": "7"})
                elif mode == "500":
                    self._send(503, {"error": {"code": "global/unavailable", "message": "maintenance"}})
                elif mode == "malformed":
                    self._send(200, None, raw=b"<html>gateway</html>")
                elif mode == "bad_key":  # an error body that echoes the key: it must not reach the caller
                    echoed = f"key {LAMBDA_KEY} {RUNPOD_KEY} bad"
                    self._send(401, {"error": {"code": "global/invalid-api-key", "message": echoed}})
                elif mode == "graphql_errors":
                    self._send(200, {"errors": [{"message": "Field 'gpuTypes' requires auth"}], "data": None})
                elif mode == "empty":
                    self._send(200, {"data": {}} if provider == "lambda" else {"data": {"gpuTypes": []}})
                else:
                    self._send(200, body)

            def _send(self, status: int, body: object, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, self.headers.get("Authorization", ""), b""))
                if self.path == "/lambda/instance-types":
                    self._answer("lambda", LAMBDA_BODY)
                else:
                    self._send(404, {"error": {"code": "not-found", "message": self.path}})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                fake.requests.append(("POST", self.path, self.headers.get("Authorization", ""), body))
                if self.path == "/runpod/graphql":
                    self._answer("runpod", RUNPOD_BODY)
                else:
                    self._send(404, {"errors": [{"message": "not found"}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    f = FakeProviders()
    yield f
    f.close()


def _settings(fake: FakeProviders, tmp_path) -> dict[str, object]:
    user = tmp_path / "user-catalog.csv"
    user.write_text(USER_CATALOG)
    return dict(
        lambda_api_url=f"{fake.url}/lambda",
        lambda_api_key=LAMBDA_KEY,
        runpod_api_url=f"{fake.url}/runpod/graphql",
        runpod_api_key=RUNPOD_KEY,
        refresh_timeout_s=0.5,
        user_catalog_file=str(user),
    )


async def _offers(stub, provider):
    reply = await stub.ListOffers(pb.ListOffersRequest(providers=[provider], spot_allowed=True), timeout=5)
    return {o.offer_id: o for o in reply.offers}


async def test_refresh_replaces_provider_prices_but_not_user_rows_and_keeps_last_good_on_failure(fake, tmp_path):
    async with cost_server(tmp_path, **_settings(fake, tmp_path)) as (_, stub):
        reply = await stub.RefreshPrices(pb.RefreshPricesRequest(), timeout=10)
        results = {r.provider: r for r in reply.results}
        assert [r.provider for r in reply.results] == sorted(results)
        assert {p for p, r in results.items() if r.outcome == pb.REFRESH_OUTCOME_NO_PRICE_API} == {
            "local",
            "modal",
            "paperspace",
            "replicate",
        }
        lam, rp = results["lambda"], results["runpod"]
        assert (lam.outcome, lam.offers_updated, lam.user_edited_rows_skipped, lam.error) == (
            pb.REFRESH_OUTCOME_REFRESHED,
            2,
            1,
            "",
        )
        assert (rp.outcome, rp.offers_updated, rp.user_edited_rows_skipped) == (pb.REFRESH_OUTCOME_REFRESHED, 3, 0)
        fetched_at = lam.prices_observed_at.ToDatetime()
        # The fakes saw the keys as Bearer tokens and the real GraphQL query.
        auth = {path: header for _, path, header, _ in fake.requests}
        assert auth == {"/lambda/instance-types": f"Bearer {LAMBDA_KEY}", "/runpod/graphql": f"Bearer {RUNPOD_KEY}"}
        query = json.loads(next(b for m, _, _, b in fake.requests if m == "POST"))["query"]
        assert "gpuTypes" in query and "lowestPrice(input: {gpuCount: 1})" in query

        lambda_offers = await _offers(stub, "lambda")
        assert set(lambda_offers) == {
            "lambda/gpu_1x_a10/us-east-1/on-demand",
            "lambda/gpu_1x_a10/us-west-1/on-demand",
            "lambda/gpu_8x_a100_80gb_sxm4//on-demand",
        }
        user_row = lambda_offers["lambda/gpu_1x_a10/us-east-1/on-demand"]
        assert (user_row.price_usd_per_hour, user_row.price_origin) == (0.50, offer_pb2.PRICE_ORIGIN_USER_CATALOG)
        live = lambda_offers["lambda/gpu_1x_a10/us-west-1/on-demand"]
        assert (live.price_usd_per_hour, live.price_origin, live.availability) == (
            0.75,
            offer_pb2.PRICE_ORIGIN_LIVE_API,
            offer_pb2.AVAILABILITY_AVAILABLE,
        )
        assert live.price_observed_at.ToDatetime() == fetched_at and live.vcpus == 30
        assert lambda_offers["lambda/gpu_8x_a100_80gb_sxm4//on-demand"].availability == offer_pb2.AVAILABILITY_UNAVAILABLE
        available = await stub.ListOffers(pb.ListOffersRequest(providers=["lambda"], exclude_unavailable=True), timeout=5)
        assert "lambda/gpu_8x_a100_80gb_sxm4//on-demand" not in {o.offer_id for o in available.offers}
        runpod_offers = await _offers(stub, "runpod")
        assert runpod_offers["runpod/NVIDIA A100 80GB PCIe//spot"].price_usd_per_hour == 0.82
        assert runpod_offers["runpod/NVIDIA L4//on-demand"].availability == offer_pb2.AVAILABILITY_LOW
        # A bundled offer that left the catalog still prices a running job.
        old = await stub.EstimateCost(
            pb.EstimateCostRequest(offer_id="lambda/gpu_1x_h100_pcie/us-east-1/on-demand", duration={"seconds": 3600}), timeout=5
        )
        assert old.low.compute_usd == pytest.approx(2.49)

        failures = {
            "429": "rate limited (HTTP 429, Retry-After 7s)",
            "500": "provider server error (HTTP 503)",
            "timeout": "timed out after 0.5s",
            "malformed": "malformed response: body is not JSON",
            "bad_key": "the API key was rejected (HTTP 401)",
            "empty": "no priced offers",
        }
        for mode, message in failures.items():
            fake.mode.update({"lambda": mode, "runpod": mode})
            reply = await stub.RefreshPrices(pb.RefreshPricesRequest(providers=["lambda", "RunPod"]), timeout=10)
            assert [r.provider for r in reply.results] == ["lambda", "runpod"]
            for r in reply.results:
                assert r.outcome == pb.REFRESH_OUTCOME_KEPT_LAST_GOOD, (mode, r)
                assert message in r.error, (mode, r.error)
                assert LAMBDA_KEY not in r.error and RUNPOD_KEY not in r.error
            assert reply.results[0].prices_observed_at.ToDatetime() == fetched_at
            assert await _offers(stub, "lambda") == lambda_offers
            assert await _offers(stub, "runpod") == runpod_offers
        fake.mode["runpod"] = "graphql_errors"
        reply = await stub.RefreshPrices(pb.RefreshPricesRequest(providers=["runpod"]), timeout=10)
        assert reply.results[0].error == "GraphQL error: Field 'gpuTypes' requires auth"

        code = None
        try:
            await stub.RefreshPrices(pb.RefreshPricesRequest(providers=["aws"]), timeout=5)
        except grpc.aio.AioRpcError as err:
            code = err.code()
        assert code == grpc.StatusCode.NOT_FOUND

    # Restart: the last good live prices come back from the state folder without contacting anyone.
    fake.mode.update({"lambda": "500", "runpod": "500"})
    async with cost_server(tmp_path, **_settings(fake, tmp_path)) as (_, stub):
        assert await _offers(stub, "lambda") == lambda_offers


async def test_refresh_without_keys_reports_and_keeps_the_catalog(fake, tmp_path):
    settings = _settings(fake, tmp_path)
    settings.update(lambda_api_key="", runpod_api_key="")
    async with cost_server(tmp_path, **settings) as (_, stub):
        before = await _offers(stub, "lambda")
        reply = await stub.RefreshPrices(pb.RefreshPricesRequest(providers=["lambda"]), timeout=5)
        (result,) = reply.results
        assert result.outcome == pb.REFRESH_OUTCOME_KEPT_LAST_GOOD
        assert "CRUCIBLE_COST_LAMBDA_API_KEY" in result.error
        assert await _offers(stub, "lambda") == before and fake.requests == []


async def test_refresh_rereads_the_user_catalog(fake, tmp_path):
    settings = _settings(fake, tmp_path)
    async with cost_server(tmp_path, **settings) as (_, stub):
        user = tmp_path / "user-catalog.csv"
        user.write_text(USER_CATALOG + "myco,box,H100,1,80,,1.23,per_second,quote,2026-11-02\n")
        fake.mode.update({"lambda": "500", "runpod": "500"})
        await stub.RefreshPrices(pb.RefreshPricesRequest(providers=["modal"]), timeout=5)
        assert (await _offers(stub, "myco"))["myco/box//on-demand"].price_usd_per_hour == 1.23
        user.write_text("provider,instance_type,price_usd_per_hour\nmyco,box,oops\n")  # broken edit: keep what we had
        await stub.RefreshPrices(pb.RefreshPricesRequest(providers=["modal"]), timeout=5)
        assert (await _offers(stub, "myco"))["myco/box//on-demand"].price_usd_per_hour == 1.23


async def test_background_refresh_loop_pulls_prices_without_a_call(fake, tmp_path):
    import asyncio

    settings = _settings(fake, tmp_path)
    settings.update(refresh_interval_s=0.2)
    async with cost_server(tmp_path, **settings) as (_, stub):
        for _ in range(100):  # wait (bounded) for the first background round
            offers = await _offers(stub, "runpod")
            if (
                "runpod/NVIDIA L4//on-demand" in offers
                and offers["runpod/NVIDIA L4//on-demand"].price_origin == offer_pb2.PRICE_ORIGIN_LIVE_API
            ):
                break
            await asyncio.sleep(0.05)
        assert offers["runpod/NVIDIA L4//on-demand"].price_usd_per_hour == 0.43
        assert any(path == "/lambda/instance-types" for _, path, _, _ in fake.requests)
