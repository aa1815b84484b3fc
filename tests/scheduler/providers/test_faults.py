"""The shared HTTP client against a loopback server: retries on 429 (Retry-After) and 5xx, timeouts, malformed bodies.

Every failure must end as the right ProviderErrorKind, and no credential may appear in any error or log line.
"""

from __future__ import annotations

import logging

import pytest

from crucible.scheduler.providers.base import ProviderError
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.http import ProviderHTTP, RetryPolicy
from tests.fakes.server import FakeServer, Fault, Request, Response

KEY = "pk-secret-31337-abcdef"


def echo(r: Request) -> Response:
    if r.headers.get("authorization") != f"Bearer {KEY}":
        return Response.json({"message": f"bad key {r.headers.get('authorization')}"}, 401)
    return Response.json({"ok": True, "path": r.path})


@pytest.fixture
async def server():
    s = await FakeServer(echo).start()
    yield s
    await s.close()


def client(server: FakeServer, *, timeout_s: float = 5.0, retries: int = 3, key: str = KEY) -> ProviderHTTP:
    store = SecretStore(env={"LAMBDA_API_KEY": key})
    return ProviderHTTP(
        "lambda",
        server.url,
        store.get("lambda", "api_key"),
        store,
        timeout_s=timeout_s,
        retry=RetryPolicy(max_retries=retries, base_s=0.01, max_s=0.05, max_retry_after_s=2.0),
    )


async def test_429_with_retry_after_is_retried_then_succeeds(server):
    server.fault(Fault.rate_limited("0"), path="/x", times=2)
    http = client(server)
    assert (await http.request("GET", "/x")) == {"ok": True, "path": "/x"}
    assert server.count("GET", "/x") == 3 and http.retries == 2
    await http.aclose()


async def test_persistent_429_ends_transient_with_retry_after(server):
    server.fault(Fault.rate_limited("1"), path="/x", times=10)
    http = client(server, retries=2)
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    http._sleep = fake_sleep
    with pytest.raises(ProviderError) as info:
        await http.request("GET", "/x")
    assert info.value.kind is K.TRANSIENT and info.value.status == 429 and info.value.retry_after_s == 1.0
    assert sleeps == [1.0, 1.0]  # Retry-After honoured, not the (shorter) backoff
    await http.aclose()


async def test_retry_after_longer_than_allowed_stops_at_once(server):
    server.fault(Fault.rate_limited("3600"), path="/x", times=10)
    http = client(server)
    with pytest.raises(ProviderError) as info:
        await http.request("GET", "/x")
    assert info.value.kind is K.TRANSIENT and info.value.retry_after_s == 3600.0
    assert server.count("GET", "/x") == 1
    await http.aclose()


async def test_5xx_is_retried_for_idempotent_calls_only(server):
    server.fault(Fault.server_error(503), path="/x", times=1)
    http = client(server)
    assert (await http.request("GET", "/x"))["ok"] is True
    server.fault(Fault.server_error(502), path="/launch", times=1)
    with pytest.raises(ProviderError) as info:
        await http.request("POST", "/launch", json_body={}, idempotent=False)
    assert info.value.kind is K.TRANSIENT and info.value.status == 502
    assert server.count("POST", "/launch") == 1  # a launch that may have happened is never blindly repeated
    server.fault(Fault.server_error(500), path="/y", times=10)
    with pytest.raises(ProviderError) as info:
        await http.request("GET", "/y")
    assert info.value.kind is K.TRANSIENT and server.count("GET", "/y") == 4
    await http.aclose()


async def test_429_is_retried_even_for_launches(server):
    server.fault(Fault.rate_limited("0"), path="/launch", times=1)
    http = client(server)
    assert (await http.request("POST", "/launch", json_body={}, idempotent=False))["ok"] is True
    await http.aclose()


async def test_hang_times_out_as_transient(server):
    server.fault(Fault.hang(30), path="/slow", times=10)
    http = client(server, timeout_s=0.3, retries=1)
    with pytest.raises(ProviderError) as info:
        await http.request("GET", "/slow")
    assert info.value.kind is K.TRANSIENT and "timed out" in str(info.value)
    assert server.count("GET", "/slow") == 2
    await http.aclose()


async def test_dropped_connection_and_refused_port_are_transient(server):
    server.fault(Fault.dropped(), path="/drop", times=10)
    http = client(server, retries=1)
    with pytest.raises(ProviderError) as info:
        await http.request("GET", "/drop")
    assert info.value.kind is K.TRANSIENT
    await http.aclose()
    closed = FakeServer(echo)
    await closed.start()
    port = closed.port
    await closed.close()
    store = SecretStore(env={"LAMBDA_API_KEY": KEY})
    http = ProviderHTTP(
        "lambda", f"http://127.0.0.1:{port}", store.get("lambda", "api_key"), store, retry=RetryPolicy(max_retries=1, base_s=0.01)
    )
    with pytest.raises(ProviderError) as info:
        await http.request("POST", "/launch", idempotent=False)
    assert info.value.kind is K.TRANSIENT and "cannot connect" in str(info.value)
    await http.aclose()


async def test_malformed_body_is_malformed_response(server):
    server.fault(Fault.malformed(), path="/x")
    http = client(server)
    with pytest.raises(ProviderError) as info:
        await http.request("GET", "/x")
    assert info.value.kind is K.MALFORMED_RESPONSE
    await http.aclose()


async def test_bad_key_is_auth_and_never_leaks(server, caplog):
    wrong = "pk-wrong-key-99999999"
    server.fault(Fault.rate_limited("0"), path="/x", times=1)
    http = client(server, key=wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as info:
        await http.request("GET", "/x")
    assert info.value.kind is K.AUTH and info.value.status == 401
    # the fake echoes the Authorization header back in its error body: it must be scrubbed
    for text in (str(info.value), repr(info.value), caplog.text, repr(http)):
        assert wrong not in text and KEY not in text
    assert "***" in str(info.value)
    await http.aclose()


async def test_missing_credentials_is_auth_without_a_request(server):
    http = ProviderHTTP("lambda", server.url, None, SecretStore(env={}))
    with pytest.raises(ProviderError) as info:
        await http.request("GET", "/x")
    assert info.value.kind is K.AUTH and not server.requests
