"""The console's own defences without a mesh: sessions only at login, same-origin redirects, bounded JSON depth.

The console is configured with a token (so a login checks it locally); every request goes through the real ASGI app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from crucible.clients.mesh import MeshConfig
from crucible.console.app import create_app, json_depth, safe_next
from crucible.console.config import ConsoleConfig

TOKEN = "console-test-token"
ORIGIN = "http://127.0.0.1"
WITH_TOKEN = MeshConfig.from_mapping(
    {name: {"addresses": ["127.0.0.1:9"]} for name in ("detector", "proposer", "scorer", "scheduler", "cost")}
    | {"timeout_s": 1, "token": TOKEN}
)


@pytest.fixture
async def app() -> AsyncIterator[object]:
    application = create_app(ConsoleConfig(), WITH_TOKEN)
    yield application
    await application.state.console.sessions.close()


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN)  # type: ignore[arg-type]


async def _login(http: httpx.AsyncClient, **extra: object) -> httpx.Response:
    csrf = (await http.get("/api/session")).json()["csrf_token"]
    return await http.post("/api/login", json={"token": TOKEN, **extra}, headers={"origin": ORIGIN, "x-csrf-token": csrf})


async def test_anonymous_requests_do_not_evict_a_logged_in_session(app: object) -> None:
    async with _client(app) as user:
        assert (await _login(user)).status_code == 200
        assert (await user.get("/api/session")).json()["logged_in"] is True
        for i in range(300):  # cookie-less requests, as a script or a crawler sends them
            async with _client(app) as stranger:
                path = ("/api/session", "/jobs", "/login", "/api/jobs")[i % 4]
                assert (await stranger.get(path)).status_code in (200, 302, 401)
        assert (await user.get("/api/session")).json()["logged_in"] is True
        assert len(app.state.console.sessions) == 1  # type: ignore[attr-defined]


async def test_anonymous_browsers_hold_no_session_but_a_csrf_token(app: object) -> None:
    async with _client(app) as anon:
        first = await anon.get("/api/session")
        assert "crucible_console_csrf" in first.headers["set-cookie"] and "httponly" in first.headers["set-cookie"].lower()
        assert (await anon.get("/api/session")).json()["csrf_token"] == first.json()["csrf_token"]
        wrong = await anon.post("/api/login", json={"token": TOKEN}, headers={"origin": ORIGIN, "x-csrf-token": "x" * 64})
        assert wrong.status_code == 403
        refused = await _login(anon, token="not-the-token")
        assert refused.status_code == 401 and len(app.state.console.sessions) == 0  # type: ignore[attr-defined]
        ok = await _login(anon)
        assert ok.status_code == 200 and "crucible_console=" in ok.headers["set-cookie"]
        session = (await anon.get("/api/session")).json()
        assert session["logged_in"] is True and session["csrf_token"] != first.json()["csrf_token"]
        out = await anon.post("/api/logout", headers={"origin": ORIGIN, "x-csrf-token": session["csrf_token"]})
        assert out.status_code == 200 and len(app.state.console.sessions) == 0  # type: ignore[attr-defined]
        assert (await anon.get("/api/session")).json()["logged_in"] is False


@pytest.mark.parametrize(
    "target",
    [
        "/\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "//evil.example",
        "///evil.example",
        "https://evil.example",
        "http:evil.example",
        "javascript:alert(1)",
        "%2F%2Fevil.example",
        "/%2F/evil.example",
        "/%5Cevil.example",
        "/%09/evil.example",
        " /evil.example",
        "/\u3000/evil.example",
        "\\\\evil.example",
        "",
        "jobs",
    ],
)
async def test_login_redirect_stays_on_the_site(app: object, target: str) -> None:
    async with _client(app) as http:
        reply = await _login(http, next=target)
        assert reply.status_code == 200 and reply.json()["redirect"] == "/"


@pytest.mark.parametrize("target", ["/jobs", "/jobs/job-20261204-abc?x=1#top", "/providers"])
async def test_login_redirect_keeps_a_path_of_the_site(app: object, target: str) -> None:
    async with _client(app) as http:
        assert (await _login(http, next=target)).json()["redirect"] == target
    assert safe_next(None) == "/" and safe_next(["/jobs"]) == "/"


@pytest.mark.parametrize("opener, closer", [("[", "]"), ('{"a":', "}")])
async def test_deeply_nested_json_is_a_400(app: object, opener: str, closer: str) -> None:
    depth = 60_000 // (len(opener) + len(closer))
    body = opener * depth + closer * depth  # about 60 KB, under the body limit
    async with _client(app) as http:
        csrf = (await http.get("/api/session")).json()["csrf_token"]
        reply = await http.post(
            "/api/login",
            content=body,
            headers={"origin": ORIGIN, "x-csrf-token": csrf, "content-type": "application/json"},
        )
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert error["fields"][0]["field"] == "body" and "deep" in error["message"]


def test_json_depth_counts_brackets_outside_strings() -> None:
    assert json_depth('{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert json_depth('{"a": "\\"[[[["}') == 1
    assert json_depth("[" * 100 + "]" * 100) == 100
