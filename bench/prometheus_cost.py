"""What eo-scaler's trigger costs Prometheus: CPU and query latency per refresh of every workload.

Setup: a real Prometheus (the Debian binary, through ``demo.prometheus``) holding an hour of history for
``--workloads`` workloads of ``--pods`` pods each (200 x 8 by default): every series the trigger's
queries read, as the exporter publishes them (docs/architecture.md's contract metrics: request and token
counters; the TTFT, ITL (per token and per request) and end-to-end histograms with vLLM's bucket bounds;
the queue, running and KV gauges, ``eo_pod_metrics_up``, ``eo_gpu_pod_info``, the energy counter and the
pods heartbeat), sampled every 15 s, written as OpenMetrics and loaded with
``promtool tsdb create-blocks-from openmetrics``.

The recording rules the trigger reads (its power and J/request parts, and any rule a signal reads
instead of a subquery) are backfilled from recording_rules/ with ``promtool tsdb create-blocks-from
rules`` at the rules' evaluation interval, dependency level by level (a rule reading another recorded
series needs that one loaded first), against the same Prometheus. Backfilling rather than scraping live
data gives every subquery its full hour, as on a Prometheus that has run for a while; what the rules cost
live is measured apart (each rule's expression as one instant query over every workload, which is the
work of one evaluation) and charged per refresh at ``--eval-interval-seconds``.

Measured: a refresh is what eo-scaler sends for each workload once per cache TTL (its combined query and
its custom parts, ``scaler.kpi_source.queries_for``), every answer turned into an ``Observation`` by
``scaler.queries.to_observation`` (an answer that is not one is counted and makes the run fail). For each
refresh, Prometheus' CPU seconds (utime + stime of its process, /proc) and the latency of each query,
one in flight. Then every part of the combined query alone, on ``--part-workloads`` workloads, to show
which part the cost is made of. Prometheus 2.42's subqueries are the parts with ``[range:step]``.

    python bench/prometheus_cost.py [--workloads 200] [--pods 8] [--refreshes 3] [--what-if-recorded]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from common.quantiles import nearest_rank
from demo.prometheus import Prometheus
from scaler import signals as sig
from scaler.kpi_source import queries_for
from scaler.metadata import TriggerConfig, parse_metadata
from scaler.queries import (
    HEARTBEAT_METRIC,
    KpiUnavailable,
    capacity_expr,
    custom_value,
    parts,
    to_observation,
)

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((ROOT / "recording_rules").glob("*.rules.yaml"))
STEP_S = 15  # the exporter's scrape interval
NAMESPACE = "inference"
# vLLM's bucket bounds (sim/observe.py has the same; the exporter mirrors the server's own).
E2E_BOUNDS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
              120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
TTFT_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
              20.0, 40.0, 80.0)  # fmt: skip


def trigger_metadata(workload: str) -> dict[str, str]:
    """The example ScaledObject's trigger (manifests/examples/scaledobject.yaml), one per workload."""
    return {
        "workload": workload,
        "ttftSloSeconds": "1",
        "ttftQuantile": "0.9",
        "itlSloSeconds": "0.05",
        "itlQuantile": "0.9",
        "latencySloSeconds": "2.5",
        "latencyQuantile": "0.95",
        "coldStartSeconds": "90",
        "maxReplicas": "8",
        "powerBudgetWatts": "4000",
        "targetJoulesPerRequest": "150",
        "idleBeforeZeroSeconds": "600",
        "activationQuery": (
            f'sum(rate(envoy_cluster_upstream_rq_total{{envoy_cluster_name="inference_{workload}"}}[1m]))'
        ),
    }


# --- the history -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One workload's hour: requests/s at every 15-s instant, and how loaded its pods are (0..~1.2)."""

    rate: np.ndarray
    load: np.ndarray


def shape(w: int, n: int, rng: np.random.Generator) -> Shape:
    t = np.arange(n) * STEP_S
    base = 2.0 + 18.0 * rng.random()
    swing = 1 + 0.4 * np.sin(2 * math.pi * t / 1800 + rng.uniform(0, 2 * math.pi))
    rate = base * swing * (1 + 0.1 * rng.standard_normal(n))
    for start in rng.integers(0, n, size=3):  # a few bursts of two minutes
        rate[start : start + 8] *= 1.8
    rate = np.clip(rate, 0.0, None)
    return Shape(rate, rate / (base * 1.3))


