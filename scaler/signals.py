"""The trigger's signals, declared once, with two evaluators. Pure code.

Every signal the replica policy reads from the workload's series (rates, latency quantiles, queue and
KV gauges, the learned capacity, burst headroom, forecasts) is a small expression tree built here from
the trigger's metadata. Each node has two evaluators that must agree:

* ``promql(sel)``: the PromQL ``scaler/queries.py`` sends to Prometheus;
* ``value(view, at_s)``: the same computation in Python over a ``SeriesView``, Prometheus' semantics
  kept where they matter (rates over a window ending at ``at_s``; subqueries evaluated at the multiples
  of their step inside the closed range ``[at - range, at]``, as Prometheus 2.x does; ``NaN`` ignored by
  ``max``/``min`` unless every value is NaN; a filter drops the series; an absent operand makes a binary
  operation absent). The simulator (``sim/eo.py``) evaluates the trigger this way, and a parity test
  loads one history into a real Prometheus and into the simulator's view and compares the answers.

Windows are module constants (the short window the policy scales up on, the subquery steps), so the
PromQL and the simulator cannot drift apart. Absent is ``None``; NaN stays NaN until the observation is
built (``scaler/queries.py`` turns it into "no reading").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Contract metrics (docs/scaler.md): the exporter's per-pod mirrors of the inference server.
REQUESTS = "eo_pod_requests_total"
TOKENS = "eo_pod_tokens_total"  # kind=prompt|generation, both count as work
E2E_HISTOGRAM = "eo_pod_request_latency_seconds"
TTFT_HISTOGRAM = "eo_pod_time_to_first_token_seconds"
ITL_HISTOGRAM = "eo_pod_inter_token_latency_seconds"  # one observation per output token
# One observation per finished request: its mean time per output token after the first, the ITL a user
# feels and the SLO is held on (a request of few tokens beside a long prefill barely moves the token
# histogram, but misses here). Servers that publish none leave the ITL SLO on ITL_HISTOGRAM.
REQUEST_ITL_HISTOGRAM = "eo_pod_request_time_per_output_token_seconds"
WAITING = "eo_pod_requests_waiting"
RUNNING = "eo_pod_requests_running"
KV_USAGE = "eo_pod_kv_cache_usage_ratio"

# The short window: arrival rate, token rate and latency quantiles the policy scales up on (Knative's
# panic window is 6 s; a 1-minute rate still has four 15-s scrapes, so it is not noise).
SHORT_WINDOW_S = 60.0
# Burst measure: the rate over 30 s (two scrapes at 15 s) against the 1-minute rate a cold start before.
BURST_WINDOW_S = 30.0
# A queue counts as forming when waiting requests stay above zero this long (three 15-s evaluations).
QUEUE_SUSTAIN_S = 30.0
# Subquery resolution of the short-lived signals (peak, settled replicas, queue) and of the hourly ones.
FINE_STEP_S = 15.0
COARSE_STEP_S = 60.0
# The trend forecast fits a line to the last 10 minutes of the 1-minute rate; with fewer than
# ``FORECAST_MIN_POINTS`` of its 41 points present (a young workload), it is off.
FORECAST_RANGE_S = 600.0
FORECAST_MIN_POINTS = 37
# The seasonal forecast compares 5-minute rates (smooth enough to carry a level from one season on).
SEASON_RATE_WINDOW_S = 300.0
# The high quantile of the burst rises over the lookback that sizes the standing headroom, and the
# fewest 1-minute rise samples it needs.
BURST_QUANTILE = 0.95
HEADROOM_MIN_POINTS = 10
# A learned-capacity minute extrapolates its per-replica load along the SLO headroom, by the inverse
# square root of the worst SLO ratio (the budget used rises steeply near the knee, so 1/ratio would
# promise too much at mid loads), by at most this.
LEARNED_CAPACITY_MAX_EXTRAPOLATION = 2.5
# With replicaCapacityRps configured the learned value can only raise it, and by less: the load test
# already says where the knee is, and a stretch of 2.5 from the minutes with no miss at all (their
# error budget reads 0) promised replicas more than they held (eo-sim, diurnal day: 95.7% within the
# SLOs at 2.5, 98.6% at 1.5, as without the raise).
RAISE_CAPACITY_MAX_EXTRAPOLATION = 1.5
# The part holding each SLO's quantile (``latency`` is the end-to-end one, its name since the first policy).
SLO_PART_NAMES = {"ttft": "ttft", "itl": "itl", "e2e": "latency"}
# An error budget is judged over at least this many misses' worth of observations (BudgetUsed).
BUDGET_MIN_OBSERVATIONS = 2.0
# How the learned capacity's subquery reads the SLO histograms at each of its minutes: the pods' raw
# buckets; the per-workload 1-minute bucket rates that recording_rules/ records
# (``recorded_bucket_rate``: one series per bucket, not one per pod and bucket); or those, each falling
# back to the raw rate where its recorded series is absent (PromQL evaluates both sides of ``or``, so
# the fallback costs at least what the raw read does: docs/scaler.md "Cost on Prometheus").
CAPACITY_INPUTS = ("raw", "recorded", "recorded_or_raw")
# Rates below this are "nothing" when dividing by them (requests/s).
TINY_RATE = 0.05


class SeriesView(Protocol):
    """The workload's series as a Python evaluator sees them (the simulator's Prometheus).

    Every method answers for one instant ``at_s``; None when there is no series at all.
    """

    def counter_rate(self, metric: str, window_s: float, at_s: float) -> float | None:
        """``sum(rate(metric{workload}[window]))`` in units per second."""
        ...

    def quantile(self, metric: str, q: float, window_s: float, at_s: float) -> float | None:
        """``histogram_quantile(q, sum by (le) (rate(metric_bucket{workload}[window])))``; NaN with no
        observations in the window."""
        ...

    def gauge(self, metric: str, aggregation: str, at_s: float) -> float | None:
        """``sum`` or ``max`` of the pods' gauge ``metric``."""
        ...

    def replicas(self, at_s: float) -> int:
        """Pods serving (fresh counters and a readable server)."""
        ...

    def share_within(self, metric: str, bound_s: float, window_s: float, at_s: float) -> float | None:
        """``sum(rate(metric_bucket{le="<bound>"}[w])) / sum(rate(metric_count[w]))``: the share of the
        window's observations at most ``bound_s``; None when ``bound_s`` is not a bucket bound, NaN with
        no observations."""
        ...


