"""The example's sidecar runs the clock governor on the ScaledObject's own objectives: its TTFT and ITL
targets are the trigger's SLOs (the share set once), its bridge asks about the trigger's workload at the
trigger's Prometheus, and the settings the binary derives from the manifest say so."""

from __future__ import annotations

from typing import Any

import pytest

from powercap.main import load_settings
from scaler.metadata import parse_metadata
from tests.support.manifests import MANIFESTS, Doc, build, pod_spec

RENDERED = {name: build(MANIFESTS / name) for name in ("examples", "examples/vllm-enforce")}


def _sidecars(docs: list[Doc]) -> list[tuple[Doc, dict[str, str]]]:
    out = []
    for doc in docs:
        spec = pod_spec(doc)
        for container in spec["containers"] if spec else []:
            if container["name"] == "eo-powercap":
                env = {
                    e["name"]: e.get("value", "from-downward-api")
                    for e in container.get("env", [])
                    if e["name"].startswith("EO_")
                }
                out.append((doc, env))
    return out


def _trigger() -> dict[str, Any]:
    (so,) = [d for d in RENDERED["examples"] if d["kind"] == "ScaledObject"]
    (trigger,) = so["spec"]["triggers"]
    return {"meta": trigger["metadata"], "namespace": so["metadata"]["namespace"]}


@pytest.mark.parametrize("overlay", sorted(RENDERED))
def test_the_sidecar_governs_clocks_on_the_triggers_objectives(overlay: str) -> None:
    trigger = _trigger()
    meta = trigger["meta"]
    config = parse_metadata(meta, default_namespace=trigger["namespace"])
    ((deployment, env),) = _sidecars(RENDERED[overlay])
    sidecar = load_settings([], {k: v for k, v in env.items() if not k.endswith("_FILE")})
    assert sidecar.governs and sidecar.actuator == "clocks"
    assert 0 < sidecar.target_share <= 1
    # The targets are the trigger's SLOs where it states them (the share applies on top).
    if "ttftSloSeconds" in meta:
        assert sidecar.ttft_target_s == float(meta["ttftSloSeconds"])
    if "itlSloSeconds" in meta:
        assert sidecar.itl_target_s == float(meta["itlSloSeconds"])
    assert sidecar.ttft_target_s is not None or sidecar.itl_target_s is not None
    # The bridge asks eo-scaler about this very workload, at the Prometheus the trigger reads.
    assert sidecar.workload == config.workload == deployment["metadata"]["name"]
    assert sidecar.scale_up_source == "scaler"
    assert sidecar.prometheus_url.rstrip("/") == meta["serverAddress"].rstrip("/")
