"""Per-policy figures from a run, the stdout table and the JSON document."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from common.quantiles import nearest_rank
from sim.engine import RunResult
from sim.slo import Slos, attainment

ATTRIBUTION = (
    'Traces: "Splitwise: Efficient generative LLM inference using phase splitting" '
    "(Patel et al., ISCA 2024), Azure/AzurePublicDataset, CC-BY 4.0."
)


@dataclass(frozen=True)
class Summary:
    """One run's figures. Latency quantiles are over the requests that have the value (nearest rank);
    ITL is each request's mean time per output token after the first. An SLO that was not given has
    None for its target and its attainment; ``slo_attainment`` is the share within all given ones."""

    policy: str
    trace: str
    requests: int
    unfinished: int
    energy_kwh: float
    joules_per_request: float
    joules_per_output_token: float
    idle_energy_share: float
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p95_s: float
    itl_p99_s: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    ttft_slo_s: float | None
    itl_slo_s: float | None
    e2e_slo_s: float | None
    ttft_attainment: float | None
    itl_attainment: float | None
    e2e_attainment: float | None
    slo_attainment: float
    replica_minutes: float
    cold_starts: int
    mean_power_w: float
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def summarize(result: RunResult, slos: Slos | float) -> Summary:
    """Figures of one run (a bare number is an end-to-end SLO). Unfinished requests (the run's tail
    limit) count as missing every SLO."""
    targets = slos if isinstance(slos, Slos) else Slos(e2e_s=float(slos))
    lat = result.latencies()
    ttft, itl, e2e = _finite(lat.ttft_s), _finite(lat.itl_s), _finite(lat.e2e_s)
    got = attainment(lat, targets)
    n = len(result.arrival_s)
    energy = result.energy_j
    return Summary(
        policy=result.policy,
        trace=result.trace,
        requests=n,
        unfinished=n - len(e2e),
        energy_kwh=energy / 3.6e6,
        joules_per_request=energy / n if n else math.nan,
        joules_per_output_token=energy / result.output_tokens if result.output_tokens else math.nan,
        idle_energy_share=result.idle_energy_j / energy if energy > 0 else math.nan,
        ttft_p50_s=nearest_rank(ttft, 0.50),
        ttft_p95_s=nearest_rank(ttft, 0.95),
        ttft_p99_s=nearest_rank(ttft, 0.99),
        itl_p50_s=nearest_rank(itl, 0.50),
        itl_p95_s=nearest_rank(itl, 0.95),
        itl_p99_s=nearest_rank(itl, 0.99),
        latency_p50_s=nearest_rank(e2e, 0.50),
        latency_p95_s=nearest_rank(e2e, 0.95),
        latency_p99_s=nearest_rank(e2e, 0.99),
        ttft_slo_s=targets.ttft_s,
        itl_slo_s=targets.itl_s,
        e2e_slo_s=targets.e2e_s,
        ttft_attainment=got.ttft,
        itl_attainment=got.itl,
        e2e_attainment=got.e2e,
        slo_attainment=got.all if n else math.nan,
        replica_minutes=result.replica_seconds / 60.0,
        cold_starts=result.cold_starts,
        mean_power_w=energy / result.duration_s if result.duration_s > 0 else math.nan,
        duration_s=result.duration_s,
    )


COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("policy", "policy", "{}"),
    ("energy_kwh", "kWh", "{:.3f}"),
    ("joules_per_request", "J/req", "{:.1f}"),
    ("joules_per_output_token", "J/tok", "{:.3f}"),
    ("idle_energy_share", "idle", "{:.0%}"),
    ("ttft_p50_s", "TTFT p50", "{:.2f}"),
    ("ttft_p99_s", "p99", "{:.2f}"),
    ("itl_p50_s", "ITL p50 ms", "{:.1f}"),
    ("itl_p99_s", "p99", "{:.1f}"),
    ("latency_p50_s", "E2E p50", "{:.2f}"),
    ("latency_p99_s", "p99", "{:.2f}"),
    ("ttft_attainment", "in TTFT", "{:.2%}"),
    ("itl_attainment", "in ITL", "{:.2%}"),
    ("e2e_attainment", "in E2E", "{:.2%}"),
    ("slo_attainment", "in all SLOs", "{:.2%}"),
    ("replica_minutes", "replica-min", "{:.1f}"),
    ("cold_starts", "starts", "{}"),
)
_MILLISECONDS = {"itl_p50_s", "itl_p99_s"}


def _cell(summary: Summary, key: str, fmt: str) -> str:
    value = getattr(summary, key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value * 1000 if key in _MILLISECONDS else value)


def table(summaries: Sequence[Summary]) -> str:
    """A plain-text table, one row per policy (latencies in seconds, ITL in milliseconds); the
    attainment of an SLO appears only when some run has it."""
    shown = {key for key, _, _ in COLUMNS if any(getattr(s, key) is not None for s in summaries)}
    columns = [c for c in COLUMNS if not c[0].endswith("_attainment") or c[0] in shown]
    rows = [[h for _, h, _ in columns]]
    for s in summaries:
        rows.append([_cell(s, key, fmt) for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def document(
    summaries: Sequence[Summary], results: Sequence[RunResult], meta: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document: scenario, per-policy summary, decision reasons and time series."""
    policies = []
    for s, r in zip(summaries, results, strict=True):
        reasons = Counter(reason for _, _, _, reason, _ in r.decisions)
        series = {k: [None if isinstance(v, float) and not math.isfinite(v) else v for v in vs]
                  for k, vs in r.series.items()}  # fmt: skip
        policies.append({**s.as_dict(), "decision_reasons": dict(reasons), "series": series})
    return {"attribution": ATTRIBUTION, **meta, "policies": policies}
