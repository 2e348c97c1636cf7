"""The manifests agree with the code they run and with each other.

Commands are the project's console scripts, every ``EO_*`` variable is one the binary reads (its own
``--help``) with a value its real settings parser accepts, paths lie on mounted volumes, ports in probes,
Services, monitors and NetworkPolicies exist, the ScaledObject's metadata parses with the scaler's own
parser and points at the scaler the base deploys, with the TLS material the base expects.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from exporter.settings import parse_settings as parse_exporter_settings
from nodeagent.main import load_settings as load_agent_settings
from powercap.main import load_settings as load_powercap_settings
from scaler.metadata import parse_metadata
from scaler.settings import parse_settings as parse_scaler_settings
from tests.support.manifests import MANIFESTS, REPO, Doc, build, pod_spec

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSOLE_SCRIPTS = set(PYPROJECT["project"]["scripts"])
IMAGE = "ghcr.io/energy-orchestrator/energy-orchestrator"

RENDERS = {name: build(MANIFESTS / name) for name in ("base", "examples", "examples/vllm-enforce")}
EVERYTHING = RENDERS["base"] + RENDERS["examples"]


def _containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc, Doc]]:
    """(workload, pod spec, container) for every container of every workload."""
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield doc, spec, container


ALL_CONTAINERS = [c for docs in RENDERS.values() for c in _containers(docs)]
OURS = [c for c in ALL_CONTAINERS if c[2]["image"].split(":")[0] == IMAGE]
IDS = [f"{w['metadata']['name']}/{c['name']}" for w, _, c in ALL_CONTAINERS]
OUR_IDS = [f"{w['metadata']['name']}/{c['name']}" for w, _, c in OURS]


def console_script(container: Doc) -> str:
    """The console script a container runs: its command, or what its ``sh -c`` script finally execs."""
    command = container["command"]
    if command[:2] == ["/bin/sh", "-c"]:
        last = command[2].strip().splitlines()[-1].strip()
        words = shlex.split(last)
        assert words[0] == "exec", f"the script must end by exec'ing the binary: {last!r}"
        return words[1]
    assert not container.get("args") or command[0] in CONSOLE_SCRIPTS
    return str(command[0])


@cache
def env_vars_read_by(script: str) -> frozenset[str]:
    """The EO_* variables the installed console script documents in its --help (one per flag)."""
    binary = Path(sys.executable).parent / script
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=True, timeout=60)
    return frozenset(re.findall(r"\bEO_[A-Z0-9_]+\b", out.stdout))


def eo_env(container: Doc) -> dict[str, str]:
    """EO_* variables set in the manifest; downward-API values become a plausible stand-in."""
    env = {}
    for item in container.get("env", []):
        if item["name"].startswith("EO_"):
            env[item["name"]] = item.get("value", "from-downward-api")
    return env


def test_there_are_containers_of_ours() -> None:
    assert {console_script(c) for _, _, c in OURS} == {
        "eo-exporter",
        "eo-scaler",
        "eo-powercap",
        "eo-node-agent",
    }


@pytest.mark.parametrize(("workload", "spec", "container"), OURS, ids=OUR_IDS)
def test_command_is_a_console_script_and_image_is_this_version(
    workload: Doc, spec: Doc, container: Doc
) -> None:
    assert console_script(container) in CONSOLE_SCRIPTS
    assert container["image"] == f"{IMAGE}:{PYPROJECT['project']['version']}"


@pytest.mark.parametrize(("workload", "spec", "container"), OURS, ids=OUR_IDS)
def test_every_eo_variable_is_read_by_the_binary(workload: Doc, spec: Doc, container: Doc) -> None:
    known = env_vars_read_by(console_script(container))
    assert len(known) > 5, "the --help output lists the EO_ variables"
    script = " ".join(container["command"][2:])
    used = set(eo_env(container)) | set(re.findall(r"\bEO_[A-Z0-9_]+\b", script))
    assert used - known == set(), f"{console_script(container)} does not read these"


def _with_files(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Point *_FILE variables at real (empty) files: the parsers check that they exist."""
    out = dict(env)
    for name in env:
        if name.endswith("_FILE"):
            path = tmp_path / name
            path.write_text("")
            out[name] = str(path)
    return out


