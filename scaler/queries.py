"""PromQL for one trigger, and the answers turned into a policy ``Observation``. Pure code.

The signals (rates, latency quantiles, queue and KV gauges, learned capacity, burst headroom, forecasts)
are declared once in ``scaler/signals.py``, which renders them here and evaluates them in the
simulator; this module adds the pod-evidence, power and custom parts, and turns the values of all
parts into an ``Observation`` (``observation_from_values``, shared with the simulator).

Every signal the policy needs from the exporter's series is one part of a single instant query
(``part_a or part_b or ...``), each part tagged with an ``eo_part`` label by ``label_replace``: one HTTP
request per workload per refresh, evaluated at one instant, so the parts are consistent with each other.

Label values are escaped (``\\``, ``"`` and newlines) even though metadata validation already limits
namespace and workload to Kubernetes names: two locks, so no metadata can change a query's structure.
Custom ``latencyQuery``/``activationQuery`` are PromQL by design (as in KEDA's prometheus scaler), so
they never enter the combined query: each part that contains one (``CUSTOM_PARTS``) is an instant query
of its own, read as one value with its labels ignored, so it cannot add, remove or change other parts.

Absence is not zero. A number is answered only from positive evidence, anything else raises
``KpiUnavailable`` so that KEDA's fallback engages:

- the pods collector's heartbeat (``eo_exporter_collector_up{collector="pods"}``) is fresh (not older
  than ``stalenessSeconds``, not in the future);
- a pod counts as serving only while its inference server was read (``eo_pod_metrics_up == 1``) and its
  request counter is fresh; pods that hold GPUs (``eo_gpu_pod_info``) but none of which serve are
  UNAVAILABLE, never zero;
- zero pods needs the exporter's PodResources view to show none for the workload *and* every node that
  held the workload over the placement lookback (``placement_lookback_s``) to have a fresh, complete
  pods heartbeat (a node is its exporter's scrape target, Prometheus' ``instance`` label);
- every value is checked for shape and range (counts are integers in ``[0, MAX_COUNT]``, rates finite
  and non-negative); a NaN default latency while requests are served is UNAVAILABLE (a breach must
  not hide as "no latency").
"""

from __future__ import annotations

import functools
import math
from typing import Any

from scaler import signals as sig
from scaler.metadata import TriggerConfig
from scaler.policy import Observation

HEARTBEAT_METRIC = "eo_exporter_collector_up"
HEARTBEAT = f'{HEARTBEAT_METRIC}{{collector="pods"}}'
POD_INFO = "eo_gpu_pod_info"
POD_METRICS_UP = "eo_pod_metrics_up"
NODE_LABEL = "instance"
REQUESTS_COUNTER = sig.REQUESTS
POWER_KPI = "namespace_workload:eo_pod_energy_joules:rate5m"
JPR_KPI = "namespace_workload:eo_joules_per_request:ratio_rate5m"
PART_LABEL = "eo_part"
LEARNED_CAPACITY_MAX_EXTRAPOLATION = sig.LEARNED_CAPACITY_MAX_EXTRAPOLATION
# The SLO parts: Observation field -> (part name, histograms, preferred first). ``latency`` is the
# end-to-end one. The ITL SLO is per request, so it reads each request's mean time per output token
# where the server publishes it, and the token-level histogram where it does not.
SLO_PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ttft": (sig.SLO_PART_NAMES["ttft"], (sig.TTFT_HISTOGRAM,)),
    "itl": (sig.SLO_PART_NAMES["itl"], (sig.REQUEST_ITL_HISTOGRAM, sig.ITL_HISTOGRAM)),
    "e2e": (sig.SLO_PART_NAMES["e2e"], (sig.E2E_HISTOGRAM,)),
}
# More pods or nodes than any workload runs: a larger count is not an answer but a broken one.
MAX_COUNT = 1_000_000
# Larger rates, watts or seconds than any real workload has: such a value is a broken answer.
MAX_VALUE = 1e12
# Parts that contain custom PromQL: each is its own instant query, never part of the combined one.
CUSTOM_PARTS = ("latency", "capacity", "demand")
# Triggers whose rendered parts are kept, here and as built queries (scaler.kpi_source); the parsed
# triggers and cache keys are kept for more (scaler.service.MAX_TRIGGERS): a rendered-part miss costs
# one render per refresh, a parse miss one per poll.
RENDERED_TRIGGERS = 512
# Parts the combined query always answers (``or vector(0)``): missing from an answer means a broken one.
COUNT_PARTS = ("visible_pods", "replicas", "unwatched_nodes")


