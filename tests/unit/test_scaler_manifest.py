"""The example ScaledObject is valid against KEDA's CRD schema and its trigger metadata parses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scaler.metadata import parse_metadata

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "scaledobject.yaml"
# ../shared next to the checkout; a helper worktree (/work/wt/<name>) has it one level further up.
_CANDIDATES = [
    base / "shared" / "schemas" / "keda.sh_scaledobjects.yaml" for base in (REPO.parent, REPO.parent.parent)
]
CRD = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0])


def _scaledobject() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    return next(d for d in docs if d["kind"] == "ScaledObject")


def _schema() -> dict[str, Any]:
    if not CRD.exists():
        pytest.skip(f"KEDA CRD schema not found at {CRD} (the shared schemas folder is absent)")
    crd = yaml.safe_load(CRD.read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_example_validates_against_keda_crd() -> None:
    jsonschema.validate(_scaledobject(), _schema())


def test_schema_catches_a_broken_scaledobject() -> None:
    broken = _scaledobject()
    del broken["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_example_trigger_metadata_parses_and_mirrors_bounds() -> None:
    so = _scaledobject()
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "external"
    config = parse_metadata(trigger["metadata"], default_namespace=so["metadata"]["namespace"])
    assert config.min_replicas == so["spec"]["minReplicaCount"]
    assert config.max_replicas == so["spec"]["maxReplicaCount"]
    assert all(isinstance(v, str) for v in trigger["metadata"].values())
