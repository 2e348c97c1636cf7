"""manifests/alertmanager/alertmanager.yaml, the example receiver configuration, checked with the real
amtool: it loads, every alert of the project routes by its severity to the receiver documented for it,
other alerts keep the default receiver, and no secret is written inline."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import recording_rules

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "manifests" / "alertmanager" / "alertmanager.yaml"
RECEIVER_BY_SEVERITY = {"critical": "eo-critical", "warning": "eo-warning", "info": "eo-webhook"}


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool not found on PATH: run `make system-deps` (Debian's prometheus-alertmanager)")
    return subprocess.run([binary, *args], check=False, capture_output=True, text=True, timeout=60)


def _project_alerts() -> list[dict[str, Any]]:
    alerts = []
    for path in recording_rules.rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            alerts += [rule for rule in group["rules"] if "alert" in rule]
    return alerts


def _routes_to(config: Path, labels: dict[str, str]) -> list[str]:
    result = _amtool(
        "config", "routes", "test", f"--config.file={config}", *(f"{k}={v}" for k, v in labels.items())
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split()


def test_amtool_check_config_accepts_it() -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_check_config_catches_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yaml"
    broken.write_text(CONFIG.read_text().replace("- name: eo-warning", "- name: eo-warnings"))
    result = _amtool("check-config", str(broken))
    assert result.returncode != 0
    assert "eo-warning" in result.stdout + result.stderr


@pytest.mark.parametrize("alert", _project_alerts(), ids=lambda a: a["alert"])
def test_each_project_alert_routes_by_its_severity(alert: dict[str, Any]) -> None:
    labels = {"alertname": alert["alert"], **alert["labels"], "namespace": "chat", "workload": "llama"}
    assert _routes_to(CONFIG, labels) == [RECEIVER_BY_SEVERITY[alert["labels"]["severity"]]]


def test_every_severity_has_its_route_and_other_alerts_keep_the_default() -> None:
    for severity, receiver in RECEIVER_BY_SEVERITY.items():
        assert _routes_to(CONFIG, {"alertname": "EoExample", "severity": severity}) == [receiver]
    assert _routes_to(CONFIG, {"alertname": "KubePodCrashLooping", "severity": "critical"}) == ["default"]


def _walk(node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return list(node.items()) + [kv for v in node.values() for kv in _walk(v)]
    if isinstance(node, list):
        return [kv for v in node for kv in _walk(v)]
    return []


def test_secrets_come_from_files_only() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    pairs = _walk(config)
    inline = {"api_url", "credentials", "password", "bearer_token", "slack_api_url"}
    assert not [k for k, _ in pairs if k in inline], "secrets must be *_file references"
    files = [v for k, v in pairs if k in {"api_url_file", "credentials_file"}]
    slack = [c for r in config["receivers"] for c in r.get("slack_configs", [])]
    webhooks = [c for r in config["receivers"] for c in r.get("webhook_configs", [])]
    assert slack and webhooks, "a Slack receiver and a generic webhook receiver"
    assert all("api_url_file" in c for c in slack)
    assert all("credentials_file" in c["http_config"]["authorization"] for c in webhooks)
    assert all(str(f).startswith("/etc/alertmanager/secrets/") for f in files)
