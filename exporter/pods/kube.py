"""A background cache of this node's pods and their top owners, fed by the Kubernetes API.

Informer-like: list the pods with ``fieldSelector=spec.nodeName=<node>``, then watch from the list's
resourceVersion, relisting when the watch expires (410 Gone) or fails. Owners above the pod
(ReplicaSets, Jobs) are fetched with GET when a pod is added or changes, and cached with a TTL. All of
it runs on the cache's own thread: a scrape only reads a dict.

RBAC: get/list/watch on ``pods``; get on ``replicasets`` (apps) and ``jobs`` (batch).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from exporter.pods.accounting import PodKey
from exporter.pods.owners import OwnerRef, PodMeta, resolve_workload

log = logging.getLogger(__name__)


def _owner_refs(metadata: Any) -> tuple[OwnerRef, ...]:
    return tuple(
        OwnerRef(ref.kind, ref.name, bool(ref.controller)) for ref in (metadata.owner_references or ())
    )


def _container_ports(pod: Any) -> dict[str, int]:
    ports: dict[str, int] = {}
    for container in pod.spec.containers or ():
        for port in container.ports or ():
            ports[port.name or f"{container.name}:{port.container_port}"] = int(port.container_port)
    return ports


class KubePodCache:
    def __init__(
        self,
        api_client: client.ApiClient,
        node_name: str,
        owner_ttl_s: float = 600.0,
        error_ttl_s: float = 30.0,
        watch_timeout_s: int = 300,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)
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
        self._watch: watch.Watch | None = None

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
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

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
            except ApiException as exc:
                if exc.status == 410:
                    log.info("pod watch expired (410 Gone); relisting")
                    continue
                log.warning(
                    "Kubernetes API error %s %s; retrying in %.0f s", exc.status, exc.reason, self._retry_s
                )
                self._stop.wait(self._retry_s)
            except Exception as exc:
                log.warning("Kubernetes API unreachable (%s); retrying in %.0f s", exc, self._retry_s)
                self._stop.wait(self._retry_s)

    def _list(self) -> str:
        pods: Any = self._core.list_pod_for_all_namespaces(field_selector=self._selector, _request_timeout=30)
        fresh = {PodKey(p.metadata.namespace, p.metadata.name): self._meta(p) for p in pods.items}
        with self._lock:
            self._pods = fresh
        self._synced.set()
        log.info("pod cache synced: %d pods on this node", len(fresh))
        return str(pods.metadata.resource_version)

    def _watch_from(self, version: str) -> str:
        self._watch = w = watch.Watch()
        for event in w.stream(
            self._core.list_pod_for_all_namespaces,
            field_selector=self._selector,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            _request_timeout=self._watch_timeout_s + 30,
        ):
            if self._stop.is_set():
                break
            kind, pod = event["type"], event["object"]
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            key = PodKey(pod.metadata.namespace, pod.metadata.name)
            if kind == "DELETED":
                with self._lock:
                    self._pods.pop(key, None)
            else:
                meta = self._meta(pod)
                with self._lock:
                    self._pods[key] = meta
        return str(w.resource_version or version)

    # -- owners ---------------------------------------------------------------------------------------
    def _meta(self, pod: Any) -> PodMeta:
        metadata = pod.metadata
        labels = metadata.labels or {}
        workload = resolve_workload(
            metadata.namespace,
            metadata.name,
            _owner_refs(metadata),
            self._lookup,
            labels.get("pod-template-hash"),
        )
        return PodMeta(
            workload=workload,
            ip=pod.status.pod_ip if pod.status else None,
            annotations=dict(metadata.annotations or {}),
            container_ports=_container_ports(pod),
            uid=metadata.uid or "",
        )

    def _lookup(self, kind: str, namespace: str, name: str) -> Sequence[OwnerRef] | None:
        fetch: Callable[..., Any]
        if kind == "ReplicaSet":
            fetch = self._apps.read_namespaced_replica_set
        elif kind == "Job":
            fetch = self._batch.read_namespaced_job
        else:
            return None  # a top-level kind (Deployment, StatefulSet, ...) or one we do not walk
        cache_key = (kind, namespace, name)
        now = self._clock()
        cached = self._owners.get(cache_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        refs: tuple[OwnerRef, ...] | None
        try:
            refs = _owner_refs(fetch(name, namespace, _request_timeout=10).metadata)
            expires = now + self._owner_ttl_s
        except ApiException as exc:
            log.warning("cannot get %s %s/%s: %s %s", kind, namespace, name, exc.status, exc.reason)
            refs, expires = None, now + self._error_ttl_s
        self._owners[cache_key] = (expires, refs)
        return refs
