"""The web console in a real browser (Debian's chromium through chromedriver, driven by Selenium).

Starts only the scheduler, the cost service and the console; submits a short nanoGPT job from the Submit page and
watches its chart gain points and its logs stream, cancels a second job, checks that a job printing HTML shows it
as text, and saves a screenshot of every page under tmp/artifacts/console (CRUCIBLE_TEST_ARTIFACTS overrides).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import os
import socket
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crucible.clients.mesh import Mesh as Clients
from crucible.console.cli import ConsoleProcess
from crucible.mesh import MeshLauncher
from tests.conftest import free_port_block

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "nanogpt"
ARTIFACTS = Path(os.environ.get("CRUCIBLE_TEST_ARTIFACTS", REPO / "tmp" / "artifacts")) / "console"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TINY = (
    "--n-layer 1 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8 --eval-iters 2 --eval-interval 40 "
    "--log-interval 2 --checkpoint-interval 40 --threads 1 --sample-chars 0"
)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """scheduler + cost (no model services) and the console pointed at them."""
    work = tmp_path_factory.mktemp("console-e2e")
    base = free_port_block(5)
    ports = {"scheduler": base + 3, "cost": base + 4}
    mesh = MeshLauncher(
        ["scheduler", "cost"],
        ports=ports,
        log_dir=work / "logs",
        env={"CRUCIBLE_SCHEDULER_STATE_DIR": str(work / "scheduler"), "CRUCIBLE_COST_STATE_DIR": str(work / "cost")},
        extra_args={"scheduler": ["--poll-interval-s", "0.3", "--usage-interval-s", "5"]},
    )
    mesh.start()
    console = ConsoleProcess("127.0.0.1", _free_port(), {n: mesh.address(n) for n in mesh.services}, work / "logs")
    try:
        asyncio.run(mesh.wait_ready(timeout=120))
        console.start()
        asyncio.run(console.wait_ready(timeout=60))
        yield {"url": console.url.rstrip("/"), "work": work, "mesh": mesh, "base": base}
    finally:
        console.stop()
        mesh.stop()


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """Debian's Chromium, headless, through /usr/bin/chromedriver (no browser download), with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed: `make tools` (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1360,1500",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(stack: dict[str, Any]) -> Iterator[Any]:
    with chromium(stack["work"] / "chromium-profile") as driver:
        yield driver


def clients(stack: dict[str, Any]) -> Clients:
    base = stack["base"]
    return Clients.local(base)


def wait(driver: Any, condition: Any, timeout: float = 90, message: str = "") -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # The console re-renders tables on every poll/stream update: an element read mid-render goes stale,
        # which only means "look again".
        return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]).until(
            condition, message
        )
    except TimeoutException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "failed-wait.png"))  # what the page showed when the wait ran out
        raise


def shot(driver: Any, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def nanogpt_archive(folder: Path) -> Path:
    path = folder / "nanogpt.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(EXAMPLE / "train.py", arcname="train.py")
    path.write_bytes(buf.getvalue())
    return path


def fill(driver: Any, name: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.CSS_SELECTOR, f"#job-form [name='{name}']")
    field.clear()
    field.send_keys(value)


def submit_from_page(
    driver: Any,
    url: str,
    command: str,
    *,
    name: str,
    archive: Path | None = None,
    folder: Path | None = None,
    estimate: bool = False,
) -> str:
    """Fill the Submit page (local provider, explicit), optionally estimate first; return the new job's id."""
    driver.get(url + "/submit")
    wait(driver, lambda d: css(d, "input[data-provider='local']"), message="providers not listed")
    fill(driver, "name", name)
    fill(driver, "command", command)
    if archive is not None:
        by_id(driver, "code-archive").send_keys(str(archive))
    if folder is not None:
        by_id(driver, "code-folder").send_keys(str(folder))  # a webkitdirectory input: the console packs the files
    css(driver, "input[data-provider='local']")[0].click()
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, "policy")).select_by_visible_text("explicit")
    if estimate:
        by_id(driver, "estimate-req").click()
        arithmetic = wait(driver, lambda d: css(d, "#arithmetic"), message="no arithmetic")[0]
        assert "weights" in arithmetic.text and "params" in arithmetic.text
        assert float(by_id(driver, "min-mem").get_attribute("value")) > 0
        fill(driver, "min_gpu_memory_gib", "0")  # the local provider here has no GPU
        by_id(driver, "preview").click()
        cost = wait(driver, lambda d: css(d, "#estimated-cost"), message="no estimate")[0]
        assert cost.text.startswith("$"), cost.text
        shot(driver, "submit")
    by_id(driver, "submit").click()
    wait(driver, lambda d: "/jobs/job-" in d.current_url, message="not redirected to the job page")
    return driver.current_url.rsplit("/", 1)[-1]


