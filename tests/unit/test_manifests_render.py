"""Every kustomization under manifests/ renders with ``kubectl kustomize``, and every object it renders is
valid.

Kubernetes' own kinds are validated offline and strictly (unknown fields are errors) with
kubernetes-validate's bundled schemas; ScaledObjects against KEDA's CRD schema from ../shared; the
Prometheus Operator's, KEDA's TriggerAuthentication's and cert-manager's kinds, which have no schema
here, by their required fields.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.manifests import MANIFESTS, REPO, Doc, KustomizeError, build, kustomization_dirs

# The oldest Kubernetes the manifests support, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]

# ../shared next to the checkout; a helper worktree (/work/wt/<name>) has it one level further up.
_KEDA_CANDIDATES = [
    base / "shared" / "schemas" / "keda.sh_scaledobjects.yaml" for base in (REPO.parent, REPO.parent.parent)
]
KEDA_CRD = next((p for p in _KEDA_CANDIDATES if p.exists()), _KEDA_CANDIDATES[0])

TLS_PARAMETERS = {"caCert", "tlsClientCert", "tlsClientKey"}


def _all_objects() -> list[tuple[str, Doc]]:
    return [(str(d.relative_to(REPO)), doc) for d in kustomization_dirs() for doc in build(d)]


def _ids(objects: list[tuple[str, Doc]]) -> list[str]:
    return [f"{where}:{doc['kind']}/{doc['metadata']['name']}" for where, doc in objects]


OBJECTS = _all_objects()
BUILTIN = [
    (w, d) for w, d in OBJECTS if "." not in d["apiVersion"].split("/")[0] or ".k8s.io/" in d["apiVersion"]
]


def test_every_kustomization_renders_something() -> None:
    dirs = kustomization_dirs()
    expected = {
        "base",
        "dashboards",
        "examples",
        "examples/vllm",
        "examples/vllm-enforce",
        "examples/scaler-tls",
    }
    assert {str(d.relative_to(MANIFESTS)) for d in dirs} >= expected
    for d in dirs:
        assert build(d), f"{d} renders no object"


def _holds_kubernetes_objects(path: Path) -> bool:
    """Object manifests, not configuration files for a program (an Alertmanager config, say)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return bool(docs) and all(isinstance(d, dict) and {"apiVersion", "kind"} <= d.keys() for d in docs)


def test_every_yaml_file_is_listed_by_a_kustomization() -> None:
    listed: set[Path] = set()
    for d in kustomization_dirs():
        k = yaml.safe_load((d / "kustomization.yaml").read_text())
        listed.update((d / r).resolve() for r in k.get("resources", []))
        listed.update((d / p["path"]).resolve() for p in k.get("patches", []) if "path" in p)
        listed.update((d / t).resolve() for t in k.get("transformers", []) if "\n" not in t)  # else inline
    files = {
        p.resolve()
        for p in MANIFESTS.rglob("*.yaml")
        if p.name != "kustomization.yaml" and _holds_kubernetes_objects(p)
    }
    assert len(files) >= 15, "the object manifests are found"
    assert files - listed == set(), "manifests no kustomization applies"


