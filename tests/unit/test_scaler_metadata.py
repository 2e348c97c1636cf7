"""Trigger metadata parsing and the PromQL built from it."""

from __future__ import annotations

import pytest

from scaler.metadata import MetadataError, Mode, parse_metadata
from scaler.queries import (
    KpiQueryRejected,
    KpiUnavailable,
    build_query,
    custom_parts,
    custom_value,
    escape_label_value,
    parts,
    selector,
    to_observation,
)

BASE = {"workload": "llama", "latencySloSeconds": "2.5"}


def test_minimal_metadata_gets_documented_defaults() -> None:
    t = parse_metadata(BASE, default_namespace="inference")
    assert (t.namespace, t.workload, t.latency_slo_s) == ("inference", "llama", 2.5)
    assert t.latency_quantile == 0.95 and t.mode is Mode.ENFORCE
    assert t.min_replicas == 0 and t.max_replicas == 100
    assert t.idle_before_zero_s == 300 and t.activation_rps == 0.05
    assert t.target_utilization == pytest.approx(1.0) and t.scale_down_utilization == pytest.approx(8 / 9)
    assert t.breach_settle_s == 120
    assert parse_metadata({**BASE, "breachSettleSeconds": "240"}, "ns").breach_settle_s == 240


def test_learn_capacity_is_on_by_default_and_off_only_with_a_configured_capacity() -> None:
    assert parse_metadata(BASE, "ns").learn_capacity is True
    pinned = parse_metadata({**BASE, "replicaCapacityRps": "4", "learnCapacity": "False"}, "ns")
    assert pinned.learn_capacity is False and pinned.replica_capacity_rps == 4
    for bad, says in (({"learnCapacity": "maybe"}, "expected 'true' or 'false'"),
                      ({"learnCapacity": "false"}, "needs replicaCapacityRps")):  # fmt: skip
        with pytest.raises(MetadataError) as info:
            parse_metadata({**BASE, **bad}, "ns")
        assert info.value.key == "learnCapacity" and says in str(info.value)


def test_llm_native_slos_with_their_quantiles() -> None:
    t = parse_metadata({"workload": "llama", "ttftSloSeconds": "0.25", "itlSloSeconds": "0.025"}, "ns")
    assert t.latency_slo_s is None and (t.ttft_slo_s, t.itl_slo_s) == (0.25, 0.025)
    assert t.ttft_quantile == 0.9 and t.itl_quantile == 0.9  # llm-d's P90
    assert t.slos() == [("ttft", 0.25, 0.9), ("itl", 0.025, 0.9)]
    cfg = t.policy_config()
    assert cfg.slos() == [("ttft", 0.25), ("itl", 0.025)]
    every = parse_metadata(
        {**BASE, "ttftSloSeconds": "1", "ttftQuantile": "0.99", "itlSloSeconds": "0.05"}, "ns"
    )
    assert [kind for kind, _, _ in every.slos()] == ["ttft", "itl", "e2e"]
    assert every.ttft_quantile == 0.99 and every.latency_quantile == 0.95
    assert (every.cold_start_s, every.season_s, every.kv_saturation_ratio) == (60.0, 86400.0, 0.9)
    assert every.breach_significance == 0.05 == every.policy_config().breach_significance
    off_test = parse_metadata({**BASE, "breachSignificance": "0"}, "ns")
    assert off_test.policy_config().breach_significance == 0.0
    off = parse_metadata({**BASE, "seasonSeconds": "0", "coldStartSeconds": "180"}, "ns")
    assert off.season_s is None and off.cold_start_s == 180
    assert "forecast_season" not in parts(off) and "forecast_season" in parts(every)
    # Each SLO has its quantile part over its own histogram, and only the SLOs given have one.
    p = parts(t)
    assert "eo_pod_time_to_first_token_seconds_bucket" in p["ttft"] and "histogram_quantile(0.9," in p["ttft"]
    assert "eo_pod_inter_token_latency_seconds_bucket" in p["itl"] and "latency" not in p


