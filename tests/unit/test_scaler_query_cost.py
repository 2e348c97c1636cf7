"""What a refresh costs: Prometheus evaluates the learned-capacity sample's worst SLO ratio once per
lookback minute, and the scaler renders a trigger's parts once, not on every answer it checks."""

from __future__ import annotations

import math

import pytest

from scaler import queries
from scaler import signals as sig
from scaler.metadata import MetadataError, parse_metadata

LLM = {"workload": "llm", "ttftSloSeconds": "1", "itlSloSeconds": "0.05", "latencySloSeconds": "2.5"}


def test_the_capacity_sample_evaluates_the_worst_ratio_once() -> None:
    trigger = parse_metadata(LLM, "ns")
    sel = queries.selector("ns", "llm")
    worst = sig.worst_ratio(queries.slo_signals(trigger)).promql(sel)
    sample = queries.capacity_sample_expr(trigger)
    # Every histogram quantile in the sample is one of the worst ratio's fallbacks, each rendered once.
    assert sample.count("histogram_quantile(") == worst.count("histogram_quantile(") == 4
    assert sample.count(worst) == 1


class View:
    """One replica serving 1,000 tokens/s, ``waiting`` queued; the worst SLO ratio is ``ratio``
    (the TTFT budget used, the only SLO)."""

    def __init__(self, ratio: float | None, waiting: float = 0.0) -> None:
        self.ratio, self.waiting = ratio, waiting

    def counter_rate(self, metric: str, window_s: float, at_s: float) -> float | None:
        if metric == sig.TOKENS:
            return 1000.0
        return None if self.ratio is None else 10.0

    def quantile(self, metric: str, q: float, window_s: float, at_s: float) -> float | None:
        return None

    def share_within(self, metric: str, bound_s: float, window_s: float, at_s: float) -> float | None:
        if self.ratio is None:
            return None
        # budget used = (1 - share) / (1 - q) with q = 0.9 and the 10/s rate above the floor
        return 1 - self.ratio * 0.1

    def gauge(self, metric: str, aggregation: str, at_s: float) -> float | None:
        return self.waiting if metric == sig.WAITING else None

    def replicas(self, at_s: float) -> int:
        return 1


@pytest.mark.parametrize(
    ("ratio", "waiting", "expected"),
    [
        (0.0, 0.0, 2500.0),  # no miss at all: stretched by the most, 2.5
        (0.25, 0.0, 2000.0),  # 1 / sqrt(0.25)
        (0.64, 0.0, 1250.0),  # 1 / sqrt(0.64)
        (1.5, 0.0, None),  # a breached minute is no sample
        (None, 0.0, None),  # no reading is no sample
        (0.25, 3.0, None),  # nor is a minute with a queue
    ],
)
def test_the_capacity_sample_keeps_its_meaning(
    ratio: float | None, waiting: float, expected: float | None
) -> None:
    slo = sig.slo_signal("ttft", 1.0, 0.9, (sig.TTFT_HISTOGRAM,))
    value = sig.capacity_sample([slo], sig.Replicas("unused")).value(View(ratio, waiting), 60.0)
    if expected is None:
        assert value is None
    else:
        assert value is not None and math.isclose(value, expected, rel_tol=1e-9)


ABSENT = sig.Filter(sig.Const(0.0), ">", 1.0)  # a part with no reading (a young workload's headroom)


@pytest.mark.parametrize(
    ("ratio", "headroom", "expected"),
    [
        (0.0, sig.Const(1.4), 1400.0),  # no miss: at most the headroom the plan kept, not 2.5
        (0.64, sig.Const(1.4), 1250.0),  # under the headroom: the stretch itself
        (0.0, sig.Const(0.5), 1000.0),  # a headroom under 1 (a falling rate) stretches by nothing
        (0.0, ABSENT, 2500.0),  # no headroom yet: the fixed cap
        (1.5, sig.Const(1.4), None),  # a breached minute is still no sample
    ],
)
def test_the_burst_headroom_caps_the_stretch(
    ratio: float, headroom: sig.Expr, expected: float | None
) -> None:
    slo = sig.slo_signal("ttft", 1.0, 0.9, (sig.TTFT_HISTOGRAM,))
    sample = sig.capacity_sample([slo], sig.Replicas("unused"), headroom=headroom)
    value = sample.value(View(ratio), 60.0)
    if expected is None:
        assert value is None
    else:
        assert value is not None and math.isclose(value, expected, rel_tol=1e-9)


def test_only_a_capacity_learned_from_nothing_is_capped_at_the_headroom() -> None:
    llm = {"workload": "w", "ttftSloSeconds": "0.25"}
    learned = queries.signals_for(parse_metadata(llm, "ns")).parts["capacity"]
    floor = queries.signals_for(parse_metadata({**llm, "replicaCapacityRps": "4"}, "ns")).parts["capacity"]
    sel = queries.selector("ns", "w")
    headroom = queries.signals_for(parse_metadata(llm, "ns")).parts["burst_rise"].promql(sel)
    assert "clamp_max(" in learned.promql(sel) and headroom in learned.promql(sel)
    assert "clamp_max(" not in floor.promql(sel)