Memo = dict[tuple[int, float], "float | None"]


class Expr:
    """A node. ``promql`` renders it for a selector; ``value`` evaluates it over a ``SeriesView``."""

    def promql(self, sel: str) -> str:
        raise NotImplementedError

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        raise NotImplementedError


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


def _number(value: float) -> str:
    return repr(float(value))


@dataclass(frozen=True, eq=False)
class Const(Expr):
    number: float

    def promql(self, sel: str) -> str:
        return _number(self.number)

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        return self.number


@dataclass(frozen=True, eq=False)
class Rate(Expr):
    """Summed per-second rate of a counter over ``window_s``, optionally ``offset_s`` in the past."""

    metric: str
    window_s: float
    offset_s: float = 0.0

    def promql(self, sel: str) -> str:
        offset = f" offset {_seconds(self.offset_s)}" if self.offset_s else ""
        return f"sum(rate({self.metric}{sel}[{_seconds(self.window_s)}]{offset}))"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        return view.counter_rate(self.metric, self.window_s, at_s - self.offset_s)


@dataclass(frozen=True, eq=False)
class Quantile(Expr):
    """``histogram_quantile`` of a histogram summed over the workload's pods."""

    histogram: str
    q: float
    window_s: float = SHORT_WINDOW_S
    inputs: str = "raw"  # CAPACITY_INPUTS: the simulator's value is the same for each

    def __post_init__(self) -> None:
        _check_inputs(self.inputs, self.window_s)

    def promql(self, sel: str) -> str:
        w = _seconds(self.window_s)
        buckets = _bucket_rate_sum(self.histogram, sel, None, True, self.inputs, w)
        return f"histogram_quantile({self.q!r}, {buckets})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        return view.quantile(self.histogram, self.q, self.window_s, at_s)


