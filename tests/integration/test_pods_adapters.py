"""The thin adapters against real servers: kubelet PodResources over a unix socket (our generated
servicer), the Kubernetes pod cache against recorded API answers, and the committed generated code."""

from __future__ import annotations

import filecmp
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.kube import KubeClient, KubeConfig, KubeError
from exporter.podresources.gen import PACKAGE_DIR, REPO, generate
from exporter.pods.accounting import PodKey
from exporter.pods.devices import Allocation
from exporter.pods.kube import KubePodCache
from exporter.pods.kubelet import PodResourcesClient, PodResourcesUnavailable
from exporter.pods.owners import Workload
from tests.support.pods import KubeReplay, load_fixture, start_kubelet, wait_until

UUID = "GPU-1c2d3e4f-5a6b-7c8d-9e0f-a1b2c3d4e5f6"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    generate(tmp_path)
    committed = REPO / PACKAGE_DIR
    for name in ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / PACKAGE_DIR / name, committed / name, shallow=False), (
            f"{name} differs from proto/podresources/api.proto: run `python -m exporter.podresources.gen`"
        )


def test_kubelet_list_over_a_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "kubelet.sock"
    server, servicer = start_kubelet(socket_path)
    servicer.pods = {
        ("ml", "llama-0"): {"server": [("nvidia.com/gpu", [UUID])]},
        ("ml", "small-0"): {
            "server": [("nvidia.com/mig-1g.10gb", [f"MIG-{UUID}/7/0"])],
            "sidecar": [("example.com/nic", ["nic-3"])],
        },
        ("ml", "shared-0"): {"server": [("nvidia.com/gpu", [f"{UUID}::0", f"{UUID}::1"])]},
    }
    kubelet = PodResourcesClient(str(socket_path), timeout_s=2)
    try:
        allocations = kubelet.list()
    finally:
        kubelet.close()
        server.stop(None)
    assert Allocation("ml", "llama-0", "server", "nvidia.com/gpu", UUID) in allocations
    assert Allocation("ml", "small-0", "server", "nvidia.com/mig-1g.10gb", f"MIG-{UUID}/7/0") in allocations
    assert Allocation("ml", "small-0", "sidecar", "example.com/nic", "nic-3") in allocations
    assert [a.device_id for a in allocations if a.pod == "shared-0"] == [f"{UUID}::0", f"{UUID}::1"]


def test_kubelet_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    kubelet = PodResourcesClient(str(tmp_path / "absent.sock"), timeout_s=0.5)
    with pytest.raises(PodResourcesUnavailable, match=r"absent\.sock"):
        kubelet.list()
    kubelet.close()


@pytest.fixture
def replay() -> Iterator[KubeReplay]:
    server = KubeReplay(load_fixture("pods.json"), load_fixture("owners.json"))
    yield server
    server.stop()


def replay_client(port: int) -> KubeClient:
    return KubeClient(KubeConfig(server=f"http://127.0.0.1:{port}", source="the replay server"))


@pytest.fixture
def cache(replay: KubeReplay) -> Iterator[KubePodCache]:
    pods = KubePodCache(replay_client(replay.port), "gpu-node-1", retry_s=0.2).start()
    assert pods.wait_synced(10)
    yield pods
    pods.stop()


def test_workloads_resolve_through_the_recorded_api(cache: KubePodCache, replay: KubeReplay) -> None:
    expected = {
        PodKey("ml", "llama-8b-7d9f8c6b5-x2k4p"): Workload("Deployment", "llama-8b"),
        PodKey("ml", "mistral-0"): Workload("StatefulSet", "mistral"),
        PodKey("batch", "eval-28401200-abcde"): Workload("CronJob", "eval"),
        PodKey("ml", "debug"): Workload("Pod", "debug"),
        PodKey("monitoring", "dcgm-exporter-q7x2n"): Workload("DaemonSet", "dcgm-exporter"),
        # Its ReplicaSet answers 404: the pod-template-hash label still names the Deployment.
        PodKey("ml", "orphan-5f6d8b9c7-zz9q1"): Workload("Deployment", "orphan"),
    }
    for key, workload in expected.items():
        meta = cache.get(key)
        assert meta is not None, key
        assert meta.workload == workload, key
    llama = cache.get(PodKey("ml", "llama-8b-7d9f8c6b5-x2k4p"))
    assert llama is not None
    assert llama.ip == "127.0.0.1"
    assert llama.annotations["energy-orchestrator.io/metrics-port"] == "8000"
    assert llama.container_ports == {"http": 8000}
    assert llama.uid == "5b1f7e9a-0c1d-4e2f-8a3b-1c2d3e4f5a6b"
    assert any("fieldSelector=spec.nodeName%3Dgpu-node-1" in r for r in replay.requests)