def test_parts_are_rendered_once_per_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    trigger = parse_metadata({**LLM, "workload": "rendered-once"}, "ns")
    names = list(queries.parts(trigger))

    def not_again(_trigger: object) -> sig.Signals:
        raise AssertionError("the parts were rendered again")

    monkeypatch.setattr(queries, "signals_for", not_again)
    answer = [{"metric": {queries.PART_LABEL: n}, "value": [0, "1"]} for n in ("heartbeat_age",)]
    answer += [{"metric": {queries.PART_LABEL: n}, "value": [0, "0"]} for n in queries.COUNT_PARTS]
    observation = queries.to_observation(trigger, answer)
    assert observation.current_replicas == 0
    # Callers get their own copy: changing it changes nothing kept.
    mine = queries.parts(trigger)
    mine.clear()
    assert list(queries.parts(trigger)) == names


def test_the_learned_capacity_extrapolates_less_when_it_can_only_raise_a_configured_one() -> None:
    llm = {"workload": "w", "ttftSloSeconds": "0.25"}
    learned = parse_metadata(llm, "ns")
    floor = parse_metadata({**llm, "replicaCapacityRps": "4"}, "ns")
    pinned = parse_metadata({**llm, "replicaCapacityRps": "4", "learnCapacity": "false"}, "ns")
    assert queries.capacity_extrapolation(learned) == sig.LEARNED_CAPACITY_MAX_EXTRAPOLATION
    assert queries.capacity_extrapolation(floor) == sig.RAISE_CAPACITY_MAX_EXTRAPOLATION
    assert sig.RAISE_CAPACITY_MAX_EXTRAPOLATION < sig.LEARNED_CAPACITY_MAX_EXTRAPOLATION
    assert queries.capacity_extrapolation(pinned) is None
    # The clamp is in the PromQL each trigger sends; pinned, the subquery is not sent at all.
    assert "clamp(" in queries.capacity_sample_expr(floor)
    assert f", {sig.RAISE_CAPACITY_MAX_EXTRAPOLATION:g})" in queries.capacity_sample_expr(floor)
    assert "capacity" in queries.signals_for(floor).parts
    assert "capacity" not in queries.signals_for(pinned).parts


def test_recorded_inputs_read_the_recorded_bucket_rates_at_every_minute() -> None:
    trigger = parse_metadata(LLM, "ns")
    raw = queries.capacity_expr(trigger, "raw")
    recorded = queries.capacity_expr(trigger, "recorded")
    both = queries.capacity_expr(trigger, "recorded_or_raw")
    assert raw == queries.parts(trigger)["capacity"]  # the combined query reads them raw
    histograms = [sig.TTFT_HISTOGRAM, sig.REQUEST_ITL_HISTOGRAM, sig.ITL_HISTOGRAM, sig.E2E_HISTOGRAM]
    for h in histograms:
        assert f"rate({h}_bucket" in raw and sig.recorded_bucket_rate(h) not in raw
        # Recorded only: no raw bucket or count is read; the count is the +Inf bucket.
        assert f"{h}_bucket{{" not in recorded and f"{h}_count" not in recorded
        assert f'{sig.recorded_bucket_rate(h)}{{namespace="ns",workload="llm",le="+Inf"}}' in recorded
        # With the fallback, both (PromQL evaluates both sides of `or`).
        assert f"rate({h}_bucket" in both and sig.recorded_bucket_rate(h) in both
    # Only the SLO ratios change: the token rate, replicas and queue are read as before.
    for part in (f"rate({sig.TOKENS}", sig.WAITING):
        assert part in recorded
    # The same signal: every evaluator value is the same tree's.
    assert recorded.count("histogram_quantile(") == raw.count("histogram_quantile(") == 4


def test_recorded_inputs_change_no_value_and_leave_custom_promql_alone() -> None:
    slo = sig.slo_signal("ttft", 1.0, 0.9, (sig.TTFT_HISTOGRAM,))
    custom = sig.custom_slo_signal("e2e", 2.5, sig.Raw("my_latency"))
    for ratio in (0.0, 0.25, 0.64, 2.0, None):
        values = {
            inputs: sig.capacity_sample([slo], sig.Replicas("unused"), inputs=inputs).value(View(ratio), 60.0)
            for inputs in sig.CAPACITY_INPUTS
        }
        assert len(set(values.values())) == 1, values
    rewritten = sig.with_inputs(sig.worst_ratio([slo, custom]), "recorded").promql('{workload="w"}')
    assert "max((my_latency))" in rewritten
    with pytest.raises(ValueError, match="short window"):
        sig.Quantile(sig.TTFT_HISTOGRAM, 0.9, 300.0, inputs="recorded")
    with pytest.raises(ValueError, match="unknown"):
        sig.with_inputs(sig.worst_ratio([slo]), "cached")


def test_capacity_inputs_choose_the_recorded_rates_per_trigger() -> None:
    llm = {"workload": "w", "ttftSloSeconds": "0.25", "itlSloSeconds": "0.025"}
    raw = queries.build_query(parse_metadata(llm, "ns"))
    recorded = queries.build_query(parse_metadata({**llm, "capacityInputs": "Recorded"}, "ns"))
    assert "rate1m_unfiltered" not in raw and "rate1m_unfiltered" in recorded
    # Only the capacity part changes: the SLO readings still come from the pods' own series.
    assert recorded.count("rate1m_unfiltered") > 0 and "eo_pod_time_to_first_token_seconds_bucket" in recorded
    with pytest.raises(MetadataError) as info:
        parse_metadata({**llm, "capacityInputs": "recorded_or_raw"}, "ns")
    assert info.value.key == "capacityInputs"