def _le_pattern(bound: float) -> str:
    """A regex matching the ``le`` label of the bucket bound ``bound`` however a client formats it
    (``0.25``; ``1`` or ``1.0``)."""
    texts = {repr(float(bound)), f"{bound:g}"}
    if float(bound).is_integer():
        texts |= {str(int(bound)), f"{int(bound)}.0"}
    return "|".join(sorted(t.replace(".", "\\\\.") for t in texts))


def recorded_bucket_rate(histogram: str) -> str:
    """The recorded per-workload 1-minute bucket rates of ``histogram`` (recording_rules/
    workload.rules.yaml, group ``eo-workload-capacity-inputs``; the count is the ``+Inf`` bucket)."""
    return f"namespace_workload_le:{histogram}_bucket:rate1m_unfiltered"


def _bucket_rate_sum(histogram: str, sel: str, le: str | None, by_le: bool, inputs: str, w: str) -> str:
    """``sum [by (le)] (rate(<histogram>_bucket{sel[,le]}[w]))`` read as ``inputs`` says.

    ``le`` is a matcher (``le=~"..."``), None for every bucket; the raw count is ``_count``, the
    recorded one the ``+Inf`` bucket (equal in the exposition format)."""
    group = " by (le) " if by_le else ""
    bucket_sel = sel if le is None else sel[:-1] + f",{le}}}"
    if le == 'le="+Inf"':
        raw = f"sum{group}(rate({histogram}_count{sel}[{w}]))"
    else:
        raw = f"sum{group}(rate({histogram}_bucket{bucket_sel}[{w}]))"
    if inputs == "raw":
        return raw
    recorded = f"sum{group}({recorded_bucket_rate(histogram)}{bucket_sel})"
    return recorded if inputs == "recorded" else f"({recorded} or {raw})"


def _check_inputs(inputs: str, window_s: float) -> None:
    if inputs not in CAPACITY_INPUTS:
        raise ValueError(f"unknown histogram inputs {inputs!r}")
    if inputs != "raw" and window_s != SHORT_WINDOW_S:
        raise ValueError("recorded bucket rates are over the short window only")


@dataclass(frozen=True, eq=False)
class BudgetUsed(Expr):
    """Share of the SLO's error budget used over the window: the observations above the SLO (read at
    the bucket whose bound is the SLO) over ``1 - q`` of the observations. Exact where a quantile read
    inside a wide bucket is not (the share says how much room is left, the interpolated quantile
    cannot). A window with fewer than ``BUDGET_MIN_OBSERVATIONS / (1 - q)`` observations is judged as
    if it had that many: one slow request among 60 is not 1.7% of a p99 budget but one miss, and one
    is not yet a breach. Absent without observations, or when the SLO is not a bucket bound (the
    quantile ratio is then the reading)."""

    histogram: str
    slo_s: float
    q: float
    window_s: float = SHORT_WINDOW_S
    inputs: str = "raw"  # CAPACITY_INPUTS: the simulator's value is the same for each

    def __post_init__(self) -> None:
        _check_inputs(self.inputs, self.window_s)

    def floor_rate(self) -> float:
        return BUDGET_MIN_OBSERVATIONS / (1 - self.q) / self.window_s

    def promql(self, sel: str) -> str:
        w = _seconds(self.window_s)
        within = _bucket_rate_sum(
            self.histogram, sel, f'le=~"{_le_pattern(self.slo_s)}"', False, self.inputs, w
        )
        total = _bucket_rate_sum(self.histogram, sel, 'le="+Inf"', False, self.inputs, w)
        # clamp_min: rounding can leave total - within a hair below 0 when nothing missed.
        used = f"clamp_min({total} - {within}, 0) / clamp_min({total}, {_number(self.floor_rate())})"
        return f"({used} / {_number(1 - self.q)}) and on() ({total} > 0)"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        share = view.share_within(self.histogram, self.slo_s, self.window_s, at_s)
        total = view.counter_rate(f"{self.histogram}_count", self.window_s, at_s)
        if share is None or total is None or not total > 0:
            return None
        misses = max(total - share * total, 0.0)
        return misses / max(total, self.floor_rate()) / (1 - self.q)


