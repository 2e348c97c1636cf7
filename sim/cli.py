"""eo-sim: replay a request trace through Energy Orchestrator's own policy code and the baselines."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpumodel.model import PROFILES
from sim.engine import Policy, RunResult, SimConfig
from sim.eo import CapOptions, caps_only_policy, eo_policy
from sim.keda import HpaConfig
from sim.policies import StaticSchedule, ThresholdTrigger
from sim.report import ATTRIBUTION, document, summarize, table
from sim.scenario import (
    DEFAULT_POLICIES,
    DESCRIPTIONS,
    POLICY_NAMES,
    Scenario,
    default_slo_s,
    load_test_capacity,
    peak_replicas,
    static_replicas,
    tuned_optimum,
    tuned_threshold,
    user_threshold,
)
from sim.server import ServerConfig
from sim.trace import TraceError, compress, load_trace, overlay

log = logging.getLogger(__name__)
DEFAULT_TRACE_NAME = "azure_llm_2023_conv.csv"


def default_trace() -> Path | None:
    """The conversation trace from the project's shared data, when this checkout has it nearby."""
    here = Path(__file__).resolve().parent.parent
    for base in (here.parent / "shared", here.parent.parent / "shared", Path.cwd().parent / "shared"):
        candidate = base / "data" / "traces" / DEFAULT_TRACE_NAME
        if candidate.is_file():
            return candidate
    return None


