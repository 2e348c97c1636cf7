"""A background cache of this node's pods and their top owners, fed by the Kubernetes API.

Informer-like: list the pods with ``fieldSelector=spec.nodeName=<node>``, then watch from the list's
resourceVersion, relisting when the watch expires (410 Gone) or fails. Owners above the pod
(ReplicaSets, Jobs) are fetched with GET when a pod is added or changes, and cached with a TTL. All of
it runs on the cache's own thread: a scrape only reads a dict. Every call goes through
``common.kube.KubeClient`` (deadlines, size caps, a cap per watch event).

The API's JSON is read defensively: a pod whose fields have unexpected types loses only those fields
(no IP, no ports), and an object without a namespace or name is skipped.

RBAC: get/list/watch on ``pods``; get on ``replicasets`` (apps) and ``jobs`` (batch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from common.kube import KubeApiError, KubeClient, ResourceExpired, path_segment
from exporter.pods.accounting import PodKey
from exporter.pods.owners import OwnerRef, PodMeta, resolve_workload

log = logging.getLogger(__name__)

PODS_PATH = "/api/v1/pods"
_OWNER_PATHS = {
    "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
}
# Owners cached at once; expired entries are dropped when the cache grows past this.
_OWNER_CACHE_MAX = 4096


class _Stopping(Exception):
    """Raised from a watch callback to end the watch when the cache stops."""


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sequence(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> dict[str, str]:
    return {k: v for k, v in _mapping(value).items() if isinstance(k, str) and isinstance(v, str)}


def _owner_refs(metadata: dict[str, Any]) -> tuple[OwnerRef, ...]:
    refs = []
    for item in _sequence(metadata.get("ownerReferences")):
        ref = _mapping(item)
        kind, name = ref.get("kind"), ref.get("name")
        if isinstance(kind, str) and isinstance(name, str):
            refs.append(OwnerRef(kind, name, ref.get("controller") is True))
    return tuple(refs)


def _container_ports(pod: dict[str, Any]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for item in _sequence(_mapping(pod.get("spec")).get("containers")):
        container = _mapping(item)
        for entry in _sequence(container.get("ports")):
            port = _mapping(entry)
            number = port.get("containerPort")
            if not isinstance(number, int) or isinstance(number, bool):
                continue
            name = port.get("name")
            ports[name if isinstance(name, str) and name else f"{container.get('name')}:{number}"] = number
    return ports


def _key(pod: dict[str, Any]) -> PodKey | None:
    metadata = _mapping(pod.get("metadata"))
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return PodKey(namespace, name)
    return None


class KubePodCache:
    def __init__(
        self,
        api: KubeClient,
        node_name: str,
        owner_ttl_s: float = 600.0,
        error_ttl_s: float = 30.0,
        watch_timeout_s: int = 300,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._selector = f"spec.nodeName={node_name}"
        self._owner_ttl_s = owner_ttl_s
        self._error_ttl_s = error_ttl_s
        self._watch_timeout_s = watch_timeout_s
        self._retry_s = retry_s
        self._clock = clock
        self._pods: dict[PodKey, PodMeta] = {}
        self._owners: dict[tuple[str, str, str], tuple[float, tuple[OwnerRef, ...] | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reads (any thread, never blocking on the API) -----------------------------------------------
    def get(self, key: PodKey) -> PodMeta | None:
        with self._lock:
            return self._pods.get(key)

    def wait_synced(self, timeout_s: float) -> bool:
        return self._synced.wait(timeout_s)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> KubePodCache:
        self._thread = threading.Thread(target=self._run, name="eo-kube-pods", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread: a watch ends at its next event, else at its deadline (the thread is a
        daemon; this waits at most 5 s for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._api.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                while not self._stop.is_set():
                    started = self._clock()
                    version = self._watch_from(version)
                    if self._clock() - started < 1.0:
                        # A watch that ends at once (proxy, overloaded API server): do not spin.
                        self._stop.wait(1.0)
            except _Stopping:
                return
            except ResourceExpired:
                log.info("pod watch expired (410 Gone); relisting")
            except KubeApiError as exc:
                log.warning("Kubernetes API error: %s; retrying in %.0f s", exc, self._retry_s)
                self._stop.wait(self._retry_s)
            except Exception as exc:
                log.warning("Kubernetes API unreachable (%s); retrying in %.0f s", exc, self._retry_s)
                self._stop.wait(self._retry_s)

    def _list(self) -> str:
        pods = self._api.list(PODS_PATH, {"fieldSelector": self._selector})
        fresh: dict[PodKey, PodMeta] = {}
        for pod in pods.items:
            key = _key(pod)
            if key is not None:
                fresh[key] = self._meta(key, pod)
        with self._lock:
            self._pods = fresh
        self._synced.set()
        log.info("pod cache synced: %d pods on this node", len(fresh))
        return pods.resource_version

    def _watch_from(self, version: str) -> str:
        params = {"fieldSelector": self._selector, "resourceVersion": version}
        return self._api.watch(PODS_PATH, params, self._on_event, timeout_s=self._watch_timeout_s)

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        if self._stop.is_set():
            raise _Stopping
        key = _key(pod)
        if key is None:
            return
        if kind == "DELETED":
            with self._lock:
                self._pods.pop(key, None)
        else:
            meta = self._meta(key, pod)
            with self._lock:
                self._pods[key] = meta

    # -- owners ---------------------------------------------------------------------------------------
    def _meta(self, key: PodKey, pod: dict[str, Any]) -> PodMeta:
        metadata = _mapping(pod.get("metadata"))
        labels = _strings(metadata.get("labels"))
        workload = resolve_workload(
            key.namespace,
            key.pod,
            _owner_refs(metadata),
            self._lookup,
            labels.get("pod-template-hash"),
        )
        ip = _mapping(pod.get("status")).get("podIP")
        uid = metadata.get("uid")
        return PodMeta(
            workload=workload,
            ip=ip if isinstance(ip, str) and ip else None,
            annotations=_strings(metadata.get("annotations")),
            container_ports=_container_ports(pod),
            uid=uid if isinstance(uid, str) else "",
        )

    def _lookup(self, kind: str, namespace: str, name: str) -> Sequence[OwnerRef] | None:
        template = _OWNER_PATHS.get(kind)
        if template is None:
            return None  # a top-level kind (Deployment, StatefulSet, ...) or one we do not walk
        cache_key = (kind, namespace, name)
        now = self._clock()
        cached = self._owners.get(cache_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        refs: tuple[OwnerRef, ...] | None
        path = template.format(ns=path_segment(namespace), name=path_segment(name))
        try:
            refs = _owner_refs(_mapping(self._api.get_json(path).get("metadata")))
            expires = now + self._owner_ttl_s
        except KubeApiError as exc:
            # An answer (404, 403): remembered briefly. No answer at all propagates: the list retries.
            log.warning("cannot get %s %s/%s: %s", kind, namespace, name, exc)
            refs, expires = None, now + self._error_ttl_s
        if len(self._owners) >= _OWNER_CACHE_MAX:
            self._owners = {k: v for k, v in self._owners.items() if v[0] > now}
        self._owners[cache_key] = (expires, refs)
        return refs
