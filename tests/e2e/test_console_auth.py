"""The web console in front of a mesh that wants a token: login page, session cookie, no secret in pages, CSRF.

Starts only a scheduler with auth on and two consoles: one without a token (users log in with theirs, checked by
one call to the mesh) and one configured with the token (users must know the same token to log in).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crucible.console.cli import ConsoleProcess
from crucible.mesh import MeshLauncher
from tests.conftest import free_port_block
from tests.e2e.test_console import ARTIFACTS, _free_port, by_id, chromium, wait

TOKEN = "s3cret-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def consoles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    work = tmp_path_factory.mktemp("console-auth")
    base = free_port_block(5)
    mesh = MeshLauncher(
        ["scheduler"],
        ports={"scheduler": base + 3},
        log_dir=work / "logs",
        env={"CRUCIBLE_SCHEDULER_STATE_DIR": str(work / "scheduler")},
        extra_args={"scheduler": ["--auth-token", TOKEN]},
    )
    mesh.start()
    addresses = {"scheduler": mesh.address("scheduler")}
    open_console = ConsoleProcess(
        "127.0.0.1", _free_port(), addresses, work / "logs", env={"CRUCIBLE_CLIENT_TOKEN": "", "CRUCIBLE_AUTH_TOKEN": ""}
    )
    own_token = ConsoleProcess("127.0.0.1", _free_port(), addresses, work / "logs", env={"CRUCIBLE_CLIENT_TOKEN": TOKEN})
    try:
        asyncio.run(mesh.wait_ready(timeout=120))
        for c in (open_console, own_token):
            c.start()
        for c in (open_console, own_token):
            asyncio.run(c.wait_ready(timeout=60))
        yield {"open": open_console.url.rstrip("/"), "own": own_token.url.rstrip("/")}
    finally:
        open_console.stop()
        own_token.stop()
        mesh.stop()


def _login(http: httpx.Client, url: str, token: str, *, csrf: bool = True) -> httpx.Response:
    headers = {"origin": url}
    if csrf:
        headers["x-csrf-token"] = http.get("/api/session").json()["csrf_token"]
    return http.post("/api/login", json={"token": token}, headers=headers)


@pytest.mark.parametrize("which", ["open", "own"])
def test_login_session_and_no_secret_in_pages(consoles: dict[str, str], which: str) -> None:
    url = consoles[which]
    with httpx.Client(base_url=url, timeout=30) as http:
        session = http.get("/api/session").json()
        assert session["login_required"] is True and session["logged_in"] is False
        page = http.get("/jobs")
        assert page.status_code == 302 and page.headers["location"].startswith("/login")
        refused = http.get("/api/jobs")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHENTICATED"
        assert _login(http, url, TOKEN, csrf=False).status_code == 403  # login is CSRF-checked too
        assert _login(http, url, "wrong-token").status_code == 401
        assert _login(http, url, TOKEN).status_code == 200
        cookie = http.cookies.jar
        assert all(TOKEN not in c.value for c in cookie)  # the cookie is a random session id
        jobs = http.get("/api/jobs")
        assert jobs.status_code == 200, jobs.text
        for path in ("/api/session", "/jobs", "/submit", "/static/common.js", "/api/scheduler/providers"):
            body = http.get(path).text
            assert TOKEN not in body, path
        raw = http.get("/api/session")
        assert raw.json()["logged_in"] is True and TOKEN not in raw.text
        csrf = raw.json()["csrf_token"]
        assert http.post("/api/logout", headers={"origin": url, "x-csrf-token": csrf}).status_code == 200
        assert http.get("/api/jobs").status_code == 401


def test_login_page_in_the_browser(consoles: dict[str, str], browser_for_auth: Any) -> None:
    driver = browser_for_auth
    driver.get(consoles["open"] + "/jobs")
    wait(driver, lambda d: "/login" in d.current_url)
    field = by_id(driver, "token")
    assert field.get_attribute("type") == "password"
    field.send_keys("not-it")
    by_id(driver, "login").click()
    wait(driver, lambda d: "not accepted" in by_id(d, "login-error").text)
    driver.save_screenshot(str(ARTIFACTS / "login.png"))
    field.clear()
    field.send_keys(TOKEN)
    by_id(driver, "login").click()
    wait(driver, lambda d: d.current_url.endswith("/jobs") and "no jobs" in d.page_source)
    assert TOKEN not in driver.page_source
    cookie = next(c for c in driver.get_cookies() if c["name"] == "crucible_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    assert driver.execute_script("return document.cookie") == ""  # not readable by page scripts

    # After login the page goes back where the user was headed, and only ever to this console: a `next` that a
    # browser would read as another site (backslash, tab, scheme-relative, absolute, encoded) lands on "/".
    for target in ("/%5Cevil.example", "/%09/evil.example", "//evil.example", "https://evil.example", "%2F%2Fevil.example"):
        driver.get(consoles["open"] + "/login?next=" + target)
        by_id(driver, "token").send_keys(TOKEN)
        by_id(driver, "login").click()
        wait(driver, lambda d: "/login" not in d.current_url, message=f"no redirect after login with next={target}")
        assert driver.current_url.startswith(consoles["open"] + "/jobs"), (target, driver.current_url)
    driver.get(consoles["open"] + "/login?next=/budgets")
    by_id(driver, "token").send_keys(TOKEN)
    by_id(driver, "login").click()
    wait(driver, lambda d: d.current_url == consoles["open"] + "/budgets")


@pytest.fixture(scope="module")
def browser_for_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(Path(tmp_path_factory.mktemp("auth-browser")) / "profile") as driver:
        yield driver