def test_providers_page(stack: dict[str, Any], browser: Any) -> None:
    browser.get(stack["url"] + "/providers")
    rows = wait(browser, lambda d: css(d, "#offers tbody tr[data-offer]"), message="no offers")
    assert len(rows) > 3
    recommended = css(browser, "#offers tr.recommended")
    assert len(recommended) == 1 and "recommended" in recommended[0].text and rows[0] == recommended[0]
    assert "catalog" in rows[0].text or "http" in rows[0].text or "github" in rows[0].text  # the price source
    table = wait(browser, lambda d: css(d, "#estimate-table"), message="no estimate breakdown")[0]
    for label in ("runtime", "billed", "compute", "storage", "total"):
        assert label in table.text
    rows[2].click()
    wait(browser, lambda d: by_id(d, "estimate-offer").text == rows[2].get_attribute("data-offer"))
    shot(browser, "providers")


def test_submit_nanogpt_chart_and_logs_stream(
    stack: dict[str, Any], browser: Any, shared_data: Path | None, tmp_path: Path
) -> None:
    data = f"--data {shared_data / 'tinyshakespeare' / 'input.txt'} " if shared_data else ""
    command = f"{sys.executable} train.py {data}--max-iters 160 {TINY}"
    job_id = submit_from_page(
        browser, stack["url"], command, name="console-nanogpt", archive=nanogpt_archive(tmp_path), estimate=True
    )

    def points(d: Any) -> int:
        return int(by_id(d, "point-count").get_attribute("data-points") or 0)

    # The chart gains points and the log grows while the job runs (not only at the end).
    first = wait(browser, lambda d: points(d) > 0 and points(d), message="no progress points")
    log_first = wait(browser, lambda d: "iter" in by_id(d, "log").text and len(by_id(d, "log").text))
    assert by_id(browser, "job-state").get_attribute("data-state") in ("running", "provisioning")
    later = wait(browser, lambda d: points(d) > first and points(d), message="the chart gained no points")
    wait(browser, lambda d: len(by_id(d, "log").text) > log_first, message="the log did not grow")
    assert later > first
    assert css(browser, "#chart canvas"), "uPlot drew nothing"
    assert not css(browser, "#chart-missing")
    shot(browser, "job-running")

    wait(
        browser,
        lambda d: by_id(d, "job-state").get_attribute("data-state") == "succeeded",
        timeout=240,
        message="nanoGPT job did not succeed",
    )
    wait(browser, lambda d: any("ckpt.pt" in r.text for r in css(d, "#artifacts tbody tr")), message="no checkpoint")
    total = wait(browser, lambda d: points(d) >= 80 and points(d), message="not every point arrived")

    async def history() -> int:
        async with clients(stack) as mesh:
            n, token = 0, ""
            while True:
                got, token, _ = await mesh.scheduler.list_progress(job_id, page_size=1000, page_token=token)
                n += len(got)
                if not token:
                    return n

    assert asyncio.run(history()) == total  # the page holds every stored point, not just the latest
    assert "train_loss" in by_id(browser, "metric-toggles").text
    timeline = by_id(browser, "timeline").text
    assert "pending" in timeline and "running" in timeline and "succeeded" in timeline

    # stdout/stderr toggles and search work on the streamed output.
    by_id(browser, "search").send_keys("step 40:")
    wait(browser, lambda d: by_id(d, "search-count").text.startswith("1 matching"))
    by_id(browser, "search").clear()
    by_id(browser, "search").send_keys(" ")  # an input event with a blank-ish query: restore the whole log
    by_id(browser, "search").clear()
    browser.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
    browser.execute_script("window.scrollTo(0, 0)")
    shot(browser, "job")

    # Download an artifact through the console (checksum verified by the SDK on the way).
    link = next(a for a in css(browser, "#artifacts a") if "ckpt.pt" in (a.get_attribute("href") or ""))
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    response = httpx.get(link.get_attribute("href"), cookies=cookies, timeout=60)
    assert response.status_code == 200 and len(response.content) > 1000
    assert response.headers["content-disposition"].startswith("attachment")