@pytest.mark.parametrize(("where", "doc"), BUILTIN, ids=_ids(BUILTIN))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_validate_strictly(where: str, doc: Doc, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(next(d for _, d in OBJECTS if d["kind"] == "DaemonSet"))
    broken["spec"]["template"]["spec"]["tolerationz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def _keda_schema() -> dict[str, Any]:
    if not KEDA_CRD.exists():
        pytest.skip(f"KEDA CRD schema not found at {KEDA_CRD} (the shared schemas folder is absent)")
    crd = yaml.safe_load(KEDA_CRD.read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


SCALED_OBJECTS = [(w, d) for w, d in OBJECTS if d["kind"] == "ScaledObject"]


@pytest.mark.parametrize(("where", "doc"), SCALED_OBJECTS, ids=_ids(SCALED_OBJECTS))
def test_scaledobjects_validate_against_keda_crd(where: str, doc: Doc) -> None:
    jsonschema.validate(doc, _keda_schema())


def test_keda_schema_catches_a_bad_fallback() -> None:
    broken = copy.deepcopy(SCALED_OBJECTS[0][1])
    broken["spec"]["fallback"]["replicas"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _keda_schema())


def _check_service_monitor(doc: Doc) -> None:
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"], "a ServiceMonitor selects its Services"
    assert spec["endpoints"], "a ServiceMonitor has endpoints"
    for ep in spec["endpoints"]:
        assert isinstance(ep["port"], str), "endpoints name the Service port"
        # The exporter's and scaler's namespace/pod/workload labels describe the workload (docs/kpis.md).
        assert ep.get("honorLabels") is True, f"{doc['metadata']['name']}: honorLabels must be true"


def _check_pod_monitor(doc: Doc) -> None:
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"]
    assert spec["podMetricsEndpoints"]
    for ep in spec["podMetricsEndpoints"]:
        assert isinstance(ep["port"], str)
        # The sidecar's namespace/pod are the target's (docs/powercap.md): never honor its labels.
        assert ep.get("honorLabels") is not True


def _check_prometheus_rule(doc: Doc) -> None:
    groups = doc["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule), rule
            assert rule["expr"]


def _check_trigger_authentication(doc: Doc) -> None:
    refs = doc["spec"]["secretTargetRef"]
    assert {r["parameter"] for r in refs} <= TLS_PARAMETERS | {"bearerToken"}
    assert all(r["name"] and r["key"] for r in refs)


def _check_certificate(doc: Doc) -> None:
    spec = doc["spec"]
    assert spec["secretName"]
    assert spec["issuerRef"]["kind"] in {"Issuer", "ClusterIssuer"} and spec["issuerRef"]["name"]
    assert spec.get("dnsNames") or spec.get("commonName")


def _check_cluster_issuer(doc: Doc) -> None:
    assert len(set(doc["spec"]) & {"selfSigned", "ca", "acme", "vault"}) == 1


STRUCTURAL_CHECKS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _check_service_monitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): _check_pod_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _check_prometheus_rule,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _check_trigger_authentication,
    ("cert-manager.io/v1", "Certificate"): _check_certificate,
    ("cert-manager.io/v1", "ClusterIssuer"): _check_cluster_issuer,
}
CUSTOM = [(w, d) for w, d in OBJECTS if (w, d) not in BUILTIN and d["kind"] != "ScaledObject"]


@pytest.mark.parametrize(("where", "doc"), CUSTOM, ids=_ids(CUSTOM))
def test_custom_resources_have_their_required_fields(where: str, doc: Doc) -> None:
    check = STRUCTURAL_CHECKS.get((doc["apiVersion"], doc["kind"]))
    assert check is not None, f"no check for {doc['apiVersion']} {doc['kind']}: add one"
    assert doc["metadata"]["name"]
    check(doc)


def test_a_service_monitor_without_honor_labels_is_refused() -> None:
    broken = copy.deepcopy(next(d for _, d in OBJECTS if d["kind"] == "ServiceMonitor"))
    broken["spec"]["endpoints"] = [{"port": "metrics"}]
    with pytest.raises(AssertionError, match="honorLabels"):
        _check_service_monitor(broken)


def test_a_kustomization_kubectl_refuses_fails_with_kubectls_reason(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(KustomizeError, match=r"missing\.yaml"):
        build(tmp_path)


def test_the_enforce_patch_merges_into_the_sidecar_by_key() -> None:
    """kustomize's strategic merge: env by name (replaced, not doubled), null deletes the field."""
    (deployment,) = [d for d in build(MANIFESTS / "examples/vllm-enforce") if d["kind"] == "Deployment"]
    sidecar = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "eo-powercap"
    )
    dry_run = [e for e in sidecar["env"] if e["name"] == "EO_DRY_RUN"]
    assert dry_run == [{"name": "EO_DRY_RUN", "value": "false"}]
    assert "EO_GPU_UUIDS_FILE" in {e["name"] for e in sidecar["env"]}, "the base's variables stay"
    assert "allowPrivilegeEscalation" not in sidecar["securityContext"]
    assert [e for e in sidecar["env"] if e["name"] == "EO_APPLY_VIA"] == [
        {"name": "EO_APPLY_VIA", "value": "direct"}
    ]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert "energy-orchestrator.io/power-agent" not in annotations, "null deletes the opt-in"
    assert annotations["energy-orchestrator.io/server"] == "vllm", "the other annotations stay"


EXPORTER_NAMESPACE = "energy-orchestrator-node"
SCALER_NAMESPACE = "energy-orchestrator"


def test_base_objects_carry_the_part_of_label_and_namespace() -> None:
    for doc in build(MANIFESTS / "base"):
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "energy-orchestrator", doc["kind"]
        if doc["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            exporter = doc["metadata"]["labels"].get("app.kubernetes.io/component") == "exporter"
            wanted = EXPORTER_NAMESPACE if exporter else SCALER_NAMESPACE
            assert doc["metadata"]["namespace"] == wanted, (doc["kind"], doc["metadata"]["name"])
