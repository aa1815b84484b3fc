"""Observability files checked offline: promtool check config/rules, promtool rule unit tests, the Grafana dashboard.

Metric names are cross-checked against what the runtime exports, so a renamed metric breaks a test, not a dashboard.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.support import DEPLOY, PROMETHEUS_DIR, run, tool

RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*_test.yml"))
CONFIGS = (PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus-kubernetes.yml")
DASHBOARD = DEPLOY / "grafana" / "crucible-mesh.json"


def _exported_by_runtime() -> set[str]:
    """Sample names the runtime's metric families produce (crucible.runtime.interceptor and .batching)."""
    from prometheus_client import CollectorRegistry

    from crucible.runtime.batching import BatcherMetrics
    from crucible.runtime.interceptor import ServerMetrics

    registry = CollectorRegistry()
    ServerMetrics(registry)
    BatcherMetrics(registry)
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


# Series that come from elsewhere: Prometheus itself, and the cost service's budget gauge (spend / limit per budget).
OTHER_SERIES = {"up", "ALERTS", "crucible_cost_budget_spent_ratio"}
EXPORTED = _exported_by_runtime() | OTHER_SERIES
_FUNCTIONS = {
    "sum",
    "rate",
    "histogram_quantile",
    "max",
    "min",
    "avg",
    "predict_linear",
    "by",
    "without",
    "on",
    "and",
    "or",
    "unless",
    "ignoring",
    "group_left",
    "group_right",
    "count",
    "label_values",
}


def _metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (identifiers not followed by '(' outside label matchers)."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    stripped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)  # groupings
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # range selectors
    stripped = re.sub(r'"[^"]*"', "", stripped)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", stripped))
    return {n for n in names if n not in _FUNCTIONS and not re.fullmatch(r"\d.*|e\d*", n)}


def _rules() -> list[dict]:
    return [rule for path in RULES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_rule_files_pass_promtool_check():
    result = run(tool("promtool"), "check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(RULES) >= 2 and "SUCCESS" in result.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_prometheus_configs_pass_promtool_check(config):
    result = run(tool("promtool"), "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULES)} rule files found" in result.stdout


@pytest.mark.parametrize("test_file", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests_pass(test_file):
    result = run(tool("promtool"), "test", "rules", str(test_file), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fail_when_an_expectation_is_wrong(tmp_path):
    text = (PROMETHEUS_DIR / "tests" / "recording_test.yml").read_text().replace("value: 0.25", "value: 0.3", 1)
    broken = tmp_path / "broken_test.yml"
    broken.write_text(text.replace("../rules/", str(PROMETHEUS_DIR / "rules") + "/"))
    result = run(tool("promtool"), "test", "rules", str(broken))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_promtool_check_rejects_a_bad_expression(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - record: a:b:c\n        expr: sum by (service (up)\n")
    assert run(tool("promtool"), "check", "rules", str(bad)).returncode != 0


def test_every_alert_is_unit_tested_and_has_severity_summary_and_runbook():
    alerts = [r for r in _rules() if "alert" in r]
    assert {"CrucibleHighErrorRatio", "CrucibleHighLatencyP99", "CrucibleQueueSaturated", "CrucibleBudgetExceeded"} <= {
        a["alert"] for a in alerts
    }
    tested = {
        t["alertname"]
        for f in RULE_TESTS
        for case in yaml.safe_load(f.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    for alert in alerts:
        assert alert["alert"] in tested, f"{alert['alert']} has no promtool test where it fires"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["runbook"]


def test_rules_and_dashboard_use_only_exported_or_recorded_metrics():
    recorded = {r["record"] for r in _rules() if "record" in r}
    known = EXPORTED | recorded
    for rule in _rules():
        unknown = _metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: unknown metrics {unknown}"
    for expr in _dashboard_exprs():
        unknown = _metric_names(expr.replace("$__rate_interval", "5m")) - known
        assert not unknown, f"dashboard query {expr!r}: unknown metrics {unknown}"


def test_metric_name_check_notices_an_unknown_metric():
    assert _metric_names('sum by (service) (rate(grpc_server_handeld_total{grpc_code="OK"}[5m]))') == {
        "grpc_server_handeld_total"
    }


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "service"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    covered = " ".join(_dashboard_exprs())
    for needle in (
        "grpc_server_errors:ratio",
        "handling_seconds:p99",
        "crucible_batcher_queue_depth",
        "crucible_cost_budget_spent_ratio",
    ):
        assert needle in covered
