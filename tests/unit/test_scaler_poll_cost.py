"""What a cache hit costs: the cache key is computed once per trigger, and the trigger's settings are
published on /metrics when they change, not on every poll; neither changes what is answered or shown."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from scaler import kpi_source, service, telemetry
from scaler.kpi_source import PrometheusAuth, PrometheusKpiSource
from scaler.metadata import parse_metadata
from scaler.policy import Reason, ReplicaDecision
from scaler.queries import KpiQueryRejected
from scaler.telemetry import ScalerMetrics

URL = "http://127.0.0.1:9"


def test_the_cache_key_is_computed_once_per_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    source = PrometheusKpiSource(PrometheusAuth(url=URL))
    trigger = parse_metadata({"workload": "keyed-once", "ttftSloSeconds": "1"}, "ns")
    other = parse_metadata({"workload": "keyed-other", "ttftSloSeconds": "1"}, "ns")
    key, other_key = source.cache_key(trigger), source.cache_key(other)

    def not_again(_trigger: object) -> object:
        raise AssertionError("the key was computed again")

    monkeypatch.setattr(kpi_source, "queries_for", not_again)
    assert source.cache_key(trigger) == key != other_key


def test_a_refused_server_address_is_refused_on_every_poll() -> None:
    source = PrometheusKpiSource(PrometheusAuth(url=URL))
    elsewhere = parse_metadata(
        {"workload": "w", "ttftSloSeconds": "1", "serverAddress": "http://10.0.0.1:9090"}, "ns"
    )
    for _ in range(2):
        with pytest.raises(KpiQueryRejected, match="serverAddress"):
            source.cache_key(elsewhere)


def _shown(metrics: ScalerMetrics, name: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_trigger_settings_are_published_when_they_change(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = ScalerMetrics()
    decision = ReplicaDecision(2, True, Reason.HOLD, "")
    base = {"workload": "w", "latencySloSeconds": "2", "powerBudgetWatts": "900"}
    metrics.record_decision(parse_metadata(base, "ns"), decision, 2)
    calls = 0
    real_labels = metrics.mode_info.labels

    def counted(*labels: str) -> object:
        nonlocal calls
        calls += 1
        return real_labels(*labels)

    monkeypatch.setattr(metrics.mode_info, "labels", counted)
    metrics.record_decision(parse_metadata(base, "ns"), decision, 2)
    assert calls == 0  # unchanged settings: nothing set again
    metrics.record_decision(
        parse_metadata({**base, "latencySloSeconds": "3", "mode": "advisory"}, "ns"), decision, 2
    )
    assert _shown(metrics, "eo_scaler_latency_slo_seconds") == [
        'eo_scaler_latency_slo_seconds{namespace="ns",workload="w"} 3.0'
    ]
    assert 'eo_scaler_mode_info{mode="advisory",namespace="ns",workload="w"} 1.0' in _shown(
        metrics, "eo_scaler_mode_info"
    )


def test_settings_come_back_after_their_label_set_was_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "MAX_WORKLOAD_LABEL_SETS", 1)
    metrics = ScalerMetrics()
    decision = ReplicaDecision(1, True, Reason.HOLD, "")
    first = parse_metadata({"workload": "first", "latencySloSeconds": "2"}, "ns")
    metrics.record_decision(first, decision, 1)
    metrics.record_decision(
        parse_metadata({"workload": "second", "latencySloSeconds": "2"}, "ns"), decision, 1
    )
    assert not any('workload="first"' in line for line in _shown(metrics, "eo_scaler_latency_slo_seconds"))
    metrics.record_decision(first, decision, 1)
    assert 'eo_scaler_latency_slo_seconds{namespace="ns",workload="first"} 2.0' in _shown(
        metrics, "eo_scaler_latency_slo_seconds"
    )


def test_more_scaledobjects_than_512_polled_in_turn_still_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    metadata = [{"workload": f"turn-{i}", "ttftSloSeconds": "1"} for i in range(600)]
    source = PrometheusKpiSource(PrometheusAuth(url=URL))
    for meta in metadata:  # KEDA's first round fills the caches
        source.cache_key(service._parse_cached(meta, "ns"))

    def not_again(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("parsed or rendered again")

    monkeypatch.setattr(service, "parse_metadata", not_again)
    monkeypatch.setattr(kpi_source, "queries_for", not_again)
    for meta in metadata:  # the next round: every poll a hit
        source.cache_key(service._parse_cached(meta, "ns"))