@dataclass(frozen=True, eq=False)
class Or(Expr):
    """``left or right``: left where present, else right."""

    left: Expr
    right: Expr

    def promql(self, sel: str) -> str:
        return f"({self.left.promql(sel)}) or ({self.right.promql(sel)})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        v = self.left.value(view, at_s, memo)
        return v if v is not None else self.right.value(view, at_s, memo)


@dataclass(frozen=True, eq=False)
class Gauge(Expr):
    metric: str
    aggregation: str  # "sum" or "max"

    def promql(self, sel: str) -> str:
        return f"{self.aggregation}({self.metric}{sel})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        return view.gauge(self.metric, self.aggregation, at_s)


@dataclass(frozen=True, eq=False)
class Replicas(Expr):
    """Serving pods; absent (not 0) when none, as PromQL's ``count`` of nothing is."""

    expr: str  # the PromQL, from scaler/queries.py (it carries the freshness rules)

    def promql(self, sel: str) -> str:
        return self.expr

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        n = view.replicas(at_s)
        return float(n) if n > 0 else None


@dataclass(frozen=True, eq=False)
class Raw(Expr):
    """Custom PromQL from the trigger (``latencyQuery``): Prometheus only, never the simulator."""

    expr: str

    def promql(self, sel: str) -> str:
        return f"max(({self.expr}))"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        raise ValueError("custom PromQL is evaluated by Prometheus only")


def _divide(a: float, b: float) -> float:
    if b != 0:
        return a / b
    if a == 0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a)


_OPS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _divide,
}


@dataclass(frozen=True, eq=False)
class BinOp(Expr):
    """Arithmetic between two single-series vectors (or a vector and a constant)."""

    op: str
    left: Expr
    right: Expr

    def promql(self, sel: str) -> str:
        return f"({self.left.promql(sel)}) {self.op} ({self.right.promql(sel)})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        a = self.left.value(view, at_s, memo)
        if a is None:
            return None
        b = self.right.value(view, at_s, memo)
        return None if b is None else _OPS[self.op](a, b)


_CMP: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}


@dataclass(frozen=True, eq=False)
class Filter(Expr):
    """``expr <op> number``: the value where the comparison holds, absent otherwise (NaN never holds)."""

    expr: Expr
    op: str
    threshold: float

    def promql(self, sel: str) -> str:
        return f"({self.expr.promql(sel)}) {self.op} {_number(self.threshold)}"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        v = self.expr.value(view, at_s, memo)
        return v if v is not None and _CMP[self.op](v, self.threshold) else None


@dataclass(frozen=True, eq=False)
class Sqrt(Expr):
    expr: Expr

    def promql(self, sel: str) -> str:
        return f"sqrt({self.expr.promql(sel)})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        v = self.expr.value(view, at_s, memo)
        if v is None or math.isnan(v):
            return v
        return math.sqrt(v) if v >= 0 else math.nan


@dataclass(frozen=True, eq=False)
class Clamp(Expr):
    expr: Expr
    low: float
    high: float

    def promql(self, sel: str) -> str:
        return f"clamp({self.expr.promql(sel)}, {_number(self.low)}, {_number(self.high)})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        v = self.expr.value(view, at_s, memo)
        if v is None or math.isnan(v):
            return v
        return min(max(v, self.low), self.high)


@dataclass(frozen=True, eq=False)
class CapBy(Expr):
    """``expr`` at most ``cap`` (itself at least 1), or at most ``default`` while ``cap`` is absent.
    ``cap`` must answer at most one series: PromQL takes it as a scalar."""

    expr: Expr
    cap: Expr
    default: float

    def promql(self, sel: str) -> str:
        cap = f"scalar(clamp_min({self.cap.promql(sel)}, 1) or vector({_number(self.default)}))"
        return f"clamp_max({self.expr.promql(sel)}, {cap})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        v = self.expr.value(view, at_s, memo)
        if v is None:
            return None
        cap = self.cap.value(view, at_s, memo)
        return min(v, self.default if cap is None else max(cap, 1.0))