def test_full_metadata() -> None:
    t = parse_metadata(
        {
            **BASE,
            "namespace": "prod",
            "serverAddress": "https://mimir.example:8080/prometheus/",
            "latencyQuantile": "0.99",
            "targetJoulesPerRequest": "120",
            "powerBudgetWatts": "3000",
            "replicaCapacityRps": "12.5",
            "mode": "Advisory",
            "minReplicas": "1",
            "maxReplicas": "8",
            "headroom": "0.3",
            "customHeadersFromEnv": "X-Scope-OrgID=team-a, X-Extra = 1",
            "scalerAddress": "eo-scaler.eo:6000",
            "enableTLS": "true",
        },
        default_namespace="ignored",
    )
    assert t.namespace == "prod" and t.server_address == "https://mimir.example:8080/prometheus"
    assert t.mode is Mode.ADVISORY and t.target_utilization == pytest.approx(0.7)
    assert t.custom_headers == (("X-Scope-OrgID", "team-a"), ("X-Extra", "1"))
    assert t.policy_config().max_replicas == 8


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ({"latencySloSeconds": "1"}, "workload"),
        ({"workload": "x"}, "ttftSloSeconds"),  # no SLO at all: the message names all three
        ({"workload": "x", "ttftSloSeconds": "0"}, "ttftSloSeconds"),
        ({"workload": "x", "itlSloSeconds": "nan"}, "itlSloSeconds"),
        ({"workload": "x", "itlSloSeconds": "0.05", "itlQuantile": "1"}, "itlQuantile"),
        ({"workload": "x", "itlSloSeconds": "0.05", "ttftQuantile": "0.9"}, "ttftQuantile"),
        ({"workload": "x", "ttftSloSeconds": "1", "latencyQuantile": "0.9"}, "latencyQuantile"),
        ({"workload": "x", "ttftSloSeconds": "1", "latencyQuery": "my_latency"}, "latencyQuery"),
        ({**BASE, "seasonSeconds": "100"}, "seasonSeconds"),
        ({**BASE, "kvSaturationRatio": "1.5"}, "kvSaturationRatio"),
        ({**BASE, "breachSignificance": "0.9"}, "breachSignificance"),
        ({**BASE, "breachSignificance": "-0.1"}, "breachSignificance"),
        ({**BASE, "coldStartSeconds": "0"}, "coldStartSeconds"),
        ({**BASE, "latencySloSeconds": "fast"}, "latencySloSeconds"),
        ({**BASE, "latencySloSeconds": "-1"}, "latencySloSeconds"),
        ({**BASE, "latencySloSeconds": "nan"}, "latencySloSeconds"),
        ({**BASE, "latencyQuantile": "1.5"}, "latencyQuantile"),
        ({**BASE, "mode": "yolo"}, "mode"),
        ({**BASE, "minReplicas": "3", "maxReplicas": "2"}, "minReplicas"),
        ({**BASE, "maxReplicas": "2.5"}, "maxReplicas"),
        ({**BASE, "workload": 'x"} or vector(1) #'}, "workload"),
        ({**BASE, "namespace": "Bad_NS"}, "namespace"),
        ({**BASE, "serverAddress": "file:///etc/passwd"}, "serverAddress"),
        ({**BASE, "customHeaders": "Authorization=Bearer x"}, "customHeaders"),
        ({**BASE, "customHeaders": "novalue"}, "customHeaders"),
        ({**BASE, "latencySLOSeconds": "1"}, "latencySLOSeconds"),
        ({**BASE, "headroom": "0.2", "targetUtilization": "0.8"}, "headroom"),
        ({**BASE, "targetUtilization": "0.5", "scaleDownUtilization": "0.7"}, "scaleDownUtilization"),
        ({**BASE, "queryTimeoutSeconds": "30"}, "queryTimeoutSeconds"),
        ({**BASE, "breachSettleSeconds": "5"}, "breachSettleSeconds"),
        (
            {**BASE, "powerBudgetWatts": "500", "replicaPowerWatts": "400", "minReplicas": "2"},
            "powerBudgetWatts",
        ),
    ],
)
def test_errors_name_the_key(metadata: dict[str, str], key: str) -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata(metadata, default_namespace="ns")
    assert info.value.key == key
    assert key in str(info.value)