def _lognormal_cdf(bounds: tuple[float, ...], median: np.ndarray, sigma: float) -> np.ndarray:
    """Share of observations at most each bound, per instant: shape (instants, bounds + 1), last +Inf."""
    z = (np.log(np.array(bounds))[None, :] - np.log(median)[:, None]) / (sigma * math.sqrt(2))
    cdf = 0.5 * (1 + _erf(z))
    return np.concatenate([cdf, np.ones((len(median), 1))], axis=1)


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, and the shape only needs to be smooth.
    s = np.sign(x)
    a = np.abs(x)
    t = 1 / (1 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1 - poly * np.exp(-a * a))


def _over_knee(load: np.ndarray) -> np.ndarray:
    return np.clip(load - 0.7, 0, None)


class History:
    """The OpenMetrics text of every workload's hour (written family by family, as OpenMetrics needs)."""

    def __init__(self, workloads: int, pods: int, minutes: float, end_s: int, seed: int = 12) -> None:
        self.workloads, self.pods = workloads, pods
        self.n = int(minutes * 60 / STEP_S) + 1
        self.times = [end_s - (self.n - 1 - k) * STEP_S for k in range(self.n)]
        rng = np.random.default_rng(seed)
        self.shapes = [shape(w, self.n, rng) for w in range(workloads)]

    def node(self, w: int, p: int) -> str:
        # Pods of one workload spread over nodes of 8 GPUs, as a scheduler would place them.
        return f"node-{(w * self.pods + p * 37) % max(1, self.workloads * self.pods // 8):04d}"

    def labels(self, w: int, p: int) -> str:
        node = self.node(w, p)
        return (
            f'instance="{node}",job="eo-exporter",namespace="{NAMESPACE}",node="{node}",'
            f'pod="wl{w}-{p}",workload="wl{w}"'
        )

    def _series(self, out: TextIO, name: str, labels: str, values: np.ndarray) -> None:
        text = values.tolist()
        out.write("".join(f"{name}{{{labels}}} {v} {t}\n" for v, t in zip(text, self.times, strict=True)))

    def _counter(self, per_step: np.ndarray) -> np.ndarray:
        """Cumulative integer counts (monotonic) from per-step increments."""
        return np.floor(np.cumsum(per_step, axis=0)).astype(np.int64)

    def per_pod(self, w: int) -> np.ndarray:
        """Requests each pod finished in each 15-s step."""
        return self.shapes[w].rate * STEP_S / self.pods

    def _histogram(
        self, out: TextIO, family: str, bounds: tuple[float, ...], median: Any, sigma: float, per: str
    ) -> None:
        les = [repr(b) for b in bounds] + ["+Inf"]
        for w in range(self.workloads):
            s = self.shapes[w]
            observations = self.per_pod(w) * (120.0 if per == "token" else 1.0)
            cdf = _lognormal_cdf(bounds, median(s.load), sigma)
            cumulative = self._counter(observations[:, None] * cdf)
            for p in range(self.pods):
                lab = self.labels(w, p)
                for i, le in enumerate(les):
                    self._series(out, f"{family}_bucket", f'{lab},le="{le}"', cumulative[:, i] + p)
                self._series(out, f"{family}_count", lab, cumulative[:, -1] + p)

    def write(self, out: TextIO) -> None:
        t_gauge = np.ones(self.n, dtype=np.int64)
        out.write(f"# TYPE {HEARTBEAT_METRIC} gauge\n")
        for node in sorted({self.node(w, p) for w in range(self.workloads) for p in range(self.pods)}):
            self._series(out, HEARTBEAT_METRIC, f'collector="pods",instance="{node}",node="{node}"', t_gauge)
        for family, kind in (("eo_gpu_pod_info", "gauge"), ("eo_pod_metrics_up", "gauge")):
            out.write(f"# TYPE {family} {kind}\n")
            for w in range(self.workloads):
                for p in range(self.pods):
                    extra = (
                        f',uuid="GPU-{w:03d}-{p}",container="server"' if family == "eo_gpu_pod_info" else ""
                    )
                    self._series(out, family, self.labels(w, p) + extra, t_gauge)
        out.write("# TYPE eo_pod_requests counter\n")
        for w in range(self.workloads):
            c = self._counter(self.per_pod(w))
            for p in range(self.pods):
                self._series(out, sig.REQUESTS, self.labels(w, p), c + p)
        out.write("# TYPE eo_pod_tokens counter\n")
        for w in range(self.workloads):
            for kind, per_request in (("prompt", 800.0), ("generation", 120.0)):
                c = self._counter(self.per_pod(w) * per_request)
                for p in range(self.pods):
                    self._series(out, sig.TOKENS, f'{self.labels(w, p)},kind="{kind}"', c)
        out.write("# TYPE eo_pod_energy_joules counter\n")
        for w in range(self.workloads):
            watts = 150 + 450 * np.clip(self.shapes[w].load, 0, 1)
            c = self._counter(watts * STEP_S)
            for p in range(self.pods):
                self._series(out, "eo_pod_energy_joules_total", self.labels(w, p), c)
        # Medians rise past 70 % load (the knee), so the SLO ratios move and some minutes breach.
        for family, bounds, median, sigma, per in (
            (sig.TTFT_HISTOGRAM, TTFT_BOUNDS, lambda u: 0.15 * (1 + 4 * _over_knee(u)), 0.8, "request"),
            (sig.ITL_HISTOGRAM, ITL_BOUNDS, lambda u: 0.02 * (1 + 2 * _over_knee(u)), 0.5, "token"),
            (sig.REQUEST_ITL_HISTOGRAM, ITL_BOUNDS, lambda u: 0.02 * (1 + 2 * _over_knee(u)), 0.3, "request"),
            (sig.E2E_HISTOGRAM, E2E_BOUNDS, lambda u: 1.2 * (1 + 2 * _over_knee(u)), 0.6, "request"),
        ):  # fmt: skip
            out.write(f"# TYPE {family} histogram\n")
            self._histogram(out, family, bounds, median, sigma, per)
        for metric, value in (
            (sig.WAITING, lambda u: np.clip(np.round((u - 0.95) * 40), 0, None)),
            (sig.RUNNING, lambda u: np.round(24 * np.clip(u, 0, 1.2))),
            (sig.KV_USAGE, lambda u: np.round(np.clip(0.8 * u, 0, 1), 3)),
        ):
            out.write(f"# TYPE {metric} gauge\n")
            for w in range(self.workloads):
                v = value(self.shapes[w].load)
                for p in range(self.pods):
                    self._series(out, metric, self.labels(w, p), v)
        out.write("# EOF\n")