class KpiUnavailable(Exception):
    """The data needed for a decision is missing or stale: answer UNAVAILABLE, never a guess."""


class KpiQueryRejected(Exception):
    """Prometheus refused the query (bad custom PromQL): the trigger's metadata is wrong."""


def escape_label_value(value: str) -> str:
    """Escape a string for use inside a double-quoted PromQL label matcher."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")


def selector(namespace: str, workload: str) -> str:
    return f'{{namespace="{escape_label_value(namespace)}",workload="{escape_label_value(workload)}"}}'


def _seconds(value: float) -> str:
    return f"{max(1, int(value))}s"


def slo_signals(trigger: TriggerConfig) -> list[sig.SloSignal]:
    """The SLOs the trigger holds, each with its quantile part (``latencyQuery`` replaces the
    end-to-end one)."""
    out = []
    for kind, slo, q in trigger.slos():
        if kind == "e2e" and trigger.latency_query:
            out.append(sig.custom_slo_signal(kind, slo, sig.Raw(trigger.latency_query)))
        else:
            out.append(sig.slo_signal(kind, slo, q, SLO_PARTS[kind][1]))
    return out


def latency_expr(trigger: TriggerConfig) -> str:
    """The end-to-end latency quantile in seconds (custom ``latencyQuery`` when given)."""
    if trigger.latency_query:
        return f"max(({trigger.latency_query}))"
    q = trigger.latency_quantile
    return sig.Quantile(sig.E2E_HISTOGRAM, q).promql(selector(trigger.namespace, trigger.workload))


def _fresh(age_expr: str, staleness_s: float) -> str:
    """Keeps the series of ``age_expr`` (seconds) that are neither older than staleness nor in the future."""
    return f"(({age_expr}) <= {staleness_s!r} >= 0)"


def replicas_expr(trigger: TriggerConfig) -> str:
    """Pods of the workload serving now: the exporter read their inference server on its last try
    (``eo_pod_metrics_up == 1``) and their request counter is fresh."""
    sel = selector(trigger.namespace, trigger.workload)
    fresh = _fresh(f"time() - timestamp({REQUESTS_COUNTER}{sel})", trigger.staleness_s)
    up = f"({POD_METRICS_UP}{sel} == 1)"
    return f"count(group by (pod) ({fresh} and on ({NODE_LABEL}, namespace, pod) {up}))"


def placement_lookback_s(trigger: TriggerConfig) -> float:
    """How far back the nodes that held the workload are remembered for the zero-pods evidence: the idle
    window (zero follows idleness) and at least the staleness bound."""
    return max(trigger.idle_before_zero_s, trigger.staleness_s)


def signals_for(trigger: TriggerConfig, capacity_inputs: str | None = None) -> sig.Signals:
    """The trigger's signal parts, as declared in ``scaler/signals.py`` (``capacity_inputs``: where the
    learned capacity reads its bucket rates, ``signals.CAPACITY_INPUTS``; default the trigger's
    ``capacityInputs``)."""
    if capacity_inputs is None:
        capacity_inputs = trigger.capacity_inputs
    return sig.build_signals(
        slos=slo_signals(trigger),
        replicas=sig.Replicas(replicas_expr(trigger)),
        stabilization_window_s=trigger.stabilization_window_s,
        breach_settle_s=trigger.breach_settle_s,
        lookback_s=trigger.capacity_lookback_s,
        idle_window_s=trigger.idle_before_zero_s,
        cold_start_s=trigger.cold_start_s,
        season_s=trigger.season_s,
        capacity_extrapolation=capacity_extrapolation(trigger),
        capacity_inputs=capacity_inputs,
        capacity_from_scratch=trigger.replica_capacity_rps is None,
    )


def capacity_extrapolation(trigger: TriggerConfig) -> float | None:
    """How far a learned-capacity minute may extrapolate: less when it can only raise a configured
    ``replicaCapacityRps``; None when the capacity is not learned (``learnCapacity`` false)."""
    if not trigger.learn_capacity:
        return None
    if trigger.replica_capacity_rps is not None:
        return sig.RAISE_CAPACITY_MAX_EXTRAPOLATION
    return sig.LEARNED_CAPACITY_MAX_EXTRAPOLATION


def capacity_sample_expr(trigger: TriggerConfig, inputs: str = "raw") -> str:
    """One minute's sample of the learned per-replica capacity in tokens/s (``signals.capacity_sample``,
    its histograms read as ``inputs`` says)."""
    most = capacity_extrapolation(trigger) or sig.LEARNED_CAPACITY_MAX_EXTRAPOLATION
    sample = sig.capacity_sample(slo_signals(trigger), sig.Replicas(replicas_expr(trigger)), most, inputs)
    return sample.promql(selector(trigger.namespace, trigger.workload))


def capacity_expr(trigger: TriggerConfig, inputs: str) -> str:
    """The learned-capacity part with its histograms read as ``inputs`` says (the combined query reads
    them raw; the others are measured in bench/prometheus_cost.py and checked in the parity test)."""
    part = signals_for(trigger, inputs).parts["capacity"]
    return part.promql(selector(trigger.namespace, trigger.workload))


def all_parts(trigger: TriggerConfig) -> dict[str, str]:
    """Named PromQL expressions, each answering one scalar-like vector (at most one series)."""
    sel = selector(trigger.namespace, trigger.workload)
    replicas = replicas_expr(trigger)
    staleness = trigger.staleness_s
    placement = _seconds(placement_lookback_s(trigger))
    watched = _fresh(f"time() - timestamp({HEARTBEAT} == 1)", staleness)
    out = {
        "heartbeat_age": f"time() - max(timestamp({HEARTBEAT}))",
        # The exporter's PodResources view: pods holding GPUs for the workload, readable or not.
        "visible_pods": f"count(group by ({NODE_LABEL}, pod) ({POD_INFO}{sel})) or vector(0)",
        "replicas": f"{replicas} or vector(0)",
        # Nodes that held the workload over the placement lookback without a fresh, complete pods
        # heartbeat now: their pods cannot be seen, so "no pods" is not evidence of zero.
        "unwatched_nodes": (
            f"count(group by ({NODE_LABEL}) (last_over_time({POD_INFO}{sel}[{placement}]))"
            f" unless on ({NODE_LABEL}) {watched}) or vector(0)"
        ),
    }
    signals = signals_for(trigger)
    out.update({name: expr.promql(sel) for name, expr in signals.parts.items()})
    lookback = _seconds(trigger.capacity_lookback_s)
    if trigger.power_budget_watts is not None and trigger.replica_power_watts is None:
        out["power"] = f"sum({POWER_KPI}{sel})"
        # Per-replica power from history: the budget ceiling stays known while at zero replicas.
        out["replica_power"] = f"max_over_time((sum({POWER_KPI}{sel}) / {replicas})[{lookback}:1m])"
    if trigger.target_joules_per_request is not None:
        out["jpr"] = f"sum({JPR_KPI}{sel})"
    if trigger.activation_query:
        out["demand"] = f"max(({trigger.activation_query}))"
    return out


@functools.lru_cache(maxsize=RENDERED_TRIGGERS)
def _split_parts(trigger: TriggerConfig) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """``(combined, custom)`` parts of ``trigger``, rendered once. Every refresh reads them (the
    answer's shape, the power part) and rendering the signals costs ten times what checking an answer
    does: rendered per refresh, they were most of the scaler's CPU per refresh (bench/scaler_polls.py)."""
    custom = {name for name, expr in signals_for(trigger).parts.items() if sig.contains_raw(expr)}
    if trigger.activation_query:
        custom.add("demand")
    every = all_parts(trigger).items()
    return (
        tuple((name, expr) for name, expr in every if name not in custom),
        tuple((name, expr) for name, expr in every if name in custom),
    )


def custom_parts(trigger: TriggerConfig) -> dict[str, str]:
    """The parts that contain the trigger's own PromQL, each sent as a query of its own."""
    return dict(_split_parts(trigger)[1])


def parts(trigger: TriggerConfig) -> dict[str, str]:
    """The parts of the combined query: every part that contains no custom PromQL."""
    return dict(_split_parts(trigger)[0])


def build_query(trigger: TriggerConfig) -> str:
    """One instant query answering every part, each series tagged ``eo_part="<name>"``."""
    tagged = [
        f'label_replace({expr}, "{PART_LABEL}", "{name}", "", "")' for name, expr in parts(trigger).items()
    ]
    return " or ".join(tagged)


def _number(raw: object) -> float:
    if not isinstance(raw, str):
        # Prometheus sends sample values as strings; anything else is not a Prometheus answer.
        raise KpiUnavailable("the answer has a sample value that is not a string")
    try:
        return float(raw)
    except ValueError:
        raise KpiUnavailable("the answer has a sample value that is not a number") from None


def _sample(item: object) -> tuple[dict[str, Any], float]:
    """``(labels, value)`` of one series of an instant vector, checked for shape."""
    if not isinstance(item, dict):
        raise KpiUnavailable("the answer has a series that is not an object")
    labels, value = item.get("metric"), item.get("value")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise KpiUnavailable("the answer has a series whose labels are not a map of strings")
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], int | float):
        raise KpiUnavailable("the answer has a series whose value is not [time, value]")
    return labels, _number(value[1])


