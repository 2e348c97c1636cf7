"""Pure rules of pod attribution: device IDs, owner walking, app-metric extraction, mirrored counters."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from common.servers import Histogram
from exporter.pods.appmetrics import (
    SERVERS,
    HistogramReading,
    Sample,
    detect_server,
    extract,
    parse_annotations,
    parse_selector,
    total,
)
from exporter.pods.counters import MirroredCounter, MirroredHistogram
from exporter.pods.devices import Sharing, parse_device_id
from exporter.pods.owners import OwnerRef, Workload, resolve_workload

UUID = "GPU-1c2d3e4f-5a6b-7c8d-9e0f-a1b2c3d4e5f6"
MIG_UUID = "MIG-4f3e2d1c-6b5a-7d8c-0f9e-f6e5d4c3b2a1"


# -- device IDs -----------------------------------------------------------------------------------------
def test_whole_gpu_is_exclusive() -> None:
    share = parse_device_id(UUID, "nvidia.com/gpu")
    assert share is not None
    assert (share.board_uuid, share.sharing, share.weight) == (UUID, Sharing.EXCLUSIVE, 1.0)


def test_time_slice_replica_suffix_maps_to_its_board() -> None:
    share = parse_device_id(f"{UUID}::3", "nvidia.com/gpu")
    assert share is not None
    assert (share.board_uuid, share.sharing, share.device_id) == (UUID, Sharing.TIME_SLICED, f"{UUID}::3")


def test_new_mig_form_needs_the_parent_mapping() -> None:
    assert parse_device_id(MIG_UUID, "nvidia.com/mig-3g.40gb") is None
    share = parse_device_id(MIG_UUID, "nvidia.com/mig-3g.40gb", {MIG_UUID: UUID}.get)
    assert share is not None
    assert (share.board_uuid, share.sharing, share.weight) == (UUID, Sharing.MIG, 3.0)


def test_old_mig_form_carries_its_parent() -> None:
    share = parse_device_id(f"MIG-{UUID}/7/0", "nvidia.com/mig-1g.10gb")
    assert share is not None
    assert (share.board_uuid, share.sharing, share.weight) == (UUID, Sharing.MIG, 1.0)


def test_time_sliced_mig_instance_counts_toward_the_board() -> None:
    share = parse_device_id(f"{MIG_UUID}::1", "nvidia.com/mig-2g.20gb", {MIG_UUID: UUID}.get)
    assert share is not None
    assert (share.board_uuid, share.sharing, share.weight) == (UUID, Sharing.MIG, 2.0)


def test_index_strategy_ids_need_an_index_map() -> None:
    assert parse_device_id("0", "nvidia.com/gpu") is None
    share = parse_device_id("1", "nvidia.com/gpu", index_to_uuid={"1": UUID})
    assert share is not None and share.board_uuid == UUID


def test_unknown_ids_are_not_placed() -> None:
    assert parse_device_id("fpga-0", "xilinx.com/fpga") is None


# -- owners ---------------------------------------------------------------------------------------------
OWNERS = {
    ("ReplicaSet", "ml", "llama-7d9f8c6b5"): [OwnerRef("Deployment", "llama", True)],
    ("Job", "batch", "eval-28401200"): [OwnerRef("CronJob", "eval", True)],
    ("ReplicaSet", "ml", "bare-rs"): [],
}


def lookup(kind: str, ns: str, name: str) -> list[OwnerRef] | None:
    return OWNERS.get((kind, ns, name))


def test_deployment_chain() -> None:
    refs = [OwnerRef("ReplicaSet", "llama-7d9f8c6b5", True)]
    assert resolve_workload("ml", "llama-7d9f8c6b5-abcde", refs, lookup) == Workload("Deployment", "llama")


def test_cronjob_chain() -> None:
    refs = [OwnerRef("Job", "eval-28401200", True)]
    assert resolve_workload("batch", "eval-28401200-x", refs, lookup) == Workload("CronJob", "eval")


def test_statefulset_and_daemonset_are_top_owners() -> None:
    assert resolve_workload("ml", "m-0", [OwnerRef("StatefulSet", "m", True)], lookup) == Workload(
        "StatefulSet", "m"
    )
    assert resolve_workload("x", "d-1", [OwnerRef("DaemonSet", "d", True)], lookup) == Workload(
        "DaemonSet", "d"
    )


def test_bare_pod_is_its_own_workload() -> None:
    assert resolve_workload("ml", "debug", [], lookup) == Workload("Pod", "debug")


def test_controller_owner_wins_over_others() -> None:
    refs = [OwnerRef("ConfigMap", "cm"), OwnerRef("StatefulSet", "m", True)]
    assert resolve_workload("ml", "m-0", refs, lookup) == Workload("StatefulSet", "m")


def test_unfetchable_replicaset_falls_back_to_the_template_hash() -> None:
    refs = [OwnerRef("ReplicaSet", "gone-5f6d8b9c7", True)]
    assert resolve_workload("ml", "p", refs, lookup, "5f6d8b9c7") == Workload("Deployment", "gone")
    assert resolve_workload("ml", "p", refs, lookup, None) == Workload("ReplicaSet", "gone-5f6d8b9c7")


def test_replicaset_without_owner_is_the_workload() -> None:
    refs = [OwnerRef("ReplicaSet", "bare-rs", True)]
    assert resolve_workload("ml", "p", refs, lookup) == Workload("ReplicaSet", "bare-rs")


# -- app metrics ----------------------------------------------------------------------------------------
def hist(
    name: str, buckets: dict[str, float], total: float, labels: dict[str, str] | None = None
) -> list[Sample]:
    base = labels or {}
    out = [Sample(f"{name}_bucket", {**base, "le": le}, v) for le, v in buckets.items()]
    return [*out, Sample(f"{name}_sum", base, total), Sample(f"{name}_count", base, buckets["+Inf"])]


def test_vllm_requests_are_summed_over_finished_reason() -> None:
    samples = [
        Sample("vllm:request_success_total", {"finished_reason": "stop", "model_name": "m"}, 10),
        Sample("vllm:request_success_total", {"finished_reason": "length", "model_name": "m"}, 5),
        Sample("vllm:prompt_tokens_total", {"model_name": "m"}, 1500),
        Sample("vllm:generation_tokens_total", {"model_name": "m"}, 3000),
        *hist(
            "vllm:e2e_request_latency_seconds", {"1.0": 4, "5.0": 14, "+Inf": 15}, 40.0, {"model_name": "m"}
        ),
    ]
    assert detect_server(samples) == "vllm"
    reading = extract(samples, SERVERS["vllm"])
    counters = (reading.requests, reading.prompt_tokens, reading.generation_tokens)
    assert tuple(map(total, counters)) == (15, 1500, 3000)
    assert reading.latency is not None
    assert list(reading.latency.values()) == [
        HistogramReading(((1.0, 4), (5.0, 14), (math.inf, 15)), 40.0, 15)
    ]
    assert reading.ttft is None


def test_tgi_tokens_come_from_histogram_sums() -> None:
    samples = [
        Sample("tgi_request_success", {}, 7),
        *hist("tgi_request_input_length", {"10.0": 3, "+Inf": 7}, 700),
        *hist("tgi_request_generated_tokens", {"10.0": 1, "+Inf": 7}, 1400),
        *hist("tgi_request_duration", {"1.0": 2, "+Inf": 7}, 9.0),
    ]
    reading = extract(samples, SERVERS[detect_server(samples) or ""])
    counters = (reading.requests, reading.prompt_tokens, reading.generation_tokens)
    assert tuple(map(total, counters)) == (7, 700, 1400)
    assert reading.latency is not None and [h.count for h in reading.latency.values()] == [7]


def test_sglang_and_triton_are_detected() -> None:
    sglang = [
        Sample("sglang:num_requests_total", {"model_name": "m"}, 4),
        Sample("sglang:prompt_tokens_total", {}, 9),
    ]
    assert total(extract(sglang, SERVERS[detect_server(sglang) or ""]).requests) == 4
    triton = [Sample("nv_inference_request_success", {"model": "a", "version": "1"}, 3)]
    triton.append(Sample("nv_inference_request_success", {"model": "b", "version": "1"}, 2))
    reading = extract(triton, SERVERS[detect_server(triton) or ""])
    assert (total(reading.requests), reading.prompt_tokens) == (5, None)


def test_annotations_override_the_profile() -> None:
    config = parse_annotations(
        {
            "energy-orchestrator.io/metrics-port": "9400",
            "energy-orchestrator.io/metrics-path": "/stats",
            "energy-orchestrator.io/server": "vLLM",
            "energy-orchestrator.io/requests-metric": 'vllm:request_success_total{finished_reason="stop"}',
            "energy-orchestrator.io/latency-histogram": "my_latency_seconds",
        }
    )
    assert config.problems == ()
    profile = config.profile(None)
    assert profile is not None
    assert (profile.port, profile.path, profile.server.name, profile.server.e2e_latency) == (
        9400,
        "/stats",
        "vllm",
        Histogram("my_latency_seconds"),
    )
    samples = [
        Sample("vllm:request_success_total", {"finished_reason": "stop"}, 10),
        Sample("vllm:request_success_total", {"finished_reason": "abort"}, 3),
    ]
    assert total(extract(samples, profile).requests) == 10


def test_custom_server_by_annotation_only() -> None:
    config = parse_annotations({"energy-orchestrator.io/requests-metric": "myapp_requests"})
    profile = config.profile(None)
    assert profile is not None
    assert total(extract([Sample("myapp_requests_total", {}, 12)], profile).requests) == 12


def test_bad_annotations_are_reported_not_raised() -> None:
    config = parse_annotations(
        {
            "energy-orchestrator.io/metrics-port": "http",
            "energy-orchestrator.io/server": "ollama",
            "energy-orchestrator.io/requests-metric": "bad{label}",
            "energy-orchestrator.io/metrics-path": "metrics",
        }
    )
    assert config.port is None and config.server is None and config.requests is None and config.path is None
    assert len(config.problems) == 4
    assert any("metrics-port" in p for p in config.problems)
    assert any("ollama" in p for p in config.problems)


def test_selector_syntax() -> None:
    assert parse_selector('a:b_total{x="1", y="two"}').labels == (("x", "1"), ("y", "two"))
    with pytest.raises(ValueError, match="not a metric selector"):
        parse_selector("1abc")


# -- mirrored counters ----------------------------------------------------------------------------------
S = ("requests_total", ())


def test_counter_mirrors_then_survives_a_reset() -> None:
    c = MirroredCounter()
    assert c.update({S: 100}) is None and c.total == 100
    assert c.update({S: 130}) == 30 and c.total == 130
    assert c.update({S: 5}) == 5 and c.total == 135  # server restarted: 5 since the reset
    assert c.update({S: 5}) == 0 and c.total == 135


def test_histogram_reset_keeps_buckets_cumulative() -> None:
    h = MirroredHistogram()
    h.update({S: HistogramReading(((1.0, 5), (math.inf, 10)), 20.0, 10)})
    h.update({S: HistogramReading(((1.0, 6), (math.inf, 14)), 30.0, 14)})
    h.update({S: HistogramReading(((1.0, 1), (math.inf, 1)), 0.5, 1)})  # restart
    totals = h.totals
    assert totals is not None
    assert totals.buckets == ((1.0, 7), (math.inf, 15))
    assert (totals.sum, totals.count) == (30.5, 15)


def test_histogram_with_new_bounds_starts_over() -> None:
    h = MirroredHistogram()
    h.update({S: HistogramReading(((1.0, 5), (math.inf, 10)), 20.0, 10)})
    h.update({S: HistogramReading(((2.0, 1), (math.inf, 2)), 1.0, 2)})
    assert h.totals is not None and h.totals.buckets == ((2.0, 1), (math.inf, 2))


# -- layering -------------------------------------------------------------------------------------------
PURE = ["devices", "owners", "appmetrics", "counters", "accounting", "linefilter"]
FORBIDDEN = {
    "grpc",
    "pynvml",
    "prometheus_client",
    "prometheus_api_client",
    "kubernetes",
    "requests",
    "urllib3",
    "http",
    "socket",
}


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io_library(module: str) -> None:
    path = Path(__file__).resolve().parents[2] / "exporter" / "pods" / f"{module}.py"
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("exporter.pods."):
                assert node.module.removeprefix("exporter.pods.") in PURE, (
                    f"{module} imports adapter {node.module}"
                )
    assert not imported & FORBIDDEN