# --- Prometheus and promtool -------------------------------------------------------------------------


def promtool(*args: str) -> None:
    subprocess.run(["promtool", *args], check=True, capture_output=True, timeout=1800)


def link_blocks(source: Path, data: Path) -> None:
    """Hard-link every block of ``source`` into ``data`` (Prometheus never rewrites a block in place)."""
    data.mkdir(parents=True, exist_ok=True)
    for block in source.iterdir():
        if block.is_dir():
            shutil.copytree(block, data / block.name, copy_function=os.link)


def start_on(blocks: Path) -> Prometheus:
    prom = Prometheus(scrape_interval_s=60.0)
    link_blocks(blocks, prom.workdir / "data")
    return prom.start(timeout_s=120)


def recorded_names(expr: str) -> set[str]:
    """Recorded series (``level:metric:operations``) an expression reads."""
    return set(re.findall(r"[a-zA-Z_]+:[a-zA-Z0-9_]+:[a-zA-Z0-9_]+", expr))


def rules_by_record() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    out.setdefault(rule["record"], []).append(rule)
    return out


def rule_levels(queries: list[str]) -> list[list[dict[str, Any]]]:
    """The recording rules ``queries`` read and what those read, by level: level 0 reads raw series
    only, level k reads series recorded at lower levels."""
    rules = rules_by_record()
    levels: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in levels:
            reads = {r for rule in rules[name] for r in recorded_names(rule["expr"]) if r in rules}
            levels[name] = 1 + max((level(r) for r in reads), default=-1)
        return levels[name]

    for q in queries:
        for name in recorded_names(q) & set(rules):
            level(name)
    by_level: list[list[dict[str, Any]]] = [[] for _ in range(1 + max(levels.values(), default=-1))]
    for name, k in sorted(levels.items()):
        by_level[k].extend(rules[name])
    return by_level


