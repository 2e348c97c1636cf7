"""Pod Security: a namespace is exempt ("privileged") only where every pod in it needs the exemption.

Every Namespace the manifests create enforces a level, every pod passes its namespace's level, the
exporter and its node agent (hostPath mounts, the agent's CAP_SYS_ADMIN) are alone in the one privileged
namespace, the scaler's namespace is "restricted", the default install runs no privileged or root
container of ours in the users' namespaces, and the direct-mode overlay never emits, and so never
relabels, the namespace it deploys into.
The checks read the rendered manifests (``kubectl kustomize``) and apply the Pod Security Standards' rules
(tests/support/manifests.py), which the API server's Pod Security admission enforces.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest

from tests.support.manifests import (
    LEVELS,
    MANIFESTS,
    Doc,
    build,
    enforced_level,
    kustomization_dirs,
    least_level,
    pod_security_violations,
    pod_spec,
)

RENDERS = {str(d.relative_to(MANIFESTS)): build(d) for d in kustomization_dirs()}
EXPORTER_NAMESPACE = "energy-orchestrator-node"
SCALER_NAMESPACE = "energy-orchestrator"


def _workloads(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            yield doc, spec


def _one_workload(docs: list[Doc], name: str) -> tuple[Doc, Doc]:
    (found,) = [(w, s) for w, s in _workloads(docs) if w["metadata"]["name"] == name]
    return found


def namespace_findings(docs: list[Doc]) -> list[str]:
    """What is wrong with the Pod Security of the namespaces one render creates (empty when all is well)."""
    findings = []
    namespaces = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Namespace"}
    for name, namespace in namespaces.items():
        level = enforced_level(namespace)
        if level not in LEVELS:
            # Unlabelled, a namespace gets the cluster's default level, "privileged" unless configured.
            findings.append(f"namespace {name}: enforces no Pod Security level ({level!r})")
            continue
        pods = [(w, s) for w, s in _workloads(docs) if w["metadata"].get("namespace") == name]
        for workload, spec in pods:
            broken = pod_security_violations(spec, level)
            if broken:
                findings.append(f"{workload['metadata']['name']} breaks {name}'s {level!r}: {sorted(broken)}")
            if level == "privileged" and least_level(spec) != "privileged":
                findings.append(
                    f"namespace {name} is privileged but {workload['metadata']['name']} would pass "
                    f"{least_level(spec)!r}: it must not share the exemption"
                )
        if level == "privileged" and not pods:
            findings.append(f"namespace {name} is privileged and holds no pod that needs it")
    return findings


@pytest.mark.parametrize("where", sorted(RENDERS))
def test_namespaces_enforce_a_level_that_their_pods_pass_and_need(where: str) -> None:
    assert namespace_findings(RENDERS[where]) == []


def test_the_base_creates_the_two_namespaces_at_their_levels() -> None:
    levels = {d["metadata"]["name"]: enforced_level(d) for d in RENDERS["base"] if d["kind"] == "Namespace"}
    assert levels == {EXPORTER_NAMESPACE: "privileged", SCALER_NAMESPACE: "restricted"}


def test_the_exporter_needs_the_exemption_for_its_host_paths_and_the_agents_capability_only() -> None:
    daemonset, spec = _one_workload(RENDERS["base"], "eo-exporter")
    assert daemonset["metadata"]["namespace"] == EXPORTER_NAMESPACE
    # Nothing privileged: "baseline" would admit it but for the hostPath volumes and the agent's SYS_ADMIN.
    assert pod_security_violations(spec, "baseline") == {"hostPath volumes", "capabilities"}
    host_paths = {v["name"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {"rapl", "pod-resources", "cgroup", "powercap-state"}, "docs/install.md lists these"
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"eo-exporter", "eo-node-agent"}
    for container in containers.values():
        for mount in container.get("volumeMounts", []):
            if mount["name"] in host_paths and mount["name"] != "powercap-state":
                assert mount.get("readOnly") is True, f"{mount['name']} must be mounted read-only"
    # The exporter holds no capability and cannot write the state; the agent adds SYS_ADMIN alone.
    exporter, agent = containers["eo-exporter"], containers["eo-node-agent"]
    assert "add" not in exporter["securityContext"]["capabilities"]
    assert "powercap-state" not in {m["name"] for m in exporter["volumeMounts"]}
    assert agent["securityContext"]["capabilities"] == {"add": ["SYS_ADMIN"], "drop": ["ALL"]}
    assert not agent["securityContext"]["privileged"]


def _user_namespaces(docs: list[Doc]) -> set[str]:
    return {d["metadata"].get("namespace") for d in docs} - {EXPORTER_NAMESPACE, SCALER_NAMESPACE, None}


def default_install_findings(docs: list[Doc]) -> list[str]:
    """What in the users' namespaces needs more than it should: any pod beyond "baseline", any container
    privileged or adding a capability, and any container of ours running as root or escalating."""
    findings = []
    for workload, spec in _workloads(docs):
        if workload["metadata"].get("namespace") not in _user_namespaces(docs):
            continue
        name = workload["metadata"]["name"]
        if pod_security_violations(spec, "baseline"):
            findings.append(f"{name} is beyond baseline: {sorted(pod_security_violations(spec, 'baseline'))}")
        for container in spec["containers"]:
            sc = container.get("securityContext", {})
            if sc.get("privileged") or sc.get("capabilities", {}).get("add"):
                findings.append(f"{name}/{container['name']} is privileged or adds a capability")
            if container["image"].startswith("ghcr.io/energy-orchestrator/"):
                alone = {**spec, "containers": [container]}
                if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is not True:
                    findings.append(f"{name}/{container['name']} (ours) may run as root")
                if not sc.get("readOnlyRootFilesystem"):
                    findings.append(f"{name}/{container['name']} (ours) writes its root filesystem")
                broken = pod_security_violations(alone, "restricted") - {"volume types", "runAsNonRoot"}
                if broken:
                    findings.append(f"{name}/{container['name']} (ours) breaks restricted: {sorted(broken)}")
    return findings


def test_the_default_install_runs_no_privileged_or_root_container_of_ours_in_the_users_namespaces() -> None:
    docs = RENDERS["base"] + RENDERS["examples"]
    assert "inference" in _user_namespaces(docs)
    assert default_install_findings(docs) == []
    # ... and the check sees the direct overlay for what it is.
    direct = default_install_findings(RENDERS["base"] + RENDERS["examples/vllm-enforce"])
    assert any("beyond baseline" in f for f in direct) and any("may run as root" in f for f in direct)


def test_only_the_exporter_lives_in_the_privileged_namespace() -> None:
    in_node_namespace = {
        (d["kind"], d["metadata"]["name"])
        for docs in RENDERS.values()
        for d in docs
        if d["metadata"].get("namespace") == EXPORTER_NAMESPACE
    }
    assert in_node_namespace == {
        ("DaemonSet", "eo-exporter"),
        ("ServiceAccount", "eo-exporter"),
        ("Service", "eo-exporter"),
        ("ServiceMonitor", "eo-exporter"),
        ("NetworkPolicy", "eo-exporter"),
    }


def test_the_scaler_namespace_is_restricted_and_the_scaler_passes_it() -> None:
    deployment, spec = _one_workload(RENDERS["base"], "eo-scaler")
    assert deployment["metadata"]["namespace"] == SCALER_NAMESPACE
    (namespace,) = [
        d for d in RENDERS["base"] if d["kind"] == "Namespace" and d["metadata"]["name"] == SCALER_NAMESPACE
    ]
    assert enforced_level(namespace) == "restricted"
    assert pod_security_violations(spec, "restricted") == set()


def test_the_enforce_overlay_emits_no_namespace() -> None:
    docs = RENDERS["examples/vllm-enforce"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == []
    assert {d["metadata"].get("namespace") for d in docs} == {"inference"}


def test_the_direct_mode_sidecar_is_beyond_baseline_as_the_docs_say() -> None:
    """docs/install.md tells the operator that direct mode needs a namespace beyond "baseline"."""
    _, via_agent = _one_workload(RENDERS["examples/vllm"], "llama-chat")
    _, direct = _one_workload(RENDERS["examples/vllm-enforce"], "llama-chat")
    assert pod_security_violations(via_agent, "baseline") == set()
    assert pod_security_violations(direct, "baseline") == {"capabilities", "hostPath volumes"}
    install = (MANIFESTS.parent / "docs" / "install.md").read_text()
    assert "CAP_SYS_ADMIN" in install and "hostPath" in install and "baseline" in install


# --- the checks themselves can fail ---


def test_one_privileged_namespace_for_everything_is_refused() -> None:
    """The old layout: the scaler shared the exporter's privileged namespace."""
    docs = copy.deepcopy(RENDERS["base"])
    for doc in docs:
        if doc["metadata"].get("namespace") == SCALER_NAMESPACE:
            doc["metadata"]["namespace"] = EXPORTER_NAMESPACE
    findings = namespace_findings(docs)
    assert any("eo-scaler would pass 'restricted'" in f for f in findings), findings