def test_label_values_are_escaped() -> None:
    evil = 'a"} or vector(1) or x{y="\\\n'
    assert escape_label_value(evil) == 'a\\"} or vector(1) or x{y=\\"\\\\\\n'
    sel = selector("ns", evil)
    # The only unescaped quotes are the four that delimit the two label values.
    unescaped = [i for i, ch in enumerate(sel) if ch == '"' and sel[i - 1] != "\\"]
    assert len(unescaped) == 4


def test_query_has_one_tagged_part_per_signal() -> None:
    t = parse_metadata({**BASE, "powerBudgetWatts": "900", "targetJoulesPerRequest": "50"}, "ns")
    names = set(parts(t))
    assert {
        "heartbeat_age",
        "visible_pods",
        "unwatched_nodes",
        "replicas",
        "load",
        "peak",
        "latency",
        "capacity",
        "settled_replicas",
        "power",
        "jpr",
    } <= names
    q = build_query(t)
    assert q.count(', "eo_part", ') == len(names)
    assert (
        'histogram_quantile(0.95, sum by (le) (rate(eo_pod_request_latency_seconds_bucket{namespace="ns"' in q
    )
    pinned = {**BASE, "replicaCapacityRps": "5", "learnCapacity": "false"}
    assert "capacity" not in parts(parse_metadata(pinned, "ns"))
    assert "capacity" in parts(parse_metadata({**BASE, "replicaCapacityRps": "5"}, "ns"))  # a floor
    # Learned capacity: tokens per replica while every SLO held and no queue formed, extrapolated along
    # the SLO headroom (1 / sqrt(worst ratio)) by at most 2.5.
    capacity = parts(t)["capacity"]
    assert capacity.startswith("max_over_time(") and capacity.endswith("[3600s:60s])")
    assert (
        "sum(rate(eo_pod_tokens_total{" in capacity
        and "(1.0) / (sqrt(" in capacity
        and "1.0, 2.5)" in capacity
    )
    assert "(2.5)" in capacity and "<= 1.0" in capacity and "unless on() " in capacity
    assert parts(t)["settled_replicas"].startswith("min_over_time((count(group by (pod)")
    assert parts(t)["settled_replicas"].endswith("[120s:15s])")
    # The short window for scale-up, the stabilisation window for scale-down.
    assert parts(t)["load"].endswith("[60s]))") and parts(t)["peak"].endswith("[300s:15s])")
    assert parts(t)["waiting"] == (
        'min_over_time((sum(eo_pod_requests_waiting{namespace="ns",workload="llama"}))[30s:15s])'
    )


# The count parts every answer carries (the combined query answers them with ``or vector(0)``).
COUNTS: dict[str, float | str] = {"visible_pods": 0, "unwatched_nodes": 0, "replicas": 0}


def _series(**values: float | str) -> list[dict[str, object]]:
    merged = {**COUNTS, **values}
    return [{"metric": {"eo_part": k}, "value": [0, str(v)]} for k, v in merged.items()]


def test_observation_from_result() -> None:
    t = parse_metadata(BASE, "ns")
    o = to_observation(
        t,
        _series(
            heartbeat_age=3,
            replicas=3,
            visible_pods=3,
            load=12,
            peak=20,
            latency="0.8",
            recent_requests=100,
            capacity="NaN",
        ),
    )
    assert (o.current_replicas, o.load_rps, o.peak_load_rps, o.latency_s) == (3, 12, 20, 0.8)
    assert o.idle_for_s == 0 and o.learned_capacity_tps is None and o.settled_replicas is None
    settled = to_observation(
        t,
        _series(heartbeat_age=3, replicas=5, load=12, peak=20, recent_requests=1, settled_replicas=2),
    )
    assert settled.settled_replicas == 2