def backfill_rules(blocks: Path, levels: list[list[dict[str, Any]]], start_s: int, end_s: int,
                   eval_interval_s: int, work: Path) -> None:  # fmt: skip
    for k, level_rules in enumerate(levels):
        rule_file = work / f"rules-level-{k}.yaml"
        rule_file.write_text(yaml.safe_dump({"groups": [{"name": f"bench-level-{k}", "rules": level_rules}]}))
        out = work / f"rule-blocks-{k}"
        with start_on(blocks) as prom:
            assert isinstance(prom, Prometheus)
            promtool("tsdb", "create-blocks-from", "rules", "-q", f"--url={prom.url}", f"--start={start_s}",
                     f"--end={end_s}", f"--eval-interval={eval_interval_s}s", f"--output-dir={out}",
                     str(rule_file))  # fmt: skip
        for block in out.iterdir():
            if block.is_dir():
                block.rename(blocks / block.name)


# --- measuring ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def query(url: str, expr: str, at_s: float) -> tuple[str, Any]:
    body = urllib.parse.urlencode({"query": expr, "time": f"{at_s:.3f}"}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=body, timeout=60) as resp:
        doc = json.load(resp)
    if doc.get("status") != "success":
        raise RuntimeError(f"query failed: {doc}")
    return doc["data"]["resultType"], doc["data"]["result"]