def _values(result: object) -> dict[str, float]:
    """The combined query's answer: one value per ``eo_part``, every series checked."""
    if not isinstance(result, list):
        raise KpiUnavailable("the answer is not a vector")
    values: dict[str, float] = {}
    for item in result:
        labels, value = _sample(item)
        name = labels.get(PART_LABEL)
        if name is None or name in values:
            # Each part is an aggregation answering at most one series; anything else is not our query.
            raise KpiUnavailable("the answer does not have the combined query's shape")
        values[name] = value
    return values


def custom_value(name: str, result_type: str, result: object) -> float | None:
    """One value from the answer to a custom part's own query: a scalar, or the highest of a vector's
    series (labels ignored), None when empty or NaN; other result types are the trigger's mistake."""
    if result_type == "scalar":
        if not isinstance(result, list) or len(result) != 2:
            raise KpiUnavailable(f"the answer to the {name} query is not a scalar")
        value = _number(result[1])
        return None if math.isnan(value) else value
    if result_type != "vector":
        raise KpiQueryRejected(
            f"the {name} query must return a number or an instant vector, not {result_type}"
        )
    if not isinstance(result, list):
        raise KpiUnavailable(f"the answer to the {name} query is not a vector")
    numbers = [v for v in (_sample(item)[1] for item in result) if not math.isnan(v)]
    return max(numbers) if numbers else None


