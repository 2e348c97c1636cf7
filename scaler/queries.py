"""PromQL for one trigger, and the answers turned into a policy ``Observation``. Pure code.

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

import math
from typing import Any

from scaler.metadata import TriggerConfig
from scaler.policy import Observation

HEARTBEAT_METRIC = "eo_exporter_collector_up"
HEARTBEAT = f'{HEARTBEAT_METRIC}{{collector="pods"}}'
POD_INFO = "eo_gpu_pod_info"
POD_METRICS_UP = "eo_pod_metrics_up"
NODE_LABEL = "instance"
REQUESTS_COUNTER = "eo_pod_requests_total"
LATENCY_BUCKETS = "eo_pod_request_latency_seconds_bucket"
LATENCY_COUNT = "eo_pod_request_latency_seconds_count"
LOAD_KPI = "namespace_workload:eo_pod_requests:rate5m"
POWER_KPI = "namespace_workload:eo_pod_energy_joules:rate5m"
JPR_KPI = "namespace_workload:eo_joules_per_request:ratio_rate5m"
LATENCY_RATE_WINDOW = "1m"
PART_LABEL = "eo_part"
# Learned capacity extrapolates each minute's per-replica load along the latency headroom
# (load/replica * slo/latency, a straight line through the origin) by at most this factor.
LEARNED_CAPACITY_MAX_EXTRAPOLATION = 3.0
# Resolution of the subquery that finds the fewest replicas serving over the breach-settle window.
SETTLED_REPLICAS_STEP = "15s"
# More pods or nodes than any workload runs: a larger count is not an answer but a broken one.
MAX_COUNT = 1_000_000
# Larger rates, watts or seconds than any real workload has: such a value is a broken answer.
MAX_VALUE = 1e12
# Parts that contain custom PromQL: each is its own instant query, never part of the combined one.
CUSTOM_PARTS = ("latency", "capacity", "demand")
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


def latency_expr(trigger: TriggerConfig) -> str:
    """The SLO quantile of request latency in seconds (custom ``latencyQuery`` when given)."""
    if trigger.latency_query:
        return f"max(({trigger.latency_query}))"
    sel = selector(trigger.namespace, trigger.workload)
    return (
        f"histogram_quantile({trigger.latency_quantile!r}, "
        f"sum by (le) (rate({LATENCY_BUCKETS}{sel}[{LATENCY_RATE_WINDOW}])))"
    )


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


def capacity_sample_expr(trigger: TriggerConfig) -> str:
    """One sample of the learned per-replica capacity: while latency holds the SLO, the per-replica load
    extrapolated along the latency headroom, ``load/replicas * min(slo/latency, 3)``
    (``LEARNED_CAPACITY_MAX_EXTRAPOLATION``); empty otherwise.

    Under continuous batching latency grows with the batch, i.e. with the per-replica load; the straight
    line through the origin and today's point reaches the SLO at ``load/replica * slo/latency``. It
    under-estimates while the unloaded latency is a large part of today's (long outputs), and the bound
    keeps a quiet minute from promising more than three times what was served. Without the extrapolation the
    first observation would stick: the policy scales out before the per-replica load exceeds it, so it
    would never see more.
    """
    per_replica = f"sum({LOAD_KPI}{selector(trigger.namespace, trigger.workload)}) / {replicas_expr(trigger)}"
    latency = latency_expr(trigger)
    slo = repr(trigger.latency_slo_s)
    headroom = f"clamp_max({slo} / {latency}, {LEARNED_CAPACITY_MAX_EXTRAPOLATION!r})"
    return f"({per_replica}) * {headroom} and on() ({latency} <= {slo})"


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
        "load": f"sum({LOAD_KPI}{sel})",
        "peak": f"max(max_over_time({LOAD_KPI}{sel}[{_seconds(trigger.stabilization_window_s)}]))",
        "latency": latency_expr(trigger),
        "recent_requests": f"sum(increase({REQUESTS_COUNTER}{sel}[{_seconds(trigger.idle_before_zero_s)}]))",
        # Fewest pods serving over the breach-settle window: replicas an SLO breach started are not
        # counted until the window has passed, so one breach is answered once (policy step 3).
        "settled_replicas": (
            f"min_over_time({replicas}[{_seconds(trigger.breach_settle_s)}:{SETTLED_REPLICAS_STEP}])"
        ),
    }
    if not trigger.latency_query:
        # Requests measured by the latency histogram: a NaN quantile while these flow is broken data.
        out["latency_rate"] = f"sum(rate({LATENCY_COUNT}{sel}[{LATENCY_RATE_WINDOW}]))"
    lookback = _seconds(trigger.capacity_lookback_s)
    if trigger.power_budget_watts is not None and trigger.replica_power_watts is None:
        out["power"] = f"sum({POWER_KPI}{sel})"
        # Per-replica power from history: the budget ceiling stays known while at zero replicas.
        out["replica_power"] = f"max_over_time((sum({POWER_KPI}{sel}) / {replicas})[{lookback}:1m])"
    if trigger.target_joules_per_request is not None:
        out["jpr"] = f"sum({JPR_KPI}{sel})"
    if trigger.replica_capacity_rps is None:
        # Learned capacity, from history: the best of the minutes' capacity samples.
        out["capacity"] = f"max_over_time(({capacity_sample_expr(trigger)})[{lookback}:1m])"
    if trigger.activation_query:
        out["demand"] = f"max(({trigger.activation_query}))"
    return out


def custom_parts(trigger: TriggerConfig) -> dict[str, str]:
    """The parts that contain the trigger's own PromQL, each sent as a query of its own."""
    custom = {"latency": trigger.latency_query is not None, "demand": trigger.activation_query is not None}
    custom["capacity"] = custom["latency"]
    return {name: expr for name, expr in all_parts(trigger).items() if custom.get(name, False)}