@dataclass
class Kind:
    """Latencies (s) of one kind of query, and Prometheus CPU seconds spent on it."""

    latencies: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    def line(self, name: str, per: int) -> str:
        p50 = statistics.median(self.latencies) * 1e3
        p99 = nearest_rank(self.latencies, 0.99) * 1e3
        return (f"  {name:<28} {len(self.latencies):5d} queries  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                f"Prometheus CPU {self.cpu_s / per * 1e3:8.1f} ms per refresh")  # fmt: skip


def refresh(url: str, pid: int, triggers: list[TriggerConfig], at_s: float, kinds: dict[str, Kind]) -> int:
    """One refresh of every workload, as eo-scaler sends it; returns the answers that were no Observation."""
    failed = 0
    for trigger in triggers:
        combined, custom = queries_for(trigger)
        before, t = cpu_seconds(pid), time.perf_counter()
        _, result = query(url, combined, at_s)
        kinds["combined"].latencies.append(time.perf_counter() - t)
        kinds["combined"].cpu_s += cpu_seconds(pid) - before
        values = {}
        for name, expr in custom:
            before, t = cpu_seconds(pid), time.perf_counter()
            values[name] = custom_value(name, *query(url, expr, at_s))
            kinds[f"custom {name}"].latencies.append(time.perf_counter() - t)
            kinds[f"custom {name}"].cpu_s += cpu_seconds(pid) - before
        try:
            to_observation(trigger, result, values)
        except KpiUnavailable as exc:
            failed += 1
            if failed == 1:
                print(f"  not an Observation ({trigger.workload}): {exc}", file=sys.stderr)
    return failed


def part_costs(url: str, pid: int, triggers: list[TriggerConfig], at_s: float) -> dict[str, Kind]:
    """Each part of the combined query alone, on every trigger given (CPU read around all of a part's
    queries: one query is often shorter than the kernel's 10-ms accounting tick)."""
    out: dict[str, Kind] = {}
    by_trigger = [parts(trigger) for trigger in triggers]
    for name in by_trigger[0]:
        kind = out.setdefault(name, Kind())
        before = cpu_seconds(pid)
        for exprs in by_trigger:
            t = time.perf_counter()
            query(url, exprs[name], at_s)
            kind.latencies.append(time.perf_counter() - t)
        kind.cpu_s = cpu_seconds(pid) - before
    return out


def rule_cost(url: str, pid: int, levels: list[list[dict[str, Any]]], at_s: float, repeats: int) -> float:
    """Prometheus CPU seconds of one evaluation of every rule the trigger reads (all workloads)."""
    before = cpu_seconds(pid)
    for _ in range(repeats):
        for level_rules in levels:
            for rule in level_rules:
                query(url, rule["expr"], at_s)
    return (cpu_seconds(pid) - before) / repeats


# --- what if the learned capacity read recorded bucket rates ------------------------------------------

CAPACITY_INPUT_RULES = "eo-workload-capacity-inputs"  # the group in recording_rules/workload.rules.yaml


def what_if_rules() -> list[dict[str, Any]]:
    """The committed rules that record per-workload 1-minute bucket rates of every SLO histogram."""
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            if group["name"] == CAPACITY_INPUT_RULES:
                return list(group["rules"])
    raise SystemExit(f"no rule group {CAPACITY_INPUT_RULES} in recording_rules/")


def what_if(
    url: str, pid: int, triggers: list[TriggerConfig], at_s: float
) -> tuple[dict[str, Kind], dict[str, float]]:
    """The capacity part read each way of ``signals.CAPACITY_INPUTS`` (CPU and latency), and each
    way's largest relative difference from the raw answer."""
    kinds: dict[str, Kind] = {}
    for inputs in sig.CAPACITY_INPUTS:
        exprs = [capacity_expr(trigger, inputs) for trigger in triggers]
        kind = kinds.setdefault(inputs, Kind())
        before = cpu_seconds(pid)
        for expr in exprs:
            started = time.perf_counter()
            query(url, expr, at_s)
            kind.latencies.append(time.perf_counter() - started)
        kind.cpu_s = cpu_seconds(pid) - before
    worst = dict.fromkeys(sig.CAPACITY_INPUTS, 0.0)
    for trigger in triggers:
        answers = {
            inputs: [float(x["value"][1]) for x in query(url, capacity_expr(trigger, inputs), at_s)[1]]
            for inputs in sig.CAPACITY_INPUTS
        }
        for inputs, b in answers.items():
            a = answers["raw"]
            if len(a) != len(b):
                worst[inputs] = math.inf
                continue
            for x, y in zip(a, b, strict=True):
                worst[inputs] = max(worst[inputs], abs(x - y) / max(abs(x), 1e-12))
    return kinds, worst


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", type=int, default=200)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=60.0, help="history the lookback reads")
    parser.add_argument("--refreshes", type=int, default=3)
    parser.add_argument("--part-workloads", type=int, default=20)
    parser.add_argument("--eval-interval-seconds", type=int, default=15)
    parser.add_argument("--cache-ttl-seconds", type=float, default=10.0)
    parser.add_argument(
        "--what-if-recorded",
        action="store_true",
        help=(
            "also measure the capacity part reading the recorded 1-minute bucket rates, alone and "
            "with the raw fallback (their rules backfilled too)"
        ),
    )
    args = parser.parse_args()
    triggers = [parse_metadata(trigger_metadata(f"wl{w}"), NAMESPACE) for w in range(args.workloads)]
    combined, custom = queries_for(triggers[0])
    levels = rule_levels([combined, *(expr for _, expr in custom)])
    # The lookback's earliest subquery point reads a cold start and a 5-minute window before the hour.
    margin_s = triggers[0].cold_start_s + 300 + STEP_S
    end_s = (int(time.time()) // 60 - 5) * 60
    work = Path(tempfile.mkdtemp(prefix="eo-prometheus-cost-"))
    try:
        t0 = time.perf_counter()
        history = History(args.workloads, args.pods, args.minutes + margin_s / 60, end_s)
        source = work / "history.om"
        with source.open("w") as out:
            history.write(out)
        blocks = work / "blocks"
        promtool("tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(blocks))
        size_gb = source.stat().st_size / 1e9
        source.unlink()
        start_s = history.times[0]
        extra = [what_if_rules()] if args.what_if_recorded else []
        backfill_rules(blocks, levels + extra, start_s, end_s, args.eval_interval_seconds, work)
        setup_s = time.perf_counter() - t0
        with start_on(blocks) as prom:
            assert isinstance(prom, Prometheus) and prom.pid is not None
            pid = prom.pid
            series = int(float(query(prom.url, 'count({__name__=~"eo_.+"})', end_s)[1][0]["value"][1]))
            query(prom.url, combined, end_s)  # the first query maps the blocks in
            kinds: dict[str, Kind] = {"combined": Kind(), **{f"custom {n}": Kind() for n, _ in custom}}
            failed, walls = 0, []
            for r in range(args.refreshes):
                at = end_s - (args.refreshes - 1 - r) * args.cache_ttl_seconds
                t = time.perf_counter()
                failed += refresh(prom.url, pid, triggers, at, kinds)
                walls.append(time.perf_counter() - t)
            per_part = part_costs(prom.url, pid, triggers[: args.part_workloads], end_s)
            rules_cpu_s = rule_cost(prom.url, pid, levels, end_s, repeats=3)
            if args.what_if_recorded:
                capacity_kinds, differences = what_if(prom.url, pid, triggers[: args.part_workloads], end_s)
                what_if_rules_cpu_s = rule_cost(prom.url, pid, extra, end_s, repeats=3)
        n = args.workloads
        print(f"Prometheus cost of eo-scaler's trigger: {n} workloads x {args.pods} pods, "
              f"{args.minutes:.0f} min (+{margin_s:.0f} s) of history at {STEP_S} s, {series:,} series "
              f"({size_gb:.1f} GB of OpenMetrics; setup {setup_s:.0f} s)")  # fmt: skip
        rule_names = sorted({r["record"] for level in levels for r in level})
        print(
            f"  recording rules read (backfilled at {args.eval_interval_seconds} s): {', '.join(rule_names)}"
        )
        print(f"  combined query: {len(combined):,} characters, {len(parts(triggers[0]))} parts; "
              f"{len(custom)} custom queries")  # fmt: skip
        print(f"per refresh (every workload once), {args.refreshes} refreshes, one query in flight:")
        for name, kind in kinds.items():
            print(kind.line(name, args.refreshes))
        queries_cpu = sum(k.cpu_s for k in kinds.values()) / args.refreshes
        rules_per_refresh = rules_cpu_s * args.cache_ttl_seconds / args.eval_interval_seconds
        print(f"  refresh wall time {statistics.median(walls):.1f} s (median); Prometheus CPU "
              f"{queries_cpu:.2f} s per refresh for the queries, + {rules_per_refresh:.3f} s for the rules "
              f"they read ({rules_cpu_s * 1e3:.0f} ms per evaluation every {args.eval_interval_seconds} s, "
              f"charged per {args.cache_ttl_seconds:.0f}-s TTL) = {queries_cpu + rules_per_refresh:.2f} s; "
              f"at one refresh per TTL: {(queries_cpu + rules_per_refresh) / args.cache_ttl_seconds:.2f} "
              "cores")  # fmt: skip
        total = sum(k.cpu_s for k in per_part.values()) or 1.0
        print(f"each part alone on {len(triggers[: args.part_workloads])} workloads "
              "(share of the parts' CPU, p50 latency):")  # fmt: skip
        for name, kind in sorted(per_part.items(), key=lambda item: -item[1].cpu_s):
            subquery = " (subquery)" if re.search(r"\[\d+s:\d+s\]", parts(triggers[0])[name]) else ""
            p50 = statistics.median(kind.latencies) * 1e3
            print(f"  {name:<18} {kind.cpu_s / total:6.1%}  p50 {p50:7.2f} ms{subquery}")
        if args.what_if_recorded:
            k = len(triggers[: args.part_workloads])
            charged = what_if_rules_cpu_s * args.cache_ttl_seconds / args.eval_interval_seconds
            print(f"the capacity part by where it reads its bucket rates, on {k} workloads "
                  f"({len(extra[0])} rules, {what_if_rules_cpu_s * 1e3:.0f} ms per evaluation, "
                  f"{charged:.2f} s per TTL):")  # fmt: skip
            raw_cpu = capacity_kinds["raw"].cpu_s
            for inputs, kind in capacity_kinds.items():
                saved = (raw_cpu - kind.cpu_s) / k * n
                net = saved - (charged if inputs != "raw" else 0.0)
                print(kind.line(inputs, 1).replace(" per refresh", f" on {k} workloads")
                      + f"  differs by {differences[inputs]:.1e}; per refresh of {n}: {saved:+.2f} s "
                      f"saved, {net:+.2f} s net")  # fmt: skip
        if failed:
            print(f"FAILED: {failed} answers were not an Observation", file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
