"""The PrometheusRule and dashboard ConfigMap are generated from their sources and never drift."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tools import gen_prometheusrule as gen


def _copy_sources(tmp_path: Path) -> Path:
    for rel in (gen.RULES_DIR, gen.RULE_MANIFEST.parent, gen.DASHBOARD_CONFIGMAP.parent):
        shutil.copytree(gen.REPO / rel, tmp_path / rel, dirs_exist_ok=True)
    return tmp_path


def test_committed_manifests_are_up_to_date() -> None:
    assert gen.main(["--check"]) == 0, "run `make rules-manifest` and commit the result"


def test_prometheusrule_holds_exactly_the_rule_files_groups() -> None:
    manifest = yaml.safe_load((gen.REPO / gen.RULE_MANIFEST).read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    groups = [g for p in gen.rule_files(gen.REPO) for g in yaml.safe_load(p.read_text())["groups"]]
    assert manifest["spec"]["groups"] == groups


def test_dashboard_configmap_carries_the_json_and_the_sidecar_label() -> None:
    cm = yaml.safe_load((gen.REPO / gen.DASHBOARD_CONFIGMAP).read_text())
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = cm["data"][gen.DASHBOARD_JSON.name]
    assert json.loads(text) == json.loads((gen.REPO / gen.DASHBOARD_JSON).read_text())


def test_manifests_dashboard_is_a_copy_of_the_packaged_one() -> None:
    assert (gen.REPO / gen.DASHBOARD_COPY).read_bytes() == (gen.REPO / gen.DASHBOARD_JSON).read_bytes()


@pytest.mark.parametrize(
    "source",
    [gen.RULES_DIR / "workload.rules.yaml", gen.DASHBOARD_JSON, gen.DASHBOARD_COPY],
    ids=["rule-source", "dashboard-source", "dashboard-copy-edited-by-hand"],
)
def test_check_fails_on_drift_and_regeneration_fixes_it(
    tmp_path: Path, source: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy_sources(tmp_path)
    path = root / source
    path.write_text(path.read_text().replace("[5m]", "[6m]", 1).replace("now-6h", "now-3h"))
    assert gen.main(["--check", "--root", str(root)]) == 1
    assert "out of date" in caplog.text
    assert gen.main(["--root", str(root)]) == 0
    assert gen.main(["--check", "--root", str(root)]) == 0


def test_broken_source_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _copy_sources(tmp_path)
    (root / gen.RULES_DIR / "broken.yaml").write_text("rules: []\n")
    assert gen.main(["--check", "--root", str(root)]) == 2
    assert "no top-level 'groups' list" in caplog.text
