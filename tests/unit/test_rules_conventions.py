"""Conventions of recording_rules/: names, comments, alert fields, runbooks, KPI docs, known metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.gen_prometheusrule import REPO, rule_files
from tools.metric_catalog import PUBLISHED
from tools.promql_names import metric_names

NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z0-9_]+$")
# Alerts on a state (up == 0, absent, a frozen counter): their value is 0 or 1, the labels say what.
STATE_ALERTS = {"EoExporterDown", "EoExporterAbsent", "EoGpuEnergyStale", "EoExporterCollectorDown"}
RUNBOOK_BASE = "https://github.com/energy-orchestrator/energy-orchestrator/blob/main/docs/runbooks.md#"


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in rule_files(REPO)
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


RECORDS = [r for r in _rules() if "record" in r]
ALERTS = [r for r in _rules() if "alert" in r]


def _anchors(markdown: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_there_are_records_and_alerts() -> None:
    assert len(RECORDS) > 30
    assert len(ALERTS) >= 10


@pytest.mark.parametrize("path", rule_files(REPO), ids=lambda p: p.name)
def test_every_record_has_a_comment_line_above_it(path: Path) -> None:
    lines = path.read_text().splitlines()
    missing = [
        line.strip()
        for i, line in enumerate(lines)
        if line.strip().startswith("- record:") and not lines[i - 1].strip().startswith("#")
    ]
    assert not missing, f"{path.name}: records without a comment saying why they exist: {missing}"


def test_record_names_follow_level_metric_operations() -> None:
    bad = [r["record"] for r in RECORDS if not NAME.match(r["record"])]
    assert not bad


def test_architecture_kpis_exist() -> None:
    names = {r["record"] for r in RECORDS}
    for kpi in (
        "namespace_workload:eo_pod_energy_joules:rate5m",
        "namespace_workload:eo_pod_requests:rate5m",
        "namespace_workload:eo_joules_per_request:ratio_rate5m",
        "namespace_workload:eo_joules_per_token:ratio_rate5m",
        "namespace_workload:eo_joules_per_request:ratio_rate1h",
        "namespace_workload:eo_joules_per_token:ratio_rate1h",
        "node:eo_it_power_watts:avg5m",
        "cluster:eo_it_power_watts:avg5m",
        "namespace_workload:eo_idle_power_watts:rate5m",
        "namespace_workload:eo_idle_energy:ratio_rate5m",
        "cluster:eo_facility_power_watts:avg5m",
        "namespace_workload:eo_grams_co2_per_request:ratio_rate5m",
        "namespace_workload:eo_power_budget_headroom_watts:rate5m",
        "namespace_workload:eo_gpu_power_limit_reduction_watts:sum",
        "namespace_workload_quantile:eo_pod_request_latency_seconds:histogram_quantile_rate5m",
    ):
        assert kpi in names, kpi


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_alert_has_severity_annotations_runbook_and_for(alert: dict[str, Any]) -> None:
    assert alert.get("for"), "every alert needs a `for:`"
    assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = alert["annotations"]
    assert annotations["summary"].strip()
    if alert["alert"] not in STATE_ALERTS:
        assert "$value" in annotations["description"], "the description must show the value"
    anchor = alert["alert"].lower()
    assert annotations["runbook_url"] == RUNBOOK_BASE + anchor
    assert anchor in _anchors(REPO / "docs" / "runbooks.md"), f"docs/runbooks.md has no section {anchor}"


def test_every_record_is_documented_in_kpis_md() -> None:
    doc = (REPO / "docs" / "kpis.md").read_text()
    missing = sorted({r["record"] for r in RECORDS if f"`{r['record']}`" not in doc})
    assert not missing, f"records missing from docs/kpis.md: {missing}"


def test_rules_read_only_published_or_recorded_metrics() -> None:
    known = PUBLISHED | {r["record"] for r in RECORDS}
    unknown = {
        name: rule.get("record") or rule.get("alert")
        for rule in _rules()
        for name in metric_names(rule["expr"])
        if name not in known
    }
    assert not unknown, f"rules read metrics nobody publishes: {unknown}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (a) (rate(x_total{b="c"}[5m])) / 3.6e6', {"x_total"}),
        ("a:b:c > on (n, w) group_left (m) d offset 1d and e", {"a:b:c", "d", "e"}),
        ("histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m]))) > Inf", {"h_bucket"}),
        ('label_replace(up, "x", "$1", "y", "(.*)") or vector(1) or -z', {"up", "z"}),
        ("max(avg_over_time(g[10m:1m])) without (instance)", {"g"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
