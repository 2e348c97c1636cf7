"""One definition, two evaluators: the trigger's PromQL on a REAL Prometheus and the simulator's
evaluation of the same declared signals give the same Observation.

One synthetic 45-minute history (a rate that swings and bursts, pods added as it grows, latencies that
break the SLOs in some minutes, a queue, KV use) is written as OpenMetrics, backfilled with
``promtool tsdb create-blocks-from openmetrics`` into a Prometheus data directory, and recorded slot by
slot into the simulator's ``SimPrometheus``. At several instants the scaler's combined query (through
``to_observation``) and ``EoTrigger.observe`` (through ``signals.evaluate`` and
``observation_from_values``) must agree on every field, within float tolerance.

The learned capacity can also read its bucket rates from the recording rules (``signals.CAPACITY_INPUTS``):
those rules are backfilled at 15 s (``promtool tsdb create-blocks-from rules``) into a second Prometheus
holding the same history, where the recorded renderings must give the simulator's value too (the
simulator's recorded series is the raw rate: a rule evaluated on the subquery's minutes has no lag).
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import yaml

from demo.prometheus import Prometheus
from scaler import signals as sig
from scaler.queries import (
    build_query,
    capacity_expr,
    capacity_sample_expr,
    custom_parts,
    observation_from_values,
    to_observation,
)
from sim.eo import EoTrigger, SimSeries
from sim.observe import (
    ITL_BUCKETS_S,
    LATENCY_BUCKETS_S,
    N_ITL_BUCKETS,
    TTFT_BUCKETS_S,
    SimPrometheus,
    bucket_index,
    itl_bucket_index,
    ttft_bucket_index,
)

STEP_S = 15.0  # the scrape interval and the simulator's slot
RULES = Path(__file__).resolve().parents[2] / "recording_rules" / "workload.rules.yaml"
CAPACITY_INPUT_RULES = "eo-workload-capacity-inputs"
SLOTS = 180  # 45 minutes
METADATA = {
    "ttftSloSeconds": "0.25",
    "itlSloSeconds": "0.05",
    "latencySloSeconds": "8",  # not a bucket bound: its ratio is the quantile over the SLO
    "capacityLookbackSeconds": "1200",
    "seasonSeconds": "600",
    "coldStartSeconds": "60",
    "stalenessSeconds": "60",
}
INSTANTS_S = (1500.0, 1800.0, 1950.0, 2100.0, 2400.0, 2550.0, 2700.0)  # 1950, 2550: the swing's peaks
LABELS = 'namespace="sim",workload="llm",instance="n1",node="n1"'


@dataclass
class Slot:
    """What the workload did in one 15-s slot (and its gauges at the slot's end)."""

    pods: int
    e2e: list[int]  # bucket index of each finished request
    ttft: list[int]  # TTFT bucket of each first token
    itl: list[float]  # tokens per ITL bucket
    request_itl: list[int]  # ITL bucket of each finished request's mean
    tokens: float
    waiting: int
    running: int
    kv: float


def history(seed: int = 7) -> list[Slot]:
    rng = random.Random(seed)
    slots = []
    for k in range(1, SLOTS + 1):
        t = k * STEP_S
        rate = 4 + 3 * math.sin(2 * math.pi * t / 600) + (6 if 900 <= t < 990 else 0) + rng.uniform(-0.5, 0.5)
        n = max(0, round(rate * STEP_S))
        pods = 1 + (t > 300) + (t > 900) + (t > 1500)  # only added: a new pod's counters start at 0
        load = rate / pods
        e2e = [bucket_index(rng.uniform(1.0, 2.0) + 0.6 * load) for _ in range(n)]
        ttft = [ttft_bucket_index(rng.uniform(0.05, 0.2) * (1 + load / 3)) for _ in range(n)]
        itl = [0.0] * N_ITL_BUCKETS
        request_itl = []
        for _ in range(n):
            itl[itl_bucket_index(0.012 + 0.006 * load * rng.uniform(0.5, 1.5))] += 80.0 + rng.random()
            # Per request: most near the tokens' latency, one in five of few tokens beside a long
            # prefill, far slower (the token histogram barely sees those).
            slow = rng.random() < 0.2
            request_itl.append(
                itl_bucket_index((0.04 if slow else 0.012) + 0.006 * load * rng.uniform(0.5, 1.5))
            )
        waiting = max(0, round((rate - 5.5) * 2))  # a queue near the swing's peaks
        slots.append(Slot(pods, e2e, ttft, itl, request_itl, n * 512.5, waiting, n, min(1.0, 0.12 * load)))
    return slots


class _WithKv(SimSeries):
    """The simulator's view plus the KV gauge it does not model (the history has one), and each
    request's mean ITL (the per-request histogram) read from ``SimPrometheus``."""

    def __init__(self, prom: SimPrometheus, kv: list[float]) -> None:
        super().__init__(prom)
        self.kv = kv

    def counter_rate(self, metric: str, window_s: float, at_s: float) -> float | None:
        if metric == f"{sig.REQUEST_ITL_HISTOGRAM}_count":
            return self.prom.count_rate("request_itl", window_s, at_s) if at_s > 0 else None
        return super().counter_rate(metric, window_s, at_s)

    def quantile(self, metric: str, q: float, window_s: float, at_s: float) -> float | None:
        if metric == sig.REQUEST_ITL_HISTOGRAM:
            value = self.prom.request_itl_quantile(q, window_s, at_s) if at_s >= 0 else None
            return math.nan if value is None else value
        return super().quantile(metric, q, window_s, at_s)

    def share_within(self, metric: str, bound_s: float, window_s: float, at_s: float) -> float | None:
        if metric == sig.REQUEST_ITL_HISTOGRAM:
            return self.prom.share_within("request_itl", bound_s, window_s, at_s) if at_s > 0 else None
        return super().share_within(metric, bound_s, window_s, at_s)

    def gauge(self, metric: str, aggregation: str, at_s: float) -> float | None:
        if metric == sig.KV_USAGE:
            k = round(at_s / STEP_S)
            return self.kv[k - 1] if 1 <= k <= len(self.kv) else None
        return super().gauge(metric, aggregation, at_s)


def simulator_view(slots: list[Slot]) -> tuple[SimPrometheus, list[float]]:
    prom = SimPrometheus(STEP_S)
    for s in slots:
        prom.record_slot(
            s.e2e, len(s.e2e), s.pods, s.ttft, s.itl, s.tokens, s.waiting, s.running, s.request_itl
        )
    return prom, [s.kv for s in slots]


def _cumulative(per_bucket: list[float], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out, total = [], 0.0
    for bound, count in zip([*bounds, math.inf], per_bucket, strict=True):
        total += count
        out.append(("+Inf" if math.isinf(bound) else repr(bound), total))
    return out


def openmetrics(slots: list[Slot], base_s: int) -> str:
    """Per-pod series as the exporter publishes them: each slot's increments shared by the pods that
    served it (those present before it), gauges split across the pods present at its end."""
    families: dict[str, tuple[str, dict[str, list[str]]]] = {}

    def add(family: str, kind: str, sample: str, labels: str, t: float, value: float) -> None:
        series = families.setdefault(family, (kind, {}))[1].setdefault(f"{sample}{{{labels}}}", [])
        series.append(f"{value!r} {base_s + t:.3f}")

    pods_before = 0
    cum: dict[str, float] = {}
    for k, s in enumerate(slots, start=1):
        t = k * STEP_S
        serving = max(1, pods_before)
        incs: dict[str, float] = {"req": len(s.e2e), "tok_p": s.tokens * 0.8, "tok_g": s.tokens * 0.2}
        for name, per, bounds in (("e2e", s.e2e, LATENCY_BUCKETS_S), ("ttft", s.ttft, TTFT_BUCKETS_S)):
            counts = [0.0] * (len(bounds) + 1)
            for b in per:
                counts[b] += 1
            incs.update({f"{name}:{le}": c for le, c in _cumulative(counts, bounds)})
        incs.update({f"itl:{le}": c for le, c in _cumulative(s.itl, ITL_BUCKETS_S)})
        per_request = [0.0] * (len(ITL_BUCKETS_S) + 1)
        for b in s.request_itl:
            per_request[b] += 1
        incs.update({f"request_itl:{le}": c for le, c in _cumulative(per_request, ITL_BUCKETS_S)})
        add(
            "eo_exporter_collector_up",
            "gauge",
            "eo_exporter_collector_up",
            'collector="pods",instance="n1"',
            t,
            1,
        )
        for p in range(s.pods):
            pod = f'{LABELS},pod="llm-{p}"'
            new = p >= pods_before and pods_before > 0
            for key, inc in incs.items():
                cum[f"{p}:{key}"] = cum.get(f"{p}:{key}", 0.0) + (0.0 if new else inc / serving)
            c = {key.split(":", 1)[1]: v for key, v in cum.items() if key.startswith(f"{p}:")}
            add("eo_pod_requests", "counter", "eo_pod_requests_total", pod, t, c["req"])
            add("eo_pod_tokens", "counter", "eo_pod_tokens_total", f'{pod},kind="prompt"', t, c["tok_p"])
            add("eo_pod_tokens", "counter", "eo_pod_tokens_total", f'{pod},kind="generation"', t, c["tok_g"])
            for name, hist in (
                ("e2e", sig.E2E_HISTOGRAM),
                ("ttft", sig.TTFT_HISTOGRAM),
                ("itl", sig.ITL_HISTOGRAM),
                ("request_itl", sig.REQUEST_ITL_HISTOGRAM),
            ):
                buckets = [(key.split(":", 1)[1], v) for key, v in c.items() if key.startswith(f"{name}:")]
                for le, v in buckets:
                    add(hist, "histogram", f"{hist}_bucket", f'{pod},le="{le}"', t, v)
                add(hist, "histogram", f"{hist}_count", pod, t, buckets[-1][1])
            add("eo_pod_metrics_up", "gauge", "eo_pod_metrics_up", pod, t, 1)
            add("eo_gpu_pod_info", "gauge", "eo_gpu_pod_info", f'{pod},uuid="GPU-{p}"', t, 1)
            add(sig.WAITING, "gauge", sig.WAITING, pod, t, s.waiting / s.pods)
            add(sig.RUNNING, "gauge", sig.RUNNING, pod, t, s.running / s.pods)
            add(sig.KV_USAGE, "gauge", sig.KV_USAGE, pod, t, s.kv)
        pods_before = s.pods
    lines = []
    for family, (kind, series) in families.items():
        lines.append(f"# TYPE {family} {kind}")
        for name, samples in series.items():
            lines.extend(f"{name} {sample}" for sample in samples)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, int, list[Slot]]]:
    promtool = shutil.which("promtool")
    if promtool is None or shutil.which("prometheus") is None:
        pytest.skip("promtool / prometheus not installed")
    slots = history()
    base = (int(time.time()) // 3600 - 3) * 3600  # aligned: subquery steps are absolute multiples
    work = tmp_path_factory.mktemp("parity")
    source = work / "history.om"
    source.write_text(openmetrics(slots, base))
    prom = Prometheus(scrape_interval_s=60.0)
    data = prom.workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(data)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    prom.start()
    try:
        yield prom, base, slots
    finally:
        prom.stop()


def _same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    assert isinstance(a, int | float) and isinstance(b, int | float)
    return a == pytest.approx(b, rel=1e-6, abs=1e-9)


def test_prometheus_and_the_simulator_give_the_same_observation(
    backfilled: tuple[Prometheus, int, list[Slot]],
) -> None:
    prom, base, slots = backfilled
    trigger = EoTrigger(METADATA, supply_demand=False)
    assert custom_parts(trigger.trigger) == {}
    query = build_query(trigger.trigger)
    sim_prom, kv = simulator_view(slots)
    seen: dict[str, set[bool]] = {}
    for at in INSTANTS_S:
        live = to_observation(trigger.trigger, prom.query(query, at=base + at))
        simulated = observation_from_values(
            trigger.trigger, trigger.values(sim_prom, at, _WithKv(sim_prom, kv))
        )
        for f in fields(live):
            a, b = getattr(live, f.name), getattr(simulated, f.name)
            assert _same(a, b), f"at {at:.0f} s, {f.name}: Prometheus {a!r}, simulator {b!r}"
            seen.setdefault(f.name, set()).add(a is not None and a != 0)
        # The ITL SLO is read from each request's mean, not from the tokens (whose quantile differs).
        assert live.itl_s == pytest.approx(sim_prom.request_itl_quantile(0.9, sig.SHORT_WINDOW_S, at))
        assert live.itl_s != pytest.approx(sim_prom.itl_quantile(0.9, sig.SHORT_WINDOW_S, at))
    # The history exercises every signal: each is present at some instant (and the learned capacity,
    # the queue and both forecasts among them).
    for name in ("ttft_s", "itl_s", "latency_s", "ttft_ratio", "itl_ratio", "latency_ratio", "learned_capacity_tps", "waiting_requests", "kv_usage_ratio",
                 "burst_rise", "forecast_rps", "settled_replicas", "peak_load_tps"):  # fmt: skip
        assert True in seen[name], f"{name} never had a value: the history does not exercise it"


@pytest.fixture(scope="module")
def with_capacity_rules(
    backfilled: tuple[Prometheus, int, list[Slot]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A second Prometheus holding the same history plus the capacity-input rules, backfilled at 15 s
    from the first one (blocks are immutable, so the first one's are copied while it runs)."""
    prom, base, _ = backfilled
    groups = yaml.safe_load(RULES.read_text())["groups"]
    group = next(g for g in groups if g["name"] == CAPACITY_INPUT_RULES)
    work = tmp_path_factory.mktemp("parity-rules")
    rule_file = work / "capacity-inputs.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [group]}))
    out = work / "rule-blocks"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "rules", "-q", f"--url={prom.url}",
                    f"--start={base}", f"--end={base + int(SLOTS * STEP_S) + 60}",
                    f"--eval-interval={int(STEP_S)}s", f"--output-dir={out}", str(rule_file)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    second = Prometheus(scrape_interval_s=60.0)
    data = second.workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    for source in (prom.workdir / "data", out):
        for block in source.iterdir():
            if (block / "meta.json").exists():
                shutil.copytree(block, data / block.name)
    second.start()
    try:
        yield second
    finally:
        second.stop()


def _one(answer: list[dict[str, object]]) -> float | None:
    assert len(answer) <= 1
    if not answer:
        return None
    value = answer[0]["value"]
    assert isinstance(value, list)
    return float(value[1])


def test_the_capacity_reads_the_same_from_recorded_bucket_rates(
    backfilled: tuple[Prometheus, int, list[Slot]], with_capacity_rules: Prometheus
) -> None:
    prom, base, slots = backfilled
    trigger = EoTrigger(METADATA, supply_demand=False).trigger
    sim_prom, kv = simulator_view(slots)
    view = _WithKv(sim_prom, kv)
    recorded = sig.recorded_bucket_rate(sig.TTFT_HISTOGRAM)
    learned = sampled = 0
    for at in INSTANTS_S:
        simulated = EoTrigger(METADATA, supply_demand=False).values(sim_prom, at, view).get("capacity")
        # Without the rules: the recorded-only part has nothing to read (capacity unknown), and the
        # fallback reads the raw rates, exactly as the simulator does.
        assert prom.query(capacity_expr(trigger, "recorded"), at=base + at) == []
        fallback = _one(prom.query(capacity_expr(trigger, "recorded_or_raw"), at=base + at))
        assert _same(fallback, simulated), f"at {at:.0f} s: fallback {fallback!r}, simulator {simulated!r}"
        # With them, every minute the simulator learns from has a recorded sample too.
        for inputs in ("recorded", "recorded_or_raw"):
            live = _one(with_capacity_rules.query(capacity_expr(trigger, inputs), at=base + at))
            assert (live is None) == (simulated is None), f"at {at:.0f} s, {inputs}: {live!r}"
        learned += simulated is not None
        # At the rules' own evaluation instants (a group's evaluations sit at a fixed offset inside its
        # interval, so a minute reads a sample up to one interval old: the recorded part's only
        # difference), the recorded inputs give the raw sample exactly.
        stamp = with_capacity_rules.query(f"max(timestamp({recorded}))", at=base + at)
        evaluated = float(stamp[0]["value"][1])
        assert base + at - STEP_S < evaluated <= base + at
        for minutes_ago in range(5):
            t = evaluated - 60.0 * minutes_ago
            raw = _one(with_capacity_rules.query(capacity_sample_expr(trigger), at=t))
            for inputs in ("recorded", "recorded_or_raw"):
                live = _one(with_capacity_rules.query(capacity_sample_expr(trigger, inputs), at=t))
                assert _same(live, raw), f"at {t - base:.3f} s, {inputs}: {live!r}, raw {raw!r}"
            sampled += raw is not None
    assert learned >= 3, "the history does not exercise the learned capacity"
    assert sampled >= 10, "few minutes held every SLO at the rules' evaluation instants"