@dataclass(frozen=True, eq=False)
class And(Expr):
    """``left and on() right`` (``unless`` when ``negate``): left where right is (is not) present."""

    left: Expr
    right: Expr
    negate: bool = False

    def promql(self, sel: str) -> str:
        word = "unless" if self.negate else "and"
        return f"({self.left.promql(sel)}) {word} on() ({self.right.promql(sel)})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        v = self.left.value(view, at_s, memo)
        if v is None:
            return None
        present = self.right.value(view, at_s, memo) is not None
        return v if present != self.negate else None


def _nan_max(values: Sequence[float]) -> float:
    out = values[0]
    for v in values[1:]:
        if v > out or math.isnan(out):
            out = v
    return out


def _nan_min(values: Sequence[float]) -> float:
    out = values[0]
    for v in values[1:]:
        if v < out or math.isnan(out):
            out = v
    return out


@dataclass(frozen=True, eq=False)
class Worst(Expr):
    """The largest of several parts, the absent ones left out (PromQL: ``max`` over ``or``-ed parts,
    each tagged so that ``or`` keeps them all)."""

    parts: tuple[Expr, ...]

    def promql(self, sel: str) -> str:
        tagged = [
            f'label_replace({p.promql(sel)}, "eo_slo", "{i}", "", "")' for i, p in enumerate(self.parts)
        ]
        return f"max({' or '.join(tagged)})"

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        values = [v for v in (p.value(view, at_s, memo) for p in self.parts) if v is not None]
        return _nan_max(values) if values else None


def _phi_quantile(q: float, values: Sequence[float]) -> float:
    """PromQL's ``quantile_over_time``: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = max(0, math.floor(rank))
    high = min(len(ordered) - 1, low + 1)
    weight = rank - math.floor(rank)
    return ordered[low] * (1 - weight) + ordered[high] * weight


def _predict_linear(points: Sequence[tuple[float, float]], at_s: float, ahead_s: float) -> float | None:
    """Least-squares line through ``(time, value)`` points, read ``ahead_s`` after ``at_s``."""
    if len(points) < 2:
        return None
    n = len(points)
    xs = [t - at_s for t, _ in points]
    mean_x = sum(xs) / n
    mean_y = sum(v for _, v in points) / n
    cov = sum((x - mean_x) * (v - mean_y) for x, (_, v) in zip(xs, points, strict=True))
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = cov / var if var > 0 else 0.0
    intercept = mean_y - slope * mean_x
    return intercept + slope * ahead_s


@dataclass(frozen=True, eq=False)
class OverTime(Expr):
    """``<fn>_over_time((expr)[range:step])``: fn in max, min, count, quantile (with ``q``), or
    ``predict_linear`` (``ahead_s``)."""

    fn: str
    expr: Expr
    range_s: float
    step_s: float
    q: float = 0.0
    ahead_s: float = 0.0

    def promql(self, sel: str) -> str:
        inner = f"({self.expr.promql(sel)})[{_seconds(self.range_s)}:{_seconds(self.step_s)}]"
        if self.fn == "quantile":
            return f"quantile_over_time({self.q!r}, {inner})"
        if self.fn == "predict_linear":
            return f"predict_linear({inner}, {_number(self.ahead_s)})"
        return f"{self.fn}_over_time({inner})"

    def instants(self, at_s: float) -> list[float]:
        """The subquery's evaluation times: multiples of the step in the closed ``[at - range, at]``."""
        first = math.ceil((at_s - self.range_s) / self.step_s - 1e-9)
        last = math.floor(at_s / self.step_s + 1e-9)
        return [k * self.step_s for k in range(first, last + 1)]

    def value(self, view: SeriesView, at_s: float, memo: Memo | None = None) -> float | None:
        points: list[tuple[float, float]] = []
        key = id(self.expr)
        for t in self.instants(at_s):
            if memo is not None and (key, t) in memo:
                v = memo[(key, t)]
            else:
                v = self.expr.value(view, t, memo)
                if memo is not None:
                    memo[(key, t)] = v
            if v is not None:
                points.append((t, v))
        if not points:
            return None
        values = [v for _, v in points]
        if self.fn == "max":
            return _nan_max(values)
        if self.fn == "min":
            return _nan_min(values)
        if self.fn == "count":
            return float(len(values))
        if self.fn == "quantile":
            return _phi_quantile(self.q, values)
        if self.fn == "predict_linear":
            return _predict_linear(points, at_s, self.ahead_s)
        raise ValueError(f"unknown over-time function {self.fn!r}")