def parts(trigger: TriggerConfig) -> dict[str, str]:
    """The parts of the combined query: every part that contains no custom PromQL."""
    custom = custom_parts(trigger)
    return {name: expr for name, expr in all_parts(trigger).items() if name not in custom}


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


def _latency(v: dict[str, float], trigger: TriggerConfig, where: str) -> float | None:
    value = v.get("latency")
    if value is not None and math.isinf(value) and value > 0:
        return value  # above the highest bucket: a breach, never "no latency"
    latency = _amount(v, "latency")
    if latency is None and not trigger.latency_query and (_amount(v, "latency_rate") or 0.0) > 0:
        raise KpiUnavailable(f"latency of {where} is NaN while requests are measured (broken histogram)")
    return latency


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
    where = f"{trigger.namespace}/{trigger.workload}"
    _heartbeat(v, trigger)

    replicas = _count(v, "replicas")
    visible = _count(v, "visible_pods")
    unwatched = _count(v, "unwatched_nodes")
    demand = _amount(v, "demand")
    latency = _latency(v, trigger, where)
    capacity = _amount(v, "capacity")
    replica_power = _amount(v, "replica_power")
    recent = _amount(v, "recent_requests") or 0.0
    peak = _amount(v, "peak") or 0.0
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
            learned_capacity_rps=capacity,
            historical_replica_power_watts=replica_power,
            settled_replicas=0,
        )
    load = _amount(v, "load")
    if load is None:
        raise KpiUnavailable(f"{LOAD_KPI} for {where} is absent while {replicas} pods report")
    power = None
    if "power" in parts(trigger):
        power = _amount(v, "power")
        if power is None:
            raise KpiUnavailable(f"{POWER_KPI} for {where} is absent and powerBudgetWatts needs it")
    return Observation(
        current_replicas=replicas,
        load_rps=load,
        peak_load_rps=max(load, peak),
        latency_s=latency,
        idle_for_s=0.0 if recent > 0 else trigger.idle_before_zero_s,
        demand_rps=demand,
        learned_capacity_rps=capacity,
        workload_power_watts=power,
        joules_per_request=_amount(v, "jpr", infinite_is_none=True),
        historical_replica_power_watts=replica_power,
        settled_replicas=settled,
    )