@pytest.mark.parametrize(
    "values",
    [
        {},  # no heartbeat at all
        {"heartbeat_age": 500},  # pipeline stale
        # Pods hold GPUs but none is serving (server unreadable or counters stale): never zero.
        {"heartbeat_age": 1, "visible_pods": 2, "replicas": 0},
        {"heartbeat_age": 1, "replicas": 2},  # load KPI absent while pods report
        {"heartbeat_age": 1, "replicas": 2, "load": "NaN"},
    ],
)
def test_missing_or_stale_data_is_unavailable(values: dict[str, float | str]) -> None:
    with pytest.raises(KpiUnavailable):
        to_observation(parse_metadata(BASE, "ns"), _series(**values))


def test_llm_signals_in_the_observation() -> None:
    t = parse_metadata({"workload": "llama", "ttftSloSeconds": "0.25", "itlSloSeconds": "0.025"}, "ns")
    base = {"heartbeat_age": 1, "replicas": 2, "visible_pods": 2, "load": 10, "recent_requests": 5}
    o = to_observation(
        t,
        _series(**base, ttft=0.2, itl="+Inf", tokens=9000, peak_tokens=12000, waiting=3, running=40,
                kv_usage=0.5, capacity=6000, burst_rise=1.3, forecast_trend=11, forecast_season=14),
    )  # fmt: skip
    assert (o.ttft_s, o.itl_s, o.latency_s) == (0.2, float("inf"), None)  # +Inf is a breach
    assert (o.load_tps, o.peak_load_tps, o.learned_capacity_tps) == (9000, 12000, 6000)
    assert (o.waiting_requests, o.running_requests, o.kv_usage_ratio) == (3, 40, 0.5)
    assert o.burst_rise == 1.3 and o.forecast_rps == 14  # the larger of the two forecasts
    # Absent leading signals are no reading, never zero.
    bare = to_observation(t, _series(**base))
    assert bare.waiting_requests is None and bare.kv_usage_ratio is None and bare.forecast_rps is None
    # A NaN TTFT while first tokens are counted is a broken histogram; a KV ratio above 1 is not a ratio.
    with pytest.raises(KpiUnavailable, match="ttft"):
        to_observation(t, _series(**base, ttft="NaN", ttft_rate=3))
    assert to_observation(t, _series(**base, ttft="NaN", ttft_rate=0)).ttft_s is None
    with pytest.raises(KpiUnavailable, match="KV"):
        to_observation(t, _series(**base, kv_usage=1.7))
    # The observations behind each ratio: the count rate over the short (60 s) window, for the
    # policy's breach evidence test; the trigger's quantiles reach the policy with them.
    counted = to_observation(t, _series(**base, ttft=0.2, ttft_rate=15, itl=0.02, itl_rate=900))
    assert (counted.ttft_observations, counted.itl_observations) == (900.0, 54_000.0)
    assert bare.ttft_observations is None
    cfg = t.policy_config()
    assert (cfg.ttft_quantile, cfg.itl_quantile) == (t.ttft_quantile, t.itl_quantile)


def test_budget_needs_power_while_pods_run() -> None:
    t = parse_metadata({**BASE, "powerBudgetWatts": "900"}, "ns")
    with pytest.raises(KpiUnavailable, match="powerBudgetWatts"):
        to_observation(t, _series(heartbeat_age=1, replicas=2, load=3))


def test_zero_pods_with_evidence_is_zero_replicas_not_an_error() -> None:
    # Fresh pods heartbeat, no pod of the workload in the PodResources view, every node that held it
    # watched: that is evidence of zero (the old test took a heartbeat alone as evidence).
    o = to_observation(parse_metadata(BASE, "ns"), _series(heartbeat_age=1))
    assert o.current_replicas == 0 and o.load_rps == 0 and o.idle_for_s == 300


def test_zero_needs_every_node_that_held_the_workload_watched() -> None:
    with pytest.raises(KpiUnavailable, match="no fresh pods heartbeat"):
        to_observation(parse_metadata(BASE, "ns"), _series(heartbeat_age=1, unwatched_nodes=1))