@dataclass(frozen=True)
class SloSignal:
    """One SLO the trigger holds: its name (``ttft``, ``itl``, ``e2e``), target, the quantile part, how
    close it is to breaking (the error budget used, else the quantile over the SLO: ``ratio``) and the
    observations per second behind them (``rate``; None for custom PromQL, which has none to count)."""

    kind: str
    slo_s: float
    quantile: Expr
    ratio: Expr
    rate: Expr | None = None


def _first_present(alternatives: Sequence[Expr]) -> Expr:
    """The first alternative the workload has series of: ``a or (b or ...)``."""
    out = alternatives[-1]
    for alternative in reversed(alternatives[:-1]):
        out = Or(alternative, out)
    return out


def slo_signal(kind: str, slo_s: float, q: float, histograms: Sequence[str]) -> SloSignal:
    """An SLO held at quantile ``q`` on the first of ``histograms`` (preferred first) the workload
    publishes. A histogram is chosen by its series existing, not by its window holding observations:
    its quantile, budget and rate then all come from it (an empty window is "no reading", never the
    other histogram's answer), and a workload without it reads the next one."""
    if not histograms:
        raise ValueError(f"the {kind} SLO needs at least one histogram")
    quantiles = [Quantile(h, q) for h in histograms]
    ratios = [
        Or(BudgetUsed(h, slo_s, q), BinOp("/", quantile, Const(slo_s)))
        for h, quantile in zip(histograms, quantiles, strict=True)
    ]
    rates = [Rate(f"{h}_count", SHORT_WINDOW_S) for h in histograms]
    return SloSignal(kind, slo_s, _first_present(quantiles), _first_present(ratios), _first_present(rates))


def custom_slo_signal(kind: str, slo_s: float, quantile: Expr) -> SloSignal:
    """An SLO read by custom PromQL: no buckets to read a budget from, so its ratio is the reading
    over the SLO."""
    return SloSignal(kind, slo_s, quantile, BinOp("/", quantile, Const(slo_s)))


def contains_raw(expr: Expr) -> bool:
    """True when ``expr`` holds custom PromQL anywhere (then it is queried on its own)."""
    if isinstance(expr, Raw):
        return True
    children = [
        getattr(expr, f) for f in ("expr", "left", "right") if isinstance(getattr(expr, f, None), Expr)
    ]
    children += list(getattr(expr, "parts", ()))
    return any(contains_raw(c) for c in children)


@dataclass(frozen=True)
class Signals:
    """The signal parts of one trigger (``name -> Expr``) and what they are made of."""

    parts: dict[str, Expr]
    slos: tuple[SloSignal, ...]


def worst_ratio(slos: Sequence[SloSignal]) -> Expr:
    """The largest SLO ratio (budget used, else quantile over SLO); absent while none has a reading."""
    return Worst(tuple(s.ratio for s in slos))


def with_inputs(expr: Expr, inputs: str) -> Expr:
    """``expr`` with every histogram quantile and error budget reading its buckets as ``inputs`` says
    (``CAPACITY_INPUTS``); everything else, custom PromQL included, as it is. The values do not change
    (the recorded series is the raw rate), only the PromQL."""
    if isinstance(expr, Quantile | BudgetUsed):
        return dataclasses.replace(expr, inputs=inputs)
    changes: dict[str, object] = {}
    for f in dataclasses.fields(expr):  # type: ignore[arg-type]
        child = getattr(expr, f.name)
        if isinstance(child, Expr):
            changes[f.name] = with_inputs(child, inputs)
        elif isinstance(child, tuple) and child and all(isinstance(c, Expr) for c in child):
            changes[f.name] = tuple(with_inputs(c, inputs) for c in child)
    return dataclasses.replace(expr, **changes) if changes else expr  # type: ignore[type-var]