def test_watch_adds_and_deletes_pods_and_caches_owners(cache: KubePodCache, replay: KubeReplay) -> None:
    added = load_fixture("pod_added.json")
    key = PodKey("ml", "llama-8b-7d9f8c6b5-n3m8r")
    assert wait_until(lambda: any("watch=true" in r for r in replay.requests))
    replay.push("ADDED", added)
    assert wait_until(lambda: cache.get(key) is not None)
    meta = cache.get(key)
    assert meta is not None and meta.workload == Workload("Deployment", "llama-8b")
    # Two pods of one ReplicaSet: it was fetched once (TTL cache), not per pod.
    rs_gets = [r for r in replay.requests if "/replicasets/llama-8b-7d9f8c6b5" in r]
    assert len(rs_gets) == 1
    replay.push("DELETED", added)
    assert wait_until(lambda: cache.get(key) is None)


def test_api_down_then_up_syncs(replay: KubeReplay) -> None:
    port = replay.port
    replay.stop()
    pods = KubePodCache(replay_client(port), "gpu-node-1", retry_s=0.1).start()
    try:
        assert not pods.wait_synced(0.3)
        assert pods.get(PodKey("ml", "debug")) is None
    finally:
        t0 = time.monotonic()
        pods.stop()
    assert time.monotonic() - t0 < 5


def test_the_watch_starts_at_the_list_version_and_an_expired_watch_relists(
    cache: KubePodCache, replay: KubeReplay
) -> None:
    assert wait_until(lambda: any("watch=true" in r for r in replay.requests))
    watch = next(r for r in replay.requests if "watch=true" in r)
    assert "resourceVersion=1000" in watch and "fieldSelector=spec.nodeName%3Dgpu-node-1" in watch
    lists = sum(1 for r in replay.requests if "watch=true" not in r and r.startswith("/api/v1/pods"))
    # The pod appears in the list only: the cache can know it only by listing again.
    added = load_fixture("pod_added.json")
    replay.pod_list = {**replay.pod_list, "items": [*replay.pod_list["items"], added]}
    replay.push("ERROR", load_fixture("status_expired.json"))
    key = PodKey("ml", added["metadata"]["name"])
    assert wait_until(lambda: cache.get(key) is not None), "410 Gone: relisted"
    relists = sum(1 for r in replay.requests if "watch=true" not in r and r.startswith("/api/v1/pods"))
    assert relists == lists + 1


def test_a_forbidden_list_is_retried_and_logged_with_its_reason(
    replay: KubeReplay, caplog: pytest.LogCaptureFixture
) -> None:
    replay.list_error = load_fixture("status_forbidden.json")
    pods = KubePodCache(replay_client(replay.port), "gpu-node-1", retry_s=0.1).start()
    try:
        assert not pods.wait_synced(0.5)
        replay.list_error = None
        assert pods.wait_synced(5), "synced once the API allows the list"
    finally:
        pods.stop()
    assert "HTTP 403 Forbidden: pods is forbidden" in caplog.text
    assert '"kind"' not in caplog.text


def test_malformed_pods_cost_only_their_own_fields(replay: KubeReplay) -> None:
    odd = load_fixture("pod_added.json")
    odd["metadata"]["ownerReferences"] = {"not": "a list"}
    odd["metadata"]["annotations"] = {"ok": "kept", "bad": 7}
    odd["spec"]["containers"] = [{"name": "server", "ports": [{"containerPort": "8000"}, "junk"]}]
    odd["status"] = "Running"
    nameless = {"kind": "Pod", "metadata": {"namespace": "ml"}}
    replay.pod_list = {**replay.pod_list, "items": [*replay.pod_list["items"], odd, nameless, 42]}
    with pytest.raises(KubeError):  # a list whose items are not all objects is refused whole
        replay_client(replay.port).list("/api/v1/pods")
    replay.pod_list["items"].pop()
    pods = KubePodCache(replay_client(replay.port), "gpu-node-1", retry_s=0.1).start()
    try:
        assert pods.wait_synced(5)
        meta = pods.get(PodKey("ml", odd["metadata"]["name"]))
        assert meta is not None
        assert meta.workload == Workload("Pod", odd["metadata"]["name"])
        assert meta.ip is None and meta.container_ports == {} and meta.annotations == {"ok": "kept"}
        assert pods.get(PodKey("ml", "debug")) is not None, "the other pods are unaffected"
    finally:
        pods.stop()
