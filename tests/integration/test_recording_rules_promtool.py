"""The packaged rule files pass `promtool check rules` and every `promtool test rules` suite shipped with
them (``recording_rules/tests``), read where the installed package keeps them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import recording_rules

# Installed packages are plain folders (pip never leaves one zipped), so the resources are paths.
RULE_FILES = [Path(str(f)) for f in recording_rules.rule_files()]
SUITES = [Path(str(f)) for f in recording_rules.promtool_suites()]


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found on PATH: run `make system-deps`")
    return subprocess.run([binary, *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=120)


def _suite_docs() -> list[dict]:
    return [yaml.safe_load(path.read_text()) for path in SUITES]


def test_promtool_check_rules() -> None:
    assert RULE_FILES and SUITES
    result = _promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_promtool_test_rules(suite: Path) -> None:
    result = _promtool("test", "rules", suite.name, cwd=suite.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_record_is_checked_with_values_and_every_alert_is_tested() -> None:
    records, alerts = set(), set()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    records.add(rule["record"])
                else:
                    alerts.add(rule["alert"])
    exprs, firing, quiet = [], set(), set()
    for doc in _suite_docs():
        for test in doc["tests"]:
            exprs += [t["expr"] for t in test.get("promql_expr_test", []) if t.get("exp_samples")]
            for t in test.get("alert_rule_test", []):
                (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    untested = sorted(r for r in records if not any(r in e for e in exprs))
    assert not untested, f"records without an exact-value test: {untested}"
    assert alerts <= firing, f"alerts never tested firing: {sorted(alerts - firing)}"
    assert alerts <= quiet, f"alerts never tested not firing: {sorted(alerts - quiet)}"
