"""PromQL for one trigger, and the answer turned into a policy ``Observation``. Pure code.

Every signal the policy needs is one part of a single instant query (``part_a or part_b or ...``),
each part tagged with an ``eo_part`` label by ``label_replace``: one HTTP request per workload per
refresh, evaluated at one instant, so the parts are consistent with each other.

Label values are escaped (``\\``, ``"`` and newlines) even though metadata validation already limits
namespace and workload to Kubernetes names: two locks, so no metadata can change a query's structure.
Custom ``latencyQuery``/``activationQuery`` are PromQL by design (as in KEDA's prometheus scaler);
they are parenthesised and their result only reaches the ScaledObject that wrote them (the cache key
is the whole query).

Missing data is never turned into a number: a dead exporter pipeline (heartbeat absent or older than
``stalenessSeconds``), stale workload series, or a missing KPI while pods run raise ``KpiUnavailable``
so that KEDA's fallback engages. Absent workload series with a live pipeline mean zero pods.
"""

from __future__ import annotations

import math
from typing import Any

from scaler.metadata import TriggerConfig
from scaler.policy import Observation

HEARTBEAT_METRIC = "eo_exporter_collector_up"
REQUESTS_COUNTER = "eo_pod_requests_total"
LATENCY_BUCKETS = "eo_pod_request_latency_seconds_bucket"
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


def replicas_expr(trigger: TriggerConfig) -> str:
    """Pods of the workload reporting now."""
    return f"count(count by (pod) ({REQUESTS_COUNTER}{selector(trigger.namespace, trigger.workload)}))"


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


def parts(trigger: TriggerConfig) -> dict[str, str]:
    """Named PromQL expressions, each answering one scalar-like vector (at most one series)."""
    sel = selector(trigger.namespace, trigger.workload)
    replicas = replicas_expr(trigger)
    out = {
        "heartbeat_age": f"time() - max(timestamp({HEARTBEAT_METRIC}))",
        "age": f"time() - max(timestamp({REQUESTS_COUNTER}{sel}))",
        "replicas": replicas,
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


def build_query(trigger: TriggerConfig) -> str:
    """One instant query answering every part, each series tagged ``eo_part="<name>"``."""
    tagged = [
        f'label_replace({expr}, "{PART_LABEL}", "{name}", "", "")' for name, expr in parts(trigger).items()
    ]
    return " or ".join(tagged)


def _values(result: list[dict[str, Any]]) -> dict[str, float]:
    values: dict[str, float] = {}
    for series in result:
        name = series.get("metric", {}).get(PART_LABEL)
        try:
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if name is None:
            continue
        # A custom query may answer several series; the highest is the conservative reading.
        values[name] = max(values.get(name, -math.inf), value)
    return values


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def to_observation(trigger: TriggerConfig, result: list[dict[str, Any]]) -> Observation:
    """Turn Prometheus' ``data.result`` for ``build_query(trigger)`` into an Observation."""
    v = _values(result)
    where = f"{trigger.namespace}/{trigger.workload}"
    heartbeat = _finite(v.get("heartbeat_age"))
    if heartbeat is None:
        raise KpiUnavailable(f"no exporter heartbeat ({HEARTBEAT_METRIC}) in Prometheus")
    if heartbeat > trigger.staleness_s:
        raise KpiUnavailable(f"exporter heartbeat is {heartbeat:.0f}s old (> {trigger.staleness_s:.0f}s)")

    replicas = int(_finite(v.get("replicas")) or 0)
    demand = _finite(v.get("demand"))
    if replicas == 0:
        # Live pipeline, no pods reporting: the workload runs zero replicas.
        return Observation(
            current_replicas=0,
            load_rps=0.0,
            peak_load_rps=max(0.0, _finite(v.get("peak")) or 0.0),
            latency_s=None,
            idle_for_s=trigger.idle_before_zero_s if not v.get("recent_requests") else 0.0,
            demand_rps=max(0.0, demand) if demand is not None else None,
            learned_capacity_rps=_finite(v.get("capacity")),
            historical_replica_power_watts=_finite(v.get("replica_power")),
            settled_replicas=0,
        )
    age = _finite(v.get("age"))
    if age is None or age > trigger.staleness_s:
        raise KpiUnavailable(f"{REQUESTS_COUNTER} for {where} is stale ({age}s > {trigger.staleness_s:.0f}s)")
    load = _finite(v.get("load"))
    if load is None:
        raise KpiUnavailable(f"{LOAD_KPI} for {where} is absent while {replicas} pods report")
    power = None
    if "power" in parts(trigger):
        power = _finite(v.get("power"))
        if power is None:
            raise KpiUnavailable(f"{POWER_KPI} for {where} is absent and powerBudgetWatts needs it")
    recent = _finite(v.get("recent_requests")) or 0.0
    settled = _finite(v.get("settled_replicas"))
    return Observation(
        current_replicas=replicas,
        load_rps=max(0.0, load),
        peak_load_rps=max(load, _finite(v.get("peak")) or 0.0),
        latency_s=_finite(v.get("latency")),
        idle_for_s=0.0 if recent > 0 else trigger.idle_before_zero_s,
        demand_rps=max(0.0, demand) if demand is not None else None,
        learned_capacity_rps=_finite(v.get("capacity")),
        workload_power_watts=power,
        joules_per_request=_finite(v.get("jpr")),
        historical_replica_power_watts=_finite(v.get("replica_power")),
        settled_replicas=int(settled) if settled is not None else None,
    )