@pytest.mark.parametrize(("workload", "spec", "container"), OURS, ids=OUR_IDS)
def test_values_parse_with_the_binarys_settings(
    workload: Doc, spec: Doc, container: Doc, tmp_path: Path
) -> None:
    env = _with_files(eo_env(container), tmp_path)
    script = console_script(container)
    if script == "eo-exporter":
        settings = parse_exporter_settings([], env)
        assert settings.port == 9102
    elif script == "eo-scaler":
        scaler = parse_scaler_settings([], env)
        assert (scaler.port, scaler.metrics_port) == (6000, 9103)
        assert scaler.tls_cert_file is not None
    elif script == "eo-node-agent":
        agent = load_agent_settings([], env)
        assert agent.port == 9105 and agent.kube_events == "on" and agent.node_name
        assert agent.namespaces == ("inference",), "the example's namespace is the one the agent honours"
    else:
        sidecar = load_powercap_settings([], env)
        assert sidecar.port == 9104 and sidecar.pod_name and sidecar.pod_namespace
        # Through the agent the sidecar has no token: the agent posts the Events on its pod.
        assert sidecar.kube_events == ("off" if sidecar.via_agent else "on")


def test_the_sidecar_enforces_through_the_agent_except_in_the_direct_overlay() -> None:
    modes = {}
    for name, docs in RENDERS.items():
        for _, _, container in _containers(docs):
            if container["name"] == "eo-powercap":
                sidecar = load_powercap_settings([], eo_env(container))
                modes[name] = (sidecar.apply_via, sidecar.dry_run)
    assert modes == {"examples": ("agent", False), "examples/vllm-enforce": ("direct", False)}


def test_the_agent_reads_the_sidecars_port_and_only_opted_in_pods_opt_in() -> None:
    (agent,) = [c for _, _, c in _containers(RENDERS["base"]) if c["name"] == "eo-node-agent"]
    port = load_agent_settings([], eo_env(agent)).request_port
    for name, want_opt_in in (("examples", True), ("examples/vllm-enforce", False)):
        (deployment,) = [d for d in RENDERS[name] if d["kind"] == "Deployment"]
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        assert (annotations.get("energy-orchestrator.io/power-agent") == "true") is want_opt_in, name
        (sidecar,) = [c for c in template["spec"]["containers"] if c["name"] == "eo-powercap"]
        assert port in {p["containerPort"] for p in sidecar["ports"]}


def _mounted(container: Doc) -> list[str]:
    return [m["mountPath"] for m in container.get("volumeMounts", [])]


@pytest.mark.parametrize(("workload", "spec", "container"), ALL_CONTAINERS, ids=IDS)
def test_mounts_have_volumes_and_paths_lie_on_mounts(workload: Doc, spec: Doc, container: Doc) -> None:
    volumes = {v["name"] for v in spec.get("volumes", [])}
    assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
    for name, value in eo_env(container).items():
        if value.startswith("/"):
            assert any(value == m or value.startswith(m.rstrip("/") + "/") for m in _mounted(container)), (
                f"{name}={value} is not on a mounted volume"
            )


def _port_names_and_numbers(containers: list[Doc]) -> set[str | int]:
    ports: set[str | int] = set()
    for c in containers:
        for p in c.get("ports", []):
            ports.add(p["containerPort"])
            if "name" in p:
                ports.add(p["name"])
    return ports


@pytest.mark.parametrize(("workload", "spec", "container"), ALL_CONTAINERS, ids=IDS)
def test_probe_ports_exist_on_the_container(workload: Doc, spec: Doc, container: Doc) -> None:
    ports = _port_names_and_numbers([container])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe:
            handler = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc")
            assert handler["port"] in ports, f"{kind} port {handler['port']}"
    for name in ("EO_PORT", "EO_METRICS_PORT", "EO_HEALTH_PORT"):
        if name in eo_env(container):
            assert int(eo_env(container)[name]) in ports, f"{name} is not a container port"


def _pods_selected(docs: list[Doc], namespace: str, labels: dict[str, str]) -> list[Doc]:
    """Containers of the workloads in ``namespace`` whose pod labels match ``labels``."""
    selected = []
    for doc, _, container in _containers(docs):
        pod_labels = doc["spec"]["template"]["metadata"]["labels"]
        if doc["metadata"]["namespace"] == namespace and labels.items() <= pod_labels.items():
            selected.append(container)
    return selected


