"""Every query of the Grafana dashboard parses in a real Prometheus and reads only known metrics."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import recording_rules
from tests.support.fixtures import Prometheus, StartPrometheus
from tools.metric_catalog import PUBLISHED
from tools.promql_names import metric_names

DASHBOARD: dict[str, Any] = json.loads(recording_rules.dashboard().read_text())
RULE_FILES = [Path(str(f)) for f in recording_rules.rule_files()]
# What Grafana would substitute: "All" of a multi-value variable is its allValue, ".*".
VARIABLES = {
    "namespace": ".*",
    "workload": ".*",
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*\w+\)$")


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr.replace('"$1"', ""), f"unsubstituted variable in {expr!r}"
    return expr


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for panel targets, annotations and the selectors of query variables."""
    found = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in DASHBOARD["panels"] for t in p["targets"]
    ]
    found += [
        (f"annotation {a['name']!r}", a["expr"]) for a in DASHBOARD["annotations"]["list"] if "expr" in a
    ]
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["query"]["query"])
            assert match, f"variable {var['name']}: only label_values(selector, label) is supported"
            found.append((f"variable {var['name']!r}", match["selector"]))
    return [(where, _substitute(expr)) for where, expr in found]


QUERIES = _queries()


@pytest.fixture(scope="module")
def prometheus(start_module_prometheus: StartPrometheus) -> Prometheus:
    # Loading the rule files into the same Prometheus also proves the PrometheusRule's content loads.
    return start_module_prometheus(rule_files=RULE_FILES, scrape_interval_s=1.0)


def _api(prom: Prometheus, path: str, **params: str) -> dict[str, Any]:
    url = f"{prom.url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return dict(json.load(resp))
    except urllib.error.HTTPError as err:
        return dict(json.load(err))


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[w for w, _ in QUERIES])
def test_query_is_valid_promql(prometheus: Prometheus, where: str, expr: str) -> None:
    body = _api(prometheus, "/api/v1/query", query=expr)
    assert body["status"] == "success", f"{where}: {expr!r}: {body.get('errorType')}: {body.get('error')}"


def test_a_broken_query_is_caught(prometheus: Prometheus) -> None:
    body = _api(prometheus, "/api/v1/query", query="sum by (namespace (x)")
    assert body["status"] == "error"
    assert body["errorType"] == "bad_data"


def test_queries_read_only_published_or_recorded_metrics() -> None:
    recorded = {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    unknown = {
        name: where
        for where, expr in QUERIES
        for name in metric_names(expr)
        if name not in PUBLISHED | recorded
    }
    assert not unknown, f"dashboard reads metrics nobody publishes: {unknown}"


def test_rules_load_and_evaluate_in_prometheus(prometheus: Prometheus) -> None:
    prometheus.wait_for("cluster:eo_datacenter_pue:constant", timeout_s=20)
    groups = _api(prometheus, "/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} >= {"eo-workload", "eo-node", "eo-gpu", "eo-facility"}
    unhealthy = [r["name"] for g in groups for r in g["rules"] if r.get("health") == "err"]
    assert not unhealthy


def test_dashboard_covers_the_kpis_and_has_namespace_and_workload_variables() -> None:
    text = " ".join(expr for _, expr in QUERIES)
    for needle in (
        "eo_pod_energy_joules:rate5m",
        "eo_joules_per_request:ratio_rate5m",
        "eo_joules_per_token:ratio_rate5m",
        "eo_idle_energy:ratio_rate5m",
        "eo_gpu_power_limit_watts:sum",
        "eo_scaler_desired_replicas",
        "eo_scaler_current_replicas",
        "eo_scaler_latency_slo_seconds",
        "histogram_quantile_rate5m",
    ):
        assert needle in text, needle
    names = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"namespace", "workload", "datasource"} <= names
