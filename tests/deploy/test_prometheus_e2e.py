"""End to end: a real Prometheus on loopback scrapes a `crucible up` mesh with deploy/prometheus's config and rules.

The scrape config is deploy/prometheus/prometheus.yml with its targets pointed at the mesh's metrics ports; a gRPC
metric, a recording rule over it and every Grafana dashboard query are read back through the Prometheus HTTP API.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest
import yaml

from crucible.mesh import METRICS_PORT_OFFSET, SERVICES
from tests.deploy.support import DEPLOY, PROMETHEUS_DIR, tool
from tests.e2e.test_mesh_up import mesh  # noqa: F401 - the `crucible up` fixture, shared with the mesh e2e tests

pytestmark = pytest.mark.slow

# A read-only call per service that goes through the interceptor (not health): whatever status it gets, it is counted.
METHODS = {"detector": "GetInfo", "proposer": "GetInfo", "scorer": "GetInfo", "scheduler": "ListProviders", "cost": "ListOffers"}
CALLS = {name: f"/{entry.proto_service}/{METHODS[name]}" for name, entry in SERVICES.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config_for(ports: dict[str, int]) -> dict:
    """deploy/prometheus/prometheus.yml, scraping the loopback mesh every second and loading the rules by path."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules" / "*.yml")]
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "crucible"]
    for group in config["scrape_configs"][0]["static_configs"]:
        name = group["labels"]["service"]
        group["targets"] = [f"127.0.0.1:{ports[name] + METRICS_PORT_OFFSET}"]
    return config


@pytest.fixture(scope="module")
def prometheus(mesh, tmp_path_factory):  # noqa: F811 - the imported fixture
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(yaml.safe_dump(_config_for(mesh["ports"])))
    port = _free_port()
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("prometheus did not become ready:\n" + (work / "prometheus.log").read_text()[-3000:])
        time.sleep(0.2)
    yield {"url": url, "log": work / "prometheus.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def _api(prometheus, path: str, **params) -> dict:
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{prometheus['url']}/api/v1/{path}?{query}", timeout=10) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as err:  # 400 on a bad query: the body says why
        body = json.loads(err.read())
    return body


def _query(prometheus, expr: str) -> list[dict]:
    body = _api(prometheus, "query", query=expr)
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _eventually(prometheus, expr: str, check, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        result = _query(prometheus, expr)
        if check(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{expr} never satisfied the check; last result {result}\n" + prometheus["log"].read_text()[-2000:])
        time.sleep(0.5)


def _call_every_service(ports: dict[str, int]) -> dict[str, grpc.StatusCode]:
    """One call with an empty request per service over a raw channel; returns each status (counted by the interceptor)."""
    codes = {}
    for name, method in CALLS.items():
        with grpc.insecure_channel(f"127.0.0.1:{ports[name]}") as channel:
            call = channel.unary_unary(method)  # bytes in, bytes out: an empty message
            try:
                call(b"", timeout=30)
                codes[name] = grpc.StatusCode.OK
            except grpc.RpcError as err:
                codes[name] = err.code()
    return codes


def test_prometheus_scrapes_every_service_of_the_mesh(prometheus):
    result = _eventually(prometheus, 'up{job="crucible"} == 1', lambda r: len(r) == len(SERVICES))
    assert {r["metric"]["service"] for r in result} == set(SERVICES)


def test_grpc_metric_of_real_calls_is_queryable_through_the_http_api(prometheus, mesh):  # noqa: F811
    codes = _call_every_service(mesh["ports"])
    assert grpc.StatusCode.INTERNAL not in codes.values(), codes
    for name, entry in SERVICES.items():
        expr = (
            f'grpc_server_handled_total{{job="crucible", service="{name}", grpc_service="{entry.proto_service}", '
            f'grpc_method="{METHODS[name]}", grpc_code="{codes[name].name}"}}'
        )
        (sample,) = _eventually(prometheus, expr, lambda r: len(r) == 1 and float(r[0]["value"][1]) >= 1)
        assert sample["metric"]["grpc_type"] == "unary"
    # Health probes are counted too (the mesh launcher polled them), under their own service name.
    assert _query(prometheus, 'grpc_server_handled_total{grpc_service="grpc.health.v1.Health", grpc_code="OK"} > 0')


def test_recording_rules_evaluate_over_the_scraped_metrics(prometheus, mesh):  # noqa: F811
    _call_every_service(mesh["ports"])
    result = _eventually(
        prometheus,
        "service_grpc_method:grpc_server_handled:rate5m",
        lambda r: {s["metric"]["service"] for s in r} == set(SERVICES) and all(float(s["value"][1]) > 0 for s in r),
    )
    assert {s["metric"]["grpc_method"] for s in result} == set(METHODS.values()), "health and reflection are excluded"
    ratios = _eventually(prometheus, "service:grpc_server_errors:ratio_rate5m", lambda r: len(r) == len(SERVICES))
    assert all(0 <= float(s["value"][1]) <= 1 for s in ratios)


def test_every_rule_loads_and_evaluates_without_error(prometheus):
    expected = {
        group["name"] for path in (PROMETHEUS_DIR / "rules").glob("*.yml") for group in yaml.safe_load(path.read_text())["groups"]
    }
    deadline = time.monotonic() + 30
    while True:
        groups = _api(prometheus, "rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if (rules and all(rule["health"] != "unknown" for rule in rules)) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {g["name"] for g in groups} == expected
    bad = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not bad, bad


def test_every_dashboard_query_runs(prometheus):
    dashboard = json.loads((DEPLOY / "grafana" / "crucible-mesh.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$service", ".*").replace("$__rate_interval", "1m")
            _query(prometheus, expr)