def test_cancel_second_job(stack: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    folder = tmp_path / "sleeper"
    (folder / "lib").mkdir(parents=True)
    (folder / "lib" / "say.py").write_text("WORD = 'waiting'\n")
    (folder / "job.py").write_text("import time\nfrom lib.say import WORD\nprint(WORD, flush=True)\ntime.sleep(600)\n")
    job_id = submit_from_page(browser, stack["url"], f"{sys.executable} job.py", name="console-cancel", folder=folder)
    wait(browser, lambda d: "waiting" in by_id(d, "log").text, message="the job did not start")
    assert by_id(browser, "job-state").get_attribute("data-state") == "running"
    by_id(browser, "cancel").click()
    wait(browser, lambda d: by_id(d, "job-state").get_attribute("data-state") == "cancelled", timeout=60)
    assert "cancelled from the web console" in by_id(browser, "timeline").text
    assert by_id(browser, "cancel").get_attribute("disabled") is not None
    assert job_id in browser.current_url


def test_job_printing_html_shows_it_as_text(stack: dict[str, Any], browser: Any) -> None:
    payload = "<script>document.title='pwned'</script><b id='injected'>bold</b><img src=x onerror=alert(1)>"
    code = f"import sys; print({payload!r}); print({payload!r}, file=sys.stderr)"

    async def create() -> str:
        async with clients(stack) as mesh:
            job = await mesh.scheduler.create_job(
                {
                    "command": [sys.executable, "-c", code],
                    "display_name": "<i>name</i>",
                    "provider_policy": "PROVIDER_POLICY_EXPLICIT",
                    "providers": ["local"],
                }
            )
            return job.job_id

    job_id = asyncio.run(create())
    browser.get(f"{stack['url']}/jobs/{job_id}")
    wait(browser, lambda d: by_id(d, "job-state").get_attribute("data-state") == "succeeded")
    log = wait(browser, lambda d: by_id(d, "log").text.count("<script>") == 2 and by_id(d, "log"))
    assert "<b id='injected'>bold</b>" in log.text
    assert not css(browser, "#log script, #log b, #log img, #injected")
    assert by_id(browser, "job-name").text == "<i>name</i>" and not css(browser, "#job-name i")
    assert "pwned" not in browser.title
    # Searching re-renders the log from the stored chunks: still text.
    by_id(browser, "search").send_keys("script")
    wait(browser, lambda d: by_id(d, "search-count").text.startswith("2 matching"))
    assert not css(browser, "#log script, #log b, #log img")
    shot(browser, "job-html-output")


def test_jobs_page_lists_and_filters(stack: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.support.ui import Select

    browser.get(stack["url"] + "/jobs")
    # Read the rows' text inside the wait: a re-render between finding and reading them makes them stale.
    text = wait(
        browser,
        lambda d: len(css(d, "#jobs tbody tr[data-job]")) >= 3 and " ".join(r.text for r in css(d, "#jobs tbody tr[data-job]")),
    )
    assert "succeeded" in text and "cancelled" in text and "local" in text and "$" in text
    shot(browser, "jobs")
    Select(browser.find_element("css selector", "#filters [name='state']")).select_by_visible_text("cancelled")
    wait(
        browser,
        lambda d: (
            all("cancelled" in r.text for r in css(d, "#jobs tbody tr[data-job]"))
            and len(css(d, "#jobs tbody tr[data-job]")) == 1
        ),
    )


def test_budgets_page_shows_live_alerts(stack: dict[str, Any], browser: Any) -> None:
    async def make_budget() -> tuple[str, str]:
        async with clients(stack) as mesh:
            budget = await mesh.cost.create_budget(
                scope="project:console-e2e",
                display_name="e2e",
                limit_usd=0.0001,
                alert_thresholds_percent=[50, 100],
                enforcement="BUDGET_ENFORCEMENT_SOFT",
            )
            offers = await mesh.cost.list_offers(providers=["local"])
            return budget.budget_id, offers.offers[0].offer_id

    budget_id, offer_id = asyncio.run(make_budget())
    browser.get(stack["url"] + "/budgets")
    wait(browser, lambda d: css(d, f"tr[data-budget='{budget_id}']"))
    wait(browser, lambda d: by_id(d, "watch-status").text == "watching")  # every WatchBudget has answered

    async def spend() -> None:
        end = dt.datetime.now(dt.UTC)  # after the budget's create_time (spend counts from then on)
        async with clients(stack) as mesh:
            await mesh.cost.record_usage(
                job_id="job-console-e2e",
                offer_id=offer_id,
                scope="project:console-e2e",
                start_time=(end - dt.timedelta(minutes=10)).isoformat(),
                end_time=end.isoformat(),
                price_usd_per_hour=0.01,
            )

    asyncio.run(spend())
    alerts = wait(browser, lambda d: "project:console-e2e crossed 100" in by_id(d, "alerts").text and by_id(d, "alerts"))
    assert "job-console-e2e" in alerts.text
    row = wait(
        browser,
        lambda d: (
            "50%, 100%" in css(d, f"tr[data-budget='{budget_id}']")[0].text and css(d, f"tr[data-budget='{budget_id}']")[0].text
        ),
    )  # read inside the wait: rows are replaced live
    assert "$0.0017" in row, row  # 10 min at $0.01/h
    shot(browser, "budgets")


def test_csrf_origin_and_host_checks(stack: dict[str, Any]) -> None:
    url = stack["url"]
    with httpx.Client(base_url=url, timeout=30) as http:
        session = http.get("/api/session").json()
        form = {"command": "true", "policy": "explicit", "providers": "local"}
        no_csrf = http.post("/api/jobs", data=form, headers={"origin": url})
        assert no_csrf.status_code == 403 and "x-csrf-token" in no_csrf.json()["error"]["message"]
        cross = http.post(
            "/api/jobs", data=form, headers={"origin": "http://evil.example", "x-csrf-token": session["csrf_token"]}
        )
        assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]["message"]
        cross_site = http.post(
            "/api/jobs", data=form, headers={"sec-fetch-site": "cross-site", "x-csrf-token": session["csrf_token"]}
        )
        assert cross_site.status_code == 403
        rebinding = http.get("/api/jobs", headers={"host": "evil.example:80"})
        assert rebinding.status_code == 400
        ok = http.post(
            "/api/jobs", data={**form, "validate_only": "1"}, headers={"origin": url, "x-csrf-token": session["csrf_token"]}
        )
        assert ok.status_code == 200, ok.text
        bad = http.post(
            "/api/jobs",
            data={**form, "command": "", "validate_only": "1"},
            headers={"origin": url, "x-csrf-token": session["csrf_token"]},
        )
        assert bad.status_code == 400 and bad.json()["error"]["fields"][0]["field"] == "command"
        big = http.post(
            "/api/jobs",
            files={"code_archive": ("x.tar.gz", b"\x1f\x8b" + b"0" * (33 * 2**20))},
            data=form,
            headers={"origin": url, "x-csrf-token": session["csrf_token"]},
        )
        assert big.status_code == 413
        not_archive = http.post(
            "/api/jobs",
            files={"code_archive": ("x.zip", b"not an archive")},
            data=form,
            headers={"origin": url, "x-csrf-token": session["csrf_token"]},
        )
        assert not_archive.status_code == 400 and not_archive.json()["error"]["fields"][0]["field"] == "code_archive"
        page = http.get("/jobs")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "httponly" in page.headers.get("set-cookie", "").lower() or http.cookies
        cookie_header = http.get("/api/session").headers.get("set-cookie", "")
        assert cookie_header == ""  # the session cookie is set once, on the first response