def test_an_unlabelled_namespace_and_a_pod_beyond_its_level_are_refused() -> None:
    docs = copy.deepcopy(RENDERS["examples/vllm"])
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    namespace["metadata"]["labels"] = {}
    assert any("enforces no Pod Security level" in f for f in namespace_findings(docs))
    namespace["metadata"]["labels"] = {"pod-security.kubernetes.io/enforce": "restricted"}
    assert any("llama-chat breaks inference's 'restricted'" in f for f in namespace_findings(docs))


def _scaler_pod() -> Doc:
    return copy.deepcopy(_one_workload(RENDERS["base"], "eo-scaler")[1])


def _container_sc(pod: Doc) -> Doc:
    sc: Doc = pod["containers"][0]["securityContext"]
    return sc


BREAKS = {
    "privileged": (lambda p: _container_sc(p).update(privileged=True), "baseline", "privileged"),
    "SYS_ADMIN": (
        lambda p: _container_sc(p)["capabilities"].update(add=["SYS_ADMIN"]),
        "baseline",
        "capabilities",
    ),
    "hostNetwork": (lambda p: p.update(hostNetwork=True), "baseline", "host namespaces"),
    "hostPath": (
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "baseline",
        "hostPath volumes",
    ),
    "hostPort": (lambda p: p["containers"][0]["ports"][0].update(hostPort=6000), "baseline", "hostPort"),
    "seccomp Unconfined": (
        lambda p: _container_sc(p).update(seccompProfile={"type": "Unconfined"}),
        "baseline",
        "seccompProfile",
    ),
    "root UID": (lambda p: _container_sc(p).update(runAsUser=0), "restricted", "runAsUser"),
    "runAsNonRoot false": (
        lambda p: _container_sc(p).update(runAsNonRoot=False),
        "restricted",
        "runAsNonRoot",
    ),
    "escalation": (
        lambda p: _container_sc(p).pop("allowPrivilegeEscalation"),
        "restricted",
        "allowPrivilegeEscalation",
    ),
    "no drop ALL": (lambda p: _container_sc(p).pop("capabilities"), "restricted", "capabilities"),
    "no seccomp": (lambda p: p["securityContext"].pop("seccompProfile"), "restricted", "seccompProfile"),
    "hostPath is not a restricted volume type": (
        lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "restricted",
        "volume types",
    ),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_rule_catches_a_pod_that_breaks_it(name: str) -> None:
    change, level, rule = BREAKS[name]
    pod = _scaler_pod()
    assert pod_security_violations(pod, "restricted") == set()
    change(pod)
    assert rule in pod_security_violations(pod, level)
    assert least_level(pod) != "restricted"
