"""The manifests as the cluster would receive them: rendered by the real ``kubectl kustomize``.

``build(directory)`` runs ``kubectl kustomize`` (kustomize v5, embedded in kubectl ≥ 1.27) once per
directory and test session and parses the YAML stream; where kubectl is not on PATH the tests that need a
render are skipped with a reason that says so. ``pod_security_violations`` checks a pod spec against the
Pod Security Standards' "baseline" and "restricted" levels, the rules the API server's Pod Security
admission enforces for a namespace's ``pod-security.kubernetes.io/enforce`` label.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"

Doc = dict[str, Any]

NO_KUBECTL = (
    "kubectl is not on PATH: the manifest tests render every kustomization with `kubectl kustomize` "
    "(kubectl >= 1.27, which embeds kustomize v5)"
)
RENDER_TIMEOUT_S = 60


class KustomizeError(RuntimeError):
    """``kubectl kustomize`` refused a kustomization; the message carries kubectl's own error."""


@cache
def _render(directory: Path) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # allow_module_level: the manifest test modules render at import time to parametrize their tests.
        pytest.skip(NO_KUBECTL, allow_module_level=True)
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def build(directory: Path) -> list[Doc]:
    """The objects ``kubectl kustomize directory`` prints, as fresh copies (callers may change them)."""
    return copy.deepcopy(list(_render(directory.resolve())))


def kustomization_dirs() -> list[Path]:
    """Every kustomization under manifests/ (each one must render on its own)."""
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec of a workload object, or None for other kinds."""
    if doc["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}:
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    return None


def enforced_level(namespace: Doc) -> str | None:
    """The Pod Security level a Namespace object enforces, None when it sets none."""
    level: str | None = namespace["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
    return level


# --- Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards, "latest") ---

LEVELS = ("privileged", "baseline", "restricted")

# Capabilities "baseline" lets a container add: the container runtimes' default set.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _all_containers(spec: Doc) -> list[Doc]:
    return [
        *spec.get("initContainers", []),
        *spec["containers"],
        *spec.get("ephemeralContainers", []),
    ]


def _capability(name: str) -> str:
    return name.removeprefix("CAP_")


def _baseline_violations(spec: Doc) -> set[str]:
    found = set()
    pod_sc: Doc = spec.get("securityContext", {})
    if any(spec.get(field) for field in ("hostNetwork", "hostPID", "hostIPC")):
        found.add("host namespaces")
    if any("hostPath" in volume for volume in spec.get("volumes", [])):
        found.add("hostPath volumes")
    if {s["name"] for s in pod_sc.get("sysctls", [])} - SAFE_SYSCTLS:
        found.add("sysctls")
    contexts = [pod_sc] + [c.get("securityContext", {}) for c in _all_containers(spec)]
    for sc in contexts:
        if sc.get("windowsOptions", {}).get("hostProcess"):
            found.add("hostProcess")
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            found.add("seccompProfile")
        if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
            found.add("appArmorProfile")
        selinux = sc.get("seLinuxOptions", {})
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.add("seLinuxOptions")
    for container in _all_containers(spec):
        sc = container.get("securityContext", {})
        if sc.get("privileged"):
            found.add("privileged")
        added = {_capability(c) for c in sc.get("capabilities", {}).get("add", [])}
        if added - BASELINE_CAPABILITIES:
            found.add("capabilities")
        if sc.get("procMount", "Default") != "Default":
            found.add("procMount")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.add("hostPort")
    return found


def _restricted_violations(spec: Doc) -> set[str]:
    found = set()
    pod_sc: Doc = spec.get("securityContext", {})
    for volume in spec.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUME_TYPES:
            found.add("volume types")
    if pod_sc.get("runAsUser") == 0:
        found.add("runAsUser")
    for container in _all_containers(spec):
        sc = container.get("securityContext", {})
        # A container's own setting overrides the pod's; both unset is a violation.
        if sc.get("allowPrivilegeEscalation") is not False:
            found.add("allowPrivilegeEscalation")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            found.add("runAsNonRoot")
        if sc.get("runAsUser") == 0:
            found.add("runAsUser")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
            found.add("seccompProfile")
        capabilities = sc.get("capabilities", {})
        dropped = {_capability(c) for c in capabilities.get("drop", [])}
        added = {_capability(c) for c in capabilities.get("add", [])}
        if "ALL" not in dropped or added - RESTRICTED_CAPABILITIES:
            found.add("capabilities")
    return found


def pod_security_violations(spec: Doc, level: str) -> set[str]:
    """The Pod Security rules of ``level`` that the pod spec breaks (names as in the standard's tables)."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}; one of {LEVELS}")
    if level == "privileged":
        return set()
    found = _baseline_violations(spec)
    if level == "restricted":
        found |= _restricted_violations(spec)
    return found


def least_level(spec: Doc) -> str:
    """The strictest Pod Security level the pod spec passes."""
    return next(level for level in reversed(LEVELS) if not pod_security_violations(spec, level))