def test_services_monitors_and_policies_reach_ports_that_exist() -> None:
    checked = 0
    for docs in RENDERS.values():
        for doc in docs:
            ns, kind = doc["metadata"].get("namespace"), doc["kind"]
            if kind == "Service":
                ports = _port_names_and_numbers(_pods_selected(docs, ns, doc["spec"]["selector"]))
                wanted = [p["targetPort"] for p in doc["spec"]["ports"]]
            elif kind == "PodMonitor":
                ports = _port_names_and_numbers(
                    _pods_selected(docs, ns, doc["spec"]["selector"]["matchLabels"])
                )
                wanted = [e["port"] for e in doc["spec"]["podMetricsEndpoints"]]
            elif kind == "NetworkPolicy":
                ports = _port_names_and_numbers(
                    _pods_selected(docs, ns, doc["spec"]["podSelector"]["matchLabels"])
                )
                wanted = [p["port"] for rule in doc["spec"]["ingress"] for p in rule["ports"]]
            elif kind == "ServiceMonitor":
                services = [
                    d
                    for d in docs
                    if d["kind"] == "Service"
                    and d["metadata"]["namespace"] == ns
                    and doc["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
                ]
                ports = {p["name"] for s in services for p in s["spec"]["ports"]}
                wanted = [e["port"] for e in doc["spec"]["endpoints"]]
            else:
                continue
            assert wanted and set(wanted) <= ports, (
                f"{kind} {doc['metadata']['name']}: {wanted} not in {ports}"
            )
            checked += 1
    assert checked >= 10


def _one(docs: list[Doc], kind: str, name: str, namespace: str | None = None) -> Doc:
    found = [
        d
        for d in docs
        if d["kind"] == kind and d["metadata"]["name"] == name and d["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"{kind} {namespace}/{name}: found {len(found)}"
    return found[0]


def _scaler_env() -> dict[str, str]:
    return eo_env(
        _one(RENDERS["base"], "Deployment", "eo-scaler", "energy-orchestrator")["spec"]["template"]["spec"][
            "containers"
        ][0]
    )


SCALED_OBJECTS = [d for d in RENDERS["examples"] if d["kind"] == "ScaledObject"]


@pytest.mark.parametrize("so", SCALED_OBJECTS, ids=[d["metadata"]["name"] for d in SCALED_OBJECTS])
def test_scaledobject_drives_the_example_through_the_base_scaler(so: Doc) -> None:
    ns = so["metadata"]["namespace"]
    spec = so["spec"]
    target = _one(
        RENDERS["examples"],
        spec["scaleTargetRef"].get("kind", "Deployment"),
        spec["scaleTargetRef"]["name"],
        ns,
    )
    assert spec["fallback"]["failureThreshold"] >= 1 and spec["fallback"]["replicas"] >= 1
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "external" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    config = parse_metadata(meta, default_namespace=ns)  # the scaler's own parser
    assert config.workload == target["metadata"]["name"]
    assert (config.min_replicas, config.max_replicas) == (spec["minReplicaCount"], spec["maxReplicaCount"])

    host, port = meta["scalerAddress"].rsplit(":", 1)
    service_name, service_ns = host.split(".")[:2]
    service = _one(RENDERS["base"], "Service", service_name, service_ns)
    assert service["spec"].get("clusterIP") == "None", "headless: KEDA round-robins over DNS answers"
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}

    scaler = _scaler_env()
    if scaler.get("EO_RESTRICT_SERVER_ADDRESS") == "true" and "serverAddress" in meta:
        assert meta["serverAddress"].rstrip("/") == scaler["EO_PROMETHEUS_URL"].rstrip("/")
    assert urlsplit(meta.get("serverAddress", scaler["EO_PROMETHEUS_URL"])).scheme in {"http", "https"}

    for container in target["spec"]["template"]["spec"]["containers"]:
        if container["name"] == "eo-powercap":
            assert float(eo_env(container)["EO_LATENCY_TARGET_SECONDS"]) == config.latency_slo_s


def test_tls_material_matches_between_keda_the_scaler_and_the_certificates() -> None:
    scaler = _scaler_env()
    assert "EO_TLS_CERT_FILE" in scaler, "the base scaler serves TLS"
    pod = _one(RENDERS["base"], "Deployment", "eo-scaler", "energy-orchestrator")["spec"]["template"]["spec"]
    secret = next(v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v)
    certificates = {
        (d["metadata"]["namespace"], d["spec"]["secretName"]): d
        for d in EVERYTHING
        if d["kind"] == "Certificate"
    }
    server_cert = certificates[("energy-orchestrator", secret)]
    assert SCALED_OBJECTS
    for so in SCALED_OBJECTS:
        (trigger,) = so["spec"]["triggers"]
        assert trigger["metadata"]["enableTLS"] == "true", "the base scaler speaks TLS only"
        assert trigger["metadata"]["scalerAddress"].rsplit(":", 1)[0] in server_cert["spec"]["dnsNames"]
        ns = so["metadata"]["namespace"]
        auth = _one(EVERYTHING, "TriggerAuthentication", trigger["authenticationRef"]["name"], ns)
        params = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        mutual = "EO_TLS_CLIENT_CA_FILE" in scaler
        assert ({"caCert", "tlsClientCert", "tlsClientKey"} if mutual else {"caCert"}) <= set(params)
        for ref in params.values():
            client_cert = certificates[(ns, ref["name"])]
            assert client_cert["spec"]["issuerRef"] == server_cert["spec"]["issuerRef"], "one CA for both"
            assert ref["key"] in {"ca.crt", "tls.crt", "tls.key"}


@pytest.mark.parametrize(("workload", "spec", "container"), OURS, ids=OUR_IDS)
def test_our_containers_hold_the_least_privilege(workload: Doc, spec: Doc, container: Doc) -> None:
    sc = container["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert not sc.get("privileged")
    added = set(sc["capabilities"].get("add", []))
    # The API server refuses allowPrivilegeEscalation: false next to privileged or CAP_SYS_ADMIN.
    script = console_script(container)
    if added & {"SYS_ADMIN", "CAP_SYS_ADMIN"}:
        assert added == {"SYS_ADMIN"}
        assert "allowPrivilegeEscalation" not in sc
        # Only what calls NVML setters: the node agent, or a sidecar in direct mode.
        assert script == "eo-node-agent" or (
            eo_env(container)["EO_DRY_RUN"] == "false" and eo_env(container)["EO_APPLY_VIA"] == "direct"
        )
    else:
        assert added == set() and sc["allowPrivilegeEscalation"] is False
    runs_as_root = sc.get("runAsUser", spec.get("securityContext", {}).get("runAsUser")) == 0
    # Root only where a root-owned file must be read (RAPL, kubelet socket) or NVML setters are used.
    assert runs_as_root == (script == "eo-exporter" or bool(added))


def test_rbac_is_what_the_docs_say_and_binds_existing_service_accounts() -> None:
    rules = {}
    # The examples are applied on top of the base: a binding there may name the base's accounts.
    accounts = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for docs in RENDERS.values()
        for d in docs
        if d["kind"] == "ServiceAccount"
    }
    for docs in RENDERS.values():
        for doc in docs:
            if doc["kind"] in {"Role", "ClusterRole"}:
                rules[doc["metadata"]["name"]] = [
                    (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in doc["rules"]
                ]
            if doc["kind"] in {"RoleBinding", "ClusterRoleBinding"}:
                for subject in doc["subjects"]:
                    assert (subject["namespace"], subject["name"]) in accounts, subject
    assert rules["eo-exporter"] == [  # docs/pods.md, "RBAC"
        (("",), ("pods",), ("get", "list", "watch")),
        (("apps",), ("replicasets",), ("get",)),
        (("batch",), ("jobs",), ("get",)),
    ]
    assert rules["eo-powercap-events"] == [(("",), ("events",), ("create",))]  # docs/powercap.md
    assert rules["eo-node-agent-events"] == [(("",), ("events",), ("create",))]
    bindings = {
        name: [(d["metadata"]["namespace"], d["roleRef"]["name"]) for d in docs if d["kind"] == "RoleBinding"]
        for name, docs in RENDERS.items()
    }
    # The agent may post Events only where a namespace binds it; the direct overlay binds it nowhere.
    assert ("inference", "eo-node-agent-events") in bindings["examples"]
    assert ("inference", "eo-node-agent-events") not in bindings["examples/vllm-enforce"]
    assert not [d for docs in RENDERS.values() for d in docs if d["kind"] == "ClusterRoleBinding"
                and d["roleRef"]["name"] == "eo-node-agent-events"], "never cluster-wide"  # fmt: skip
    scaler_pod = _one(RENDERS["base"], "Deployment", "eo-scaler", "energy-orchestrator")["spec"]["template"][
        "spec"
    ]
    assert scaler_pod["automountServiceAccountToken"] is False, "the scaler never calls the Kubernetes API"


def test_every_workload_runs_as_a_service_account_of_its_own_namespace() -> None:
    """A service account is namespaced: moving a workload without its account leaves the pod uncreated."""
    checked = 0
    for docs in RENDERS.values():
        accounts = {
            (d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "ServiceAccount"
        }
        for doc, spec, _ in _containers(docs):
            wanted = (doc["metadata"]["namespace"], spec.get("serviceAccountName", "default"))
            assert wanted in accounts, f"{doc['kind']} {doc['metadata']['name']}: no ServiceAccount {wanted}"
            checked += 1
    assert checked >= 3