@pytest.mark.parametrize(
    "values",
    [
        {"heartbeat_age": -5},  # from the future
        {"heartbeat_age": "NaN"},
        {"heartbeat_age": 1, "replicas": "1e19", "visible_pods": "1e19", "load": 1},
        {"heartbeat_age": 1, "replicas": -3, "load": 1},
        {"heartbeat_age": 1, "replicas": 2, "load": -1},
        {"heartbeat_age": 1, "replicas": 2, "load": "+Inf"},
        {"heartbeat_age": 1, "replicas": 2, "load": 1, "latency": "NaN", "latency_rate": 2},
        {"heartbeat_age": 1, "not_a_part": 1},
    ],
)
def test_out_of_range_values_are_unavailable(values: dict[str, float | str]) -> None:
    with pytest.raises(KpiUnavailable):
        to_observation(parse_metadata(BASE, "ns"), _series(**values))


def test_a_missing_count_part_is_a_broken_answer() -> None:
    broken = [s for s in _series(heartbeat_age=1) if s["metric"] != {"eo_part": "unwatched_nodes"}]
    with pytest.raises(KpiUnavailable, match="unwatched_nodes"):
        to_observation(parse_metadata(BASE, "ns"), broken)


def test_latency_above_the_highest_bucket_is_a_breach_not_absent() -> None:
    o = to_observation(
        parse_metadata(BASE, "ns"), _series(heartbeat_age=1, replicas=1, load=1, latency="+Inf")
    )
    assert o.latency_s == float("inf")


def test_custom_promql_is_never_part_of_the_combined_query() -> None:
    t = parse_metadata({**BASE, "latencyQuery": "my_latency", "activationQuery": "my_demand"}, "ns")
    q = build_query(t)
    assert "my_latency" not in q and "my_demand" not in q
    assert set(custom_parts(t)) == {"latency", "latency_ratio", "capacity", "demand"}
    assert "my_latency" in custom_parts(t)["capacity"]
    # A custom part's own answer: one value, labels ignored; a matrix is the trigger's mistake.
    vector = [{"metric": {"eo_part": "replicas"}, "value": [1, "3"]}, {"metric": {}, "value": [1, "5"]}]
    assert custom_value("latency", "vector", vector) == 5.0
    assert custom_value("latency", "scalar", [1, "0.7"]) == 0.7
    assert custom_value("latency", "vector", []) is None
    with pytest.raises(KpiQueryRejected):
        custom_value("latency", "matrix", [])
    with pytest.raises(KpiUnavailable):
        custom_value("latency", "vector", ["a"])
    # A dead pipeline is UNAVAILABLE whatever the custom query answered.
    with pytest.raises(KpiUnavailable, match="heartbeat"):
        to_observation(t, [], {"demand": 7.0})


def test_long_values_give_short_errors() -> None:
    for meta, key in (
        ({**BASE, "workload": "X" * 100_000}, "workload"),
        ({**BASE, "latencyQuery": "up" + " " * 5000}, "latencyQuery"),
        ({**BASE, "customHeaders": "X-Scope-OrgID=" + "a" * 60_000}, "customHeaders"),
        ({**BASE, "mode": "m" * 3000}, "mode"),
        ({**BASE, **{f"k{i}": "1" for i in range(65)}}, "scalerMetadata"),
        ({**BASE, "k" * 500: "1"}, "k" * 64 + "..."),
        ({**BASE, **{f"key{i}": "v" * 4000 for i in range(5)}}, "scalerMetadata"),
    ):
        with pytest.raises(MetadataError) as info:
            parse_metadata(meta, "ns")
        assert info.value.key == key
        assert len(str(info.value)) < 1000


@pytest.mark.parametrize(
    "headers",
    [
        "Cookie=a",
        "X-Forwarded-For=1.2.3.4",
        "Proxy-Authorization=x",
        "Transfer-Encoding=chunked",
        "Host=h",
        "Forwarded=for=x",
        "X-Team=\u2603",
        "A=1,a=2",
    ],
)
def test_forbidden_or_unsendable_headers_are_refused(headers: str) -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata({**BASE, "customHeaders": headers}, "ns")
    assert info.value.key == "customHeaders"