def _env(flag: str) -> str:
    return "EO_" + flag.lstrip("-").upper().replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eo-sim",
        description=(
            "Replay an LLM request trace against a calibrated GPU inference-server model and compare "
            "replica/power policies: static provisioning for the peak, KEDA's request-rate threshold, "
            "the offline optimum, and Energy Orchestrator's own scaler policy (decide()) and power-cap "
            "controller (step()). Prints a table of energy, latency and SLO attainment per policy."
        ),
        epilog=(
            "Every flag can also be set with an environment variable: --some-flag is EO_SOME_FLAG (the flag "
            "wins). Trace formats: Azure 'TIMESTAMP,ContextTokens,GeneratedTokens' or generic "
            "'arrival_s,prompt_tokens,output_tokens' (header optional). " + ATTRIBUTION
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def add(flag: str, help_text: str, **kw: Any) -> None:
        env = _env(flag)
        if env in os.environ:
            kw["default"] = os.environ[env]
        p.add_argument(flag, help=f"{help_text} [env {env}]", **kw)

    add("--trace", "request trace CSV (default: the Azure conversation trace in ../shared when present)",
        type=Path, default=default_trace())  # fmt: skip
    add("--speedup", "compress time by this factor (8: an hour replays in 7.5 min at 8x the rate)",
        type=float, default=1.0)  # fmt: skip
    add("--overlay", "superpose N copies of the trace, shifted by span/N and wrapped", type=int, default=1)
    add("--profile", f"GPU server profile: {', '.join(PROFILES)}", default="llama-3.1-8b-h100")
    add("--slo-seconds", "end-to-end latency SLO (default: 2x the trace's unloaded p99, rounded up to a "
        "vLLM histogram bucket)", type=float, default=None)  # fmt: skip
    add(
        "--latency-quantile",
        "quantile the scaler and the sidecar hold under the SLO",
        type=float,
        default=0.99,
    )
    add("--policies", f"comma-separated policies to compare: {', '.join(POLICY_NAMES)}",
        default=",".join(DEFAULT_POLICIES))  # fmt: skip
    add("--capacity-rps", "per-replica capacity at the SLO (default: a simulated load test)", type=float,
        default=None)  # fmt: skip
    add("--static-replicas", "replicas of the static baseline (default: the peak minute's rate over 70%% "
        "of the capacity, rounded up)", type=int, default=None)  # fmt: skip
    add("--threshold-rps", "request-rate threshold per replica of the KEDA baseline (default: 70%% of the "
        "capacity)", type=float, default=None)  # fmt: skip
    add("--target-attainment", "share of requests within the SLO the baselines are tuned to hold",
        type=float, default=0.99)  # fmt: skip
    add("--cap-actuator", "what the power-cap sidecar moves: power or clocks", choices=("power", "clocks"),
        default="clocks")  # fmt: skip
    add("--cap-target-ratio", "sidecar latency target as a share of the SLO when the scaler also runs",
        type=float, default=1.0)  # fmt: skip
    add("--max-batch", "vLLM max_num_seqs per replica", type=int, default=256)
    add("--cold-start-seconds", "replica cold start (default: the profile's)", type=float, default=None)
    add("--step-seconds", "control step of the simulation (must divide 5 s)", type=float, default=0.25)
    add("--json", "write the figures and time series as JSON here", type=Path, default=None)
    add("--plot", "write a PNG of load, replicas, power and latency per policy here", type=Path, default=None)
    p.add_argument(
        "--progress",
        action="store_true",
        default=os.environ.get("EO_PROGRESS", "") in ("1", "true"),
        help="show a progress bar on stderr even when it is not a terminal [env EO_PROGRESS]",
    )
    add("--log-level", "logging level", default="WARNING")
    return p


class Progress:
    """A one-line bar on stderr: ``[#####-----]  50% policy``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = max(total, 1)
        self.done = 0
        self._shown = -1

    def callback(self, label: str) -> Callable[[float], None]:
        def update(fraction: float) -> None:
            if not self.enabled:
                return
            overall = (self.done + fraction) / self.total
            if int(overall * 100) == self._shown:
                return
            self._shown = int(overall * 100)
            bar = "#" * int(overall * 30)
            sys.stderr.write(f"\r[{bar:<30}] {overall:4.0%} {label:<14}")
            sys.stderr.flush()

        return update

    def finish_one(self) -> None:
        self.done += 1
        if self.enabled and self.done >= self.total:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


def _parse_policies(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown or not names:
        raise ValueError(f"--policies: unknown {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(POLICY_NAMES)}")  # fmt: skip
    return names


def run_policies(
    sc: Scenario, names: Sequence[str], args: argparse.Namespace, progress: Progress
) -> list[RunResult]:
    results: list[RunResult] = []
    static_n: int | None = args.static_replicas
    first = sc.first_minute_replicas()
    for name in names:
        cb = progress.callback(name)
        if name == "static":
            static_n = static_n if static_n is not None else peak_replicas(sc)
            r = sc.run(Policy("static", schedule=StaticSchedule(static_n)), cb)
        elif name == "static-min":
            r = static_replicas(sc)[1]
        elif name == "threshold-tuned":
            r = tuned_threshold(sc)
        elif name == "threshold":
            if args.threshold_rps is None:
                r = user_threshold(sc)
            else:
                policy = Policy("threshold", trigger=ThresholdTrigger(args.threshold_rps),
                                hpa=HpaConfig(min_replicas=1), initial_replicas=first)  # fmt: skip
                r = sc.run(policy, cb)
        elif name == "optimum":
            r = tuned_optimum(sc)
        else:
            r = sc.run(_eo_policy(name, sc, args, static_n), cb)
        results.append(r)
        progress.finish_one()
    return results


def _eo_policy(name: str, sc: Scenario, args: argparse.Namespace, static_n: int | None) -> Policy:
    q = args.latency_quantile
    profile = sc.server.profile
    if name == "caps-only":
        n = static_n if static_n is not None else peak_replicas(sc)
        return caps_only_policy(n, CapOptions(sc.slo_s, args.cap_actuator, q), profile)
    caps = CapOptions(sc.slo_s * sc.cap_target_ratio, sc.cap_actuator, q) if name == "eo" else None
    return eo_policy(name, sc.slo_s, q, sc.capacity_rps, profile, sc.first_minute_replicas(), caps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=str(args.log_level).upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return _main(args)
    except (TraceError, ValueError) as exc:
        print(f"eo-sim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"eo-sim: error: {exc}", file=sys.stderr)
        return 1


def _number(args: argparse.Namespace, name: str, kind: type) -> None:
    value = getattr(args, name)
    if value is None or isinstance(value, kind):
        return
    try:
        setattr(args, name, kind(value))
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')}: {value!r} is not a {kind.__name__}") from None


def _main(args: argparse.Namespace) -> int:
    # Values from environment variables arrive as strings.
    for name in ("speedup", "slo_seconds", "latency_quantile", "capacity_rps", "threshold_rps",
                 "target_attainment", "cap_target_ratio", "cold_start_seconds", "step_seconds"):  # fmt: skip
        _number(args, name, float)
    for name in ("overlay", "static_replicas", "max_batch"):
        _number(args, name, int)
    if args.trace is None:
        raise ValueError(f"no --trace given and {DEFAULT_TRACE_NAME} was not found in ../shared/data/traces")
    if args.profile not in PROFILES:
        raise ValueError(f"--profile: {args.profile!r} is not one of {', '.join(PROFILES)}")
    if not 0 < args.latency_quantile < 1:
        raise ValueError("--latency-quantile must be in (0, 1)")
    names = _parse_policies(args.policies)
    trace = load_trace(Path(args.trace))
    trace = overlay(compress(trace, args.speedup), args.overlay)
    server = ServerConfig(
        PROFILES[args.profile], max_batch=args.max_batch, cold_start_s=args.cold_start_seconds
    )
    slo = args.slo_seconds if args.slo_seconds is not None else default_slo_s(trace, server)
    if slo <= 0:
        raise ValueError("--slo-seconds must be > 0")
    capacity = args.capacity_rps
    if capacity is None:
        capacity = load_test_capacity(trace, server, slo, args.latency_quantile)
    sc = Scenario(trace, server, slo, capacity, quantile=args.latency_quantile,
                  target_attainment=args.target_attainment, sim=SimConfig(step_s=args.step_seconds),
                  cap_target_ratio=args.cap_target_ratio, cap_actuator=args.cap_actuator)  # fmt: skip
    show = args.progress or sys.stderr.isatty()
    progress = Progress(show, len(names))
    results = run_policies(sc, names, args, progress)
    summaries = [summarize(r, slo) for r in results]
    print(f"trace {trace.name}: {len(trace.requests)} requests over {trace.span_s / 60:.1f} min; "
          f"profile {server.profile.name}; SLO p{args.latency_quantile * 100:g} end-to-end <= {slo:g} s; "
          f"replica capacity at the SLO {capacity:.2f} req/s")  # fmt: skip
    print(table(summaries))
    print(ATTRIBUTION)
    meta = {
        "trace": trace.name,
        "requests": len(trace.requests),
        "profile": server.profile.name,
        "slo_s": slo,
        "latency_quantile": args.latency_quantile,
        "capacity_rps": capacity,
        "descriptions": {n: DESCRIPTIONS[n] for n in names},
    }
    if args.json is not None:
        args.json.write_text(json.dumps(document(summaries, results, meta), indent=1))
    if args.plot is not None:
        from sim.plot import plot  # noqa: PLC0415 (matplotlib loads only when a plot is asked for)

        plot(results, summaries, slo, f"eo-sim: {trace.name}, {server.profile.name}", args.plot)
    return 0
