"""Per-policy figures from a run, the stdout table and the JSON document."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from common.quantiles import nearest_rank
from sim.engine import RunResult

ATTRIBUTION = (
    'Traces: "Splitwise: Efficient generative LLM inference using phase splitting" '
    "(Patel et al., ISCA 2024), Azure/AzurePublicDataset, CC-BY 4.0."
)





@dataclass(frozen=True)
class Summary:
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
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    slo_s: float
    slo_attainment: float
    replica_minutes: float
    cold_starts: int
    mean_power_w: float
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def summarize(result: RunResult, slo_s: float) -> Summary:
    """Figures of one run. Unfinished requests (the run's tail limit) count as missing the SLO."""
    lat, ttft = [], []
    for a, f, e in zip(result.arrival_s, result.first_token_s, result.end_s, strict=True):
        if not math.isnan(e):
            lat.append(e - a)
        if not math.isnan(f):
            ttft.append(f - a)
    n = len(result.arrival_s)
    ok = sum(1 for x in lat if x <= slo_s)
    energy = result.energy_j
    return Summary(
        policy=result.policy,
        trace=result.trace,
        requests=n,
        unfinished=n - len(lat),
        energy_kwh=energy / 3.6e6,
        joules_per_request=energy / n if n else math.nan,
        joules_per_output_token=energy / result.output_tokens if result.output_tokens else math.nan,
        idle_energy_share=result.idle_energy_j / energy if energy > 0 else math.nan,
        ttft_p50_s=nearest_rank(ttft, 0.50),
        ttft_p95_s=nearest_rank(ttft, 0.95),
        ttft_p99_s=nearest_rank(ttft, 0.99),
        latency_p50_s=nearest_rank(lat, 0.50),
        latency_p95_s=nearest_rank(lat, 0.95),
        latency_p99_s=nearest_rank(lat, 0.99),
        slo_s=slo_s,
        slo_attainment=ok / n if n else math.nan,
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
    ("ttft_p95_s", "p95", "{:.2f}"),
    ("ttft_p99_s", "p99", "{:.2f}"),
    ("latency_p50_s", "E2E p50", "{:.2f}"),
    ("latency_p95_s", "p95", "{:.2f}"),
    ("latency_p99_s", "p99", "{:.2f}"),
    ("slo_attainment", "in SLO", "{:.2%}"),
    ("replica_minutes", "replica-min", "{:.1f}"),
    ("cold_starts", "starts", "{}"),
)


def table(summaries: Sequence[Summary]) -> str:
    """A plain-text table, one row per policy (latencies in seconds)."""
    rows = [[h for _, h, _ in COLUMNS]]
    for s in summaries:
        rows.append([fmt.format(getattr(s, key)) for key, _, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
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
