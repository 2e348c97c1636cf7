"""The whole pod pipeline against real servers: kubelet gRPC on a unix socket, vLLM-format HTTP servers on
127.0.0.1, energy from an injected counter, metrics read back from a private registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.pods.kubelet import PodResourcesClient
from tests.support.pods import RIG_G0, RIG_G1, RIG_NODE, PodRig, pod_rig

G0, G1, NODE = RIG_G0, RIG_G1, RIG_NODE


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PodRig]:
    with pod_rig(tmp_path) as r:
        yield r


def test_joules_per_request_and_tokens(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.sample()
    rig.energy[G0] += 3000.0
    rig.servers["a"].finish(20, prompt=2000, generation=4000, latency_s=0.8)
    rig.sample()
    assert rig.value("eo_pod_energy_joules_total", "a", source="gpu") == 3000.0
    assert rig.value("eo_pod_requests_total", "a") == 20
    assert rig.value("eo_pod_tokens_total", "a", kind="prompt") == 2000
    assert rig.value("eo_pod_tokens_total", "a", kind="generation") == 4000
    assert rig.value("eo_pod_joules_per_request", "a") == pytest.approx(150.0)
    assert rig.value("eo_pod_request_latency_seconds_bucket", "a", le="1.0") == 20
    assert rig.value("eo_pod_request_latency_seconds_count", "a") == 20
    assert rig.value("eo_pod_time_to_first_token_seconds_bucket", "a", le="0.1") == 20
    assert rig.value("eo_pod_metrics_up", "a") == 1
    info = {
        "node": NODE,
        "uuid": G0,
        "namespace": "ml",
        "pod": "a",
        "container": "server",
        "workload": "wl-a",
        "sharing": "exclusive",
    }
    assert rig.registry.get_sample_value("eo_gpu_pod_info", info) == 1
    assert rig.registry.get_sample_value("eo_exporter_collector_up", {"collector": "pods"}) == 1


def test_slow_and_down_servers_cost_one_bounded_timeout(rig: PodRig) -> None:
    for name in ("a", "b", "c"):
        rig.add_pod(name, [G0 if name != "c" else G1])
    rig.sample()
    rig.servers["b"].delay_s = 2.0  # slower than the 0.3 s deadline
    rig.servers["c"].stop()  # connection refused
    rig.servers["a"].finish(5)
    rig.energy[G0] += 100.0
    took = rig.sample()
    assert took < 1.0  # one deadline (0.3 s) for all reads, not one per pod
    assert rig.value("eo_pod_requests_total", "a") == 5
    assert rig.value("eo_pod_metrics_up", "a") == 1
    assert rig.value("eo_pod_metrics_up", "b") == 0
    assert rig.value("eo_pod_metrics_up", "c") == 0
    # Energy is still attributed: b's failed read only means no token rule, so an equal split.
    assert rig.value("eo_pod_energy_joules_total", "a", source="gpu") == 50.0
    assert rig.value("eo_pod_energy_joules_total", "b", source="gpu") == 50.0
    rig.servers["b"].delay_s = 0.0


def test_malformed_metrics_text_fails_that_pod_only(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.add_pod("b", [G1])
    rig.sample()
    rig.servers["b"].body_override = b"vllm:request_success_total{oops 12\n\x00garbage"
    rig.servers["a"].finish(3)
    rig.servers["b"].finish(3)
    rig.sample()
    assert rig.value("eo_pod_requests_total", "a") == 3
    assert rig.value("eo_pod_requests_total", "b") is None  # not read now: omitted, not repeated
    assert rig.value("eo_pod_metrics_up", "b") == 0
    rig.servers["b"].body_override = None
    rig.sample()
    assert rig.value("eo_pod_requests_total", "b") == 3  # the mirror continues where it was


def test_counter_reset_after_server_restart(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.servers["a"].finish(40, prompt=400, generation=800)
    rig.sample()
    rig.servers["a"].restart()
    rig.servers["a"].finish(2, prompt=20, generation=40)
    rig.energy[G0] += 100.0
    rig.sample()
    assert rig.value("eo_pod_requests_total", "a") == 42
    assert rig.value("eo_pod_tokens_total", "a", kind="generation") == 840
    assert rig.value("eo_pod_request_latency_seconds_count", "a") == 42
    assert rig.value("eo_pod_joules_per_request", "a") == pytest.approx(50.0)


def test_deleted_pod_is_kept_for_the_grace_period_then_dropped(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.sample()
    rig.energy[G0] += 100.0
    rig.sample()
    rig.remove_pod("a")
    rig.sample(dt_s=30)
    assert rig.value("eo_pod_energy_joules_total", "a", source="gpu") == 100.0
    assert (
        rig.registry.get_sample_value(
            "eo_gpu_pod_info",
            {
                "node": NODE,
                "uuid": G0,
                "namespace": "ml",
                "pod": "a",
                "container": "server",
                "workload": "wl-a",
                "sharing": "exclusive",
            },
        )
        is None
    )
    rig.sample(dt_s=31)
    assert rig.value("eo_pod_energy_joules_total", "a", source="gpu") is None


def test_gpu_handed_over_and_shared_gpus_sum_to_the_board(rig: PodRig) -> None:
    rig.add_pod("a", [G0])
    rig.sample()
    rig.energy[G0] += 500.0
    rig.sample()
    rig.remove_pod("a")
    rig.add_pod("b", [f"{G0}::0"])  # the GPU now time-sliced between b and c
    rig.add_pod("c", [f"{G0}::1"])
    rig.energy[G0] += 300.0
    rig.sample()
    rig.servers["b"].finish(1, prompt=100, generation=200)  # 300 tokens
    rig.servers["c"].finish(1, prompt=50, generation=50)  # 100 tokens
    rig.energy[G0] += 400.0
    rig.sample()
    a = rig.value("eo_pod_energy_joules_total", "a", source="gpu")
    b = rig.value("eo_pod_energy_joules_total", "b", source="gpu")
    c = rig.value("eo_pod_energy_joules_total", "c", source="gpu")
    assert a == 500.0
    assert b == pytest.approx(150.0 + 300.0) and c == pytest.approx(150.0 + 100.0)
    assert (a or 0) + (b or 0) + (c or 0) == pytest.approx(rig.energy[G0])
    info = {
        "node": NODE,
        "uuid": G0,
        "namespace": "ml",
        "pod": "b",
        "container": "server",
        "workload": "wl-b",
        "sharing": "time_sliced",
    }
    assert rig.registry.get_sample_value("eo_gpu_pod_info", info) == 1


def test_mig_instances_count_toward_the_parent_board(rig: PodRig) -> None:
    rig.add_pod("a", [f"MIG-{G1}/1/0"], resource="nvidia.com/mig-3g.40gb", server=False)
    rig.add_pod("b", [f"MIG-{G1}/2/0"], resource="nvidia.com/mig-1g.10gb", server=False)
    rig.sample()
    rig.energy[G1] += 800.0
    rig.sample()
    assert rig.value("eo_pod_energy_joules_total", "a", source="gpu") == 600.0
    assert rig.value("eo_pod_energy_joules_total", "b", source="gpu") == 200.0
    assert rig.value("eo_pod_requests_total", "a") is None  # no inference server: energy only


def test_kubelet_down_keeps_last_values_and_flips_up(rig: PodRig, tmp_path: Path) -> None:
    rig.add_pod("a", [G0])
    rig.sample()
    rig.energy[G0] += 100.0
    rig.sample()
    broken = PodResourcesClient(str(tmp_path / "gone.sock"), timeout_s=0.2)
    rig.sampler._allocations = broken  # the kubelet socket vanishes
    rig.energy[G0] += 100.0
    rig.sample()
    assert rig.registry.get_sample_value("eo_exporter_collector_up", {"collector": "pods"}) == 0
    assert rig.value("eo_pod_energy_joules_total", "a", source="gpu") == 100.0
    broken.close()
