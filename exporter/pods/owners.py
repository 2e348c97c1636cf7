"""Walk a pod's owner references up to its top owner: the ``workload`` label.

Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob, Pod -> StatefulSet / DaemonSet, and a bare pod
is its own workload. Intermediate owners are fetched through an injected ``lookup`` (a cache in
front of the Kubernetes API, never called at scrape time); ``lookup`` answers ``None`` for kinds it
does not fetch or objects it cannot get, and the walk stops at the last owner it knows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MAX_DEPTH = 6


@dataclass(frozen=True)
class OwnerRef:
    kind: str
    name: str
    controller: bool = False


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str


# (kind, namespace, name) -> that object's owner references, or None when unknown.
OwnerLookup = Callable[[str, str, str], Sequence[OwnerRef] | None]


def controller_of(owners: Sequence[OwnerRef]) -> OwnerRef | None:
    """The managing owner: the one marked ``controller``, else the first listed."""
    for ref in owners:
        if ref.controller:
            return ref
    return owners[0] if owners else None


def _deployment_from_replicaset(rs_name: str, template_hash: str | None) -> str | None:
    # A Deployment names its ReplicaSets "<deployment>-<pod-template-hash>" and stamps the hash on the
    # pods, so the Deployment is known even when the ReplicaSet cannot be fetched (RBAC, API down).
    if template_hash and rs_name.endswith("-" + template_hash):
        return rs_name[: -len(template_hash) - 1]
    return None


def resolve_workload(
    namespace: str,
    pod_name: str,
    owners: Sequence[OwnerRef],
    lookup: OwnerLookup,
    pod_template_hash: str | None = None,
) -> Workload:
    """The pod's top owner; ``Workload("Pod", pod_name)`` for a bare pod."""
    current = controller_of(owners)
    if current is None:
        return Workload("Pod", pod_name)
    for _ in range(MAX_DEPTH):
        parents = lookup(current.kind, namespace, current.name)
        if parents is None and current.kind == "ReplicaSet":
            deployment = _deployment_from_replicaset(current.name, pod_template_hash)
            return Workload("Deployment", deployment) if deployment else Workload(current.kind, current.name)
        parent = controller_of(parents or ())
        if parent is None:
            break
        current = parent
    return Workload(current.kind, current.name)


@dataclass(frozen=True)
class PodMeta:
    """What the exporter needs to know about a pod besides its devices (from the pod cache)."""

    workload: Workload
    ip: str | None
    annotations: Mapping[str, str]
    # Declared container ports: named ones by name, unnamed ones as "<container>:<port>".
    container_ports: Mapping[str, int]
    uid: str = ""