def capacity_sample(
    slos: Sequence[SloSignal],
    replicas: Expr,
    max_extrapolation: float = LEARNED_CAPACITY_MAX_EXTRAPOLATION,
    inputs: str = "raw",
    headroom: Expr | None = None,
) -> Expr:
    """One minute's per-replica capacity in tokens/s (prompt + generation): what each replica served while
    every SLO held and no queue had formed, extrapolated along the SLO headroom by
    ``1 / sqrt(worst ratio)``, at most ``max_extrapolation`` (a quiet minute cannot promise much; the
    policy's own consolidation then shows a fuller one).

    The worst ratio appears once: the filter "every SLO held" sits inside the stretch, so a minute that
    breached (or has no reading, or NaN) has no stretch and no sample. Written as ``stretch and on()
    (worst <= 1)`` PromQL would evaluate the worst ratio twice at each of the lookback's minutes, and
    it is most of what this subquery costs Prometheus (bench/prometheus_cost.py).

    ``inputs`` (``CAPACITY_INPUTS``) says where the SLO ratios read their bucket rates at each minute.

    ``headroom`` (the burst headroom the policy plans with, at each minute) caps the stretch further.
    The policy sizes replicas so that each serves capacity / headroom. A minute with no miss there
    would otherwise give back up to 2.5 x capacity / headroom, more than the capacity whenever the
    headroom is under 2.5, and the estimate would ratchet up until the replicas ran at the knee with
    the headroom spent. Capped at the headroom, a quiet minute at the plan confirms the capacity, and
    only minutes above the plan (the bursts) raise it."""
    held_ratio = Filter(with_inputs(worst_ratio(slos), inputs), "<=", 1.0)
    per_replica = BinOp("/", Filter(Rate(TOKENS, SHORT_WINDOW_S), ">", 0.0), replicas)
    stretch: Expr = Clamp(BinOp("/", Const(1.0), Sqrt(held_ratio)), 1.0, max_extrapolation)
    if headroom is not None:
        stretch = CapBy(stretch, headroom, max_extrapolation)
    return And(BinOp("*", per_replica, stretch), Filter(Gauge(WAITING, "sum"), ">", 0.0), negate=True)


def burst_rise(cold_start_s: float) -> Expr:
    """How far the arrival rate rose within one cold start: the 30-s rate over the 1-minute rate a cold
    start earlier (that denominator at least ``TINY_RATE``); NaN dropped."""
    before = Clamp(Rate(REQUESTS, SHORT_WINDOW_S, cold_start_s), TINY_RATE, 1e12)
    return Filter(BinOp("/", Rate(REQUESTS, BURST_WINDOW_S), before), ">=", 0.0)