def _count(v: dict[str, float], name: str) -> int:
    value = v.get(name)
    if value is None:
        raise KpiUnavailable(f"the answer lacks the {name} part")
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_COUNT:
        raise KpiUnavailable(f"{name} {value:g} is not a count in [0, {MAX_COUNT}]")
    return int(value)


def _amount(v: dict[str, float], name: str, *, infinite_is_none: bool = False) -> float | None:
    """A finite value in [0, MAX_VALUE], None when absent or NaN; anything else is a broken answer."""
    value = v.get(name)
    if value is None or math.isnan(value):
        return None
    if math.isinf(value) and infinite_is_none and value > 0:
        return None
    if not 0 <= value <= MAX_VALUE:
        raise KpiUnavailable(f"{name} {value:g} is outside [0, {MAX_VALUE:g}]")
    return value


def _reading(v: dict[str, float], trigger: TriggerConfig, kind: str, where: str) -> float | None:
    """The quantile reading of one SLO: +Inf (above the highest bucket) is a breach, never "no reading";
    NaN while its histogram counts observations is a broken histogram."""
    name = SLO_PARTS[kind][0]
    value = v.get(name)
    if value is not None and math.isinf(value) and value > 0:
        return value
    reading = _amount(v, name)
    custom = kind == "e2e" and trigger.latency_query
    if reading is None and not custom and (_amount(v, f"{name}_rate") or 0.0) > 0:
        raise KpiUnavailable(f"{name} of {where} is NaN while requests are measured (broken histogram)")
    return reading


def _ratio(v: dict[str, float], name: str) -> float | None:
    """An SLO's ratio part (budget used, else quantile over SLO); +Inf is a breach, not "no reading"."""
    value = v.get(f"{name}_ratio")
    if value is not None and math.isinf(value) and value > 0:
        return value
    return _amount(v, f"{name}_ratio")


def _observations(v: dict[str, float], name: str) -> float | None:
    """Observations behind an SLO's ratio: its histogram's count rate over the short window the
    budget is read over, times that window; None without the part (custom PromQL counts none)."""
    rate = _amount(v, f"{name}_rate")
    return None if rate is None else rate * sig.SHORT_WINDOW_S


def _heartbeat(v: dict[str, float], trigger: TriggerConfig) -> None:
    age = v.get("heartbeat_age")
    if age is None or math.isnan(age):
        raise KpiUnavailable(f"no exporter pods heartbeat ({HEARTBEAT}) in Prometheus")
    if age < 0:
        raise KpiUnavailable("the exporter pods heartbeat is timestamped in the future")
    if age > trigger.staleness_s:
        raise KpiUnavailable(f"exporter pods heartbeat is {age:.0f}s old (> {trigger.staleness_s:.0f}s)")


def to_observation(
    trigger: TriggerConfig, result: object, custom: dict[str, float | None] | None = None
) -> Observation:
    """Turn Prometheus' ``data.result`` for ``build_query(trigger)`` (and the values of the custom parts'
    own queries, ``custom_value``) into an Observation; ``KpiUnavailable`` unless the data is fresh."""
    v = _values(result)
    unknown = set(v) - set(parts(trigger))
    if unknown:
        raise KpiUnavailable("the answer does not have the combined query's shape")
    for name, value in (custom or {}).items():
        if name in custom_parts(trigger) and value is not None:
            v[name] = value
    return observation_from_values(trigger, v)