def build_signals(
    *,
    slos: Sequence[SloSignal],
    replicas: Expr,
    stabilization_window_s: float,
    breach_settle_s: float,
    lookback_s: float,
    idle_window_s: float,
    cold_start_s: float,
    season_s: float | None,
    capacity_extrapolation: float | None,
    capacity_inputs: str = "raw",
    capacity_from_scratch: bool = False,
) -> Signals:
    """Every signal part of a trigger (scaler/queries.py adds the pod-evidence, power and custom parts);
    the learned capacity at ``capacity_extrapolation`` (``capacity_sample``, its histograms read as
    ``capacity_inputs`` says), None: not learned; ``capacity_from_scratch``: no capacity is configured,
    so each minute's stretch is capped at the burst headroom too (``capacity_sample``)."""
    load = Rate(REQUESTS, SHORT_WINDOW_S)
    tokens = Rate(TOKENS, SHORT_WINDOW_S)
    parts: dict[str, Expr] = {
        "load": load,
        "tokens": tokens,
        # Longer evidence for scale-down: the highest 1-minute rates over the stabilisation window.
        "peak": OverTime("max", load, stabilization_window_s, FINE_STEP_S),
        "peak_tokens": OverTime("max", tokens, stabilization_window_s, FINE_STEP_S),
        "recent_requests": BinOp("*", Rate(REQUESTS, idle_window_s), Const(idle_window_s)),
        # Fewest pods serving over the breach-settle window: one breach is answered once (policy).
        "settled_replicas": OverTime("min", replicas, breach_settle_s, FINE_STEP_S),
        # A forming queue: the fewest waiting requests over the last 30 s.
        "waiting": OverTime("min", Gauge(WAITING, "sum"), QUEUE_SUSTAIN_S, FINE_STEP_S),
        "running": Gauge(RUNNING, "sum"),
        "kv_usage": Gauge(KV_USAGE, "max"),
    }
    for s in slos:
        parts[SLO_PART_NAMES[s.kind]] = s.quantile
        parts[f"{SLO_PART_NAMES[s.kind]}_ratio"] = s.ratio
        if s.rate is not None:
            # Observations behind the quantile: a NaN quantile while these flow is broken data.
            parts[f"{SLO_PART_NAMES[s.kind]}_rate"] = s.rate
    rise = burst_rise(cold_start_s)
    # Off until ten minutes of rises exist: a young workload's first rates cover part of their window
    # (Prometheus extrapolates little), so its first "rises" are artefacts of the start.
    minutes = OverTime("count", rise, lookback_s, COARSE_STEP_S)
    parts["rise_minutes"] = minutes  # how much history the headroom has (the policy's "young" test)
    rises = Filter(minutes, ">=", float(HEADROOM_MIN_POINTS))
    parts["burst_rise"] = And(OverTime("quantile", rise, lookback_s, COARSE_STEP_S, q=BURST_QUANTILE), rises)
    # Trend: a line through the last 10 minutes, one cold start ahead; off while history is short.
    trend = OverTime("predict_linear", load, FORECAST_RANGE_S, FINE_STEP_S, ahead_s=cold_start_s)
    enough = Filter(OverTime("count", load, FORECAST_RANGE_S, FINE_STEP_S), ">=", float(FORECAST_MIN_POINTS))
    parts["forecast_trend"] = And(Clamp(trend, 0.0, 1e12), enough)
    if season_s is not None:
        # Seasonal naive with today's level: the rate one season ago, one cold start later, times
        # today's rate over that season-ago rate. Absent (off) until a season of history exists.
        ahead = Rate(REQUESTS, SEASON_RATE_WINDOW_S, season_s - cold_start_s)
        then = Clamp(Rate(REQUESTS, SEASON_RATE_WINDOW_S, season_s), TINY_RATE, 1e12)
        level = BinOp("/", Rate(REQUESTS, SEASON_RATE_WINDOW_S), then)
        parts["forecast_season"] = BinOp("*", ahead, Clamp(level, 0.0, 10.0))
    if capacity_extrapolation is not None:
        # A configured capacity (which the learned one only raises, by at most 1.5x) already says where
        # the knee is; the headroom cap is for a capacity learned from nothing. Measured on a raise, it
        # cost eo-sim's long-context trace 12% more energy for 0.1 points (docs/simulator.md).
        cap = parts["burst_rise"] if capacity_from_scratch else None
        sample = capacity_sample(slos, replicas, capacity_extrapolation, capacity_inputs, cap)
        parts["capacity"] = OverTime("max", sample, lookback_s, COARSE_STEP_S)
    return Signals(parts, tuple(slos))


def evaluate(
    parts: dict[str, Expr], view: SeriesView, at_s: float, memo: Memo | None = None
) -> dict[str, float]:
    """Every part's value at ``at_s`` (absent parts left out, as in Prometheus' answer)."""
    out: dict[str, float] = {}
    for name, expr in parts.items():
        v = expr.value(view, at_s, memo)
        if v is not None:
            out[name] = v
    return out