def observation_from_values(trigger: TriggerConfig, v: dict[str, float]) -> Observation:
    """The Observation from every part's value (absent parts left out): the one place where the
    evidence rules and ranges are applied, for Prometheus' answers and for the simulator's."""
    where = f"{trigger.namespace}/{trigger.workload}"
    _heartbeat(v, trigger)

    replicas = _count(v, "replicas")
    visible = _count(v, "visible_pods")
    unwatched = _count(v, "unwatched_nodes")
    demand = _amount(v, "demand")
    capacity = _amount(v, "capacity")
    replica_power = _amount(v, "replica_power")
    recent = _amount(v, "recent_requests") or 0.0
    peak = _amount(v, "peak") or 0.0
    peak_tokens = _amount(v, "peak_tokens")
    rise = _amount(v, "burst_rise")
    # Minutes of rise history: none at all (the part absent) is a workload with no history yet.
    history = _amount(v, "rise_minutes") or 0.0
    forecasts = [f for f in (_amount(v, "forecast_trend"), _amount(v, "forecast_season")) if f is not None]
    forecast = max(forecasts) if forecasts else None
    settled = _count(v, "settled_replicas") if "settled_replicas" in v else None
    if replicas == 0:
        if visible > 0:
            raise KpiUnavailable(
                f"{visible} pods of {where} hold GPUs but none is serving: their inference server cannot "
                f"be read ({POD_METRICS_UP} 0) or their counters are stale"
            )
        if unwatched > 0:
            raise KpiUnavailable(
                f"{unwatched} nodes that held {where} in the last {placement_lookback_s(trigger):.0f}s have "
                "no fresh pods heartbeat: zero pods cannot be told from pods that cannot be seen"
            )
        # Positive evidence of zero: the pods view is complete on every node that held the workload.
        return Observation(
            current_replicas=0,
            load_rps=0.0,
            peak_load_rps=peak,
            latency_s=None,
            idle_for_s=trigger.idle_before_zero_s if not recent else 0.0,
            demand_rps=demand,
            historical_replica_power_watts=replica_power,
            settled_replicas=0,
            peak_load_tps=peak_tokens,
            learned_capacity_tps=capacity,
            burst_rise=rise,
            forecast_rps=forecast,
            history_minutes=history,
        )
    load = _amount(v, "load")
    if load is None:
        raise KpiUnavailable(
            f"the request rate ({REQUESTS_COUNTER}) of {where} is absent while {replicas} pods report"
        )
    power = None
    if "power" in parts(trigger):
        power = _amount(v, "power")
        if power is None:
            raise KpiUnavailable(f"{POWER_KPI} for {where} is absent and powerBudgetWatts needs it")
    kv = _amount(v, "kv_usage")
    if kv is not None and kv > 1:
        raise KpiUnavailable(f"KV-cache usage {kv:g} of {where} is above 1 (the contract is a ratio)")
    readings = {kind: _reading(v, trigger, kind, where) for kind, _, _ in trigger.slos()}
    ratios = {kind: _ratio(v, SLO_PARTS[kind][0]) for kind, _, _ in trigger.slos()}
    counts = {kind: _observations(v, SLO_PARTS[kind][0]) for kind, _, _ in trigger.slos()}
    return Observation(
        current_replicas=replicas,
        load_rps=load,
        peak_load_rps=max(load, peak),
        latency_s=readings.get("e2e"),
        idle_for_s=0.0 if recent > 0 else trigger.idle_before_zero_s,
        demand_rps=demand,
        workload_power_watts=power,
        joules_per_request=_amount(v, "jpr", infinite_is_none=True),
        historical_replica_power_watts=replica_power,
        settled_replicas=settled,
        ttft_s=readings.get("ttft"),
        itl_s=readings.get("itl"),
        ttft_ratio=ratios.get("ttft"),
        itl_ratio=ratios.get("itl"),
        latency_ratio=ratios.get("e2e"),
        ttft_observations=counts.get("ttft"),
        itl_observations=counts.get("itl"),
        latency_observations=counts.get("e2e"),
        load_tps=_amount(v, "tokens"),
        peak_load_tps=peak_tokens,
        learned_capacity_tps=capacity,
        waiting_requests=_amount(v, "waiting"),
        running_requests=_amount(v, "running"),
        kv_usage_ratio=kv,
        burst_rise=rise,
        forecast_rps=forecast,
        history_minutes=history,
    )
