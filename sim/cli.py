"""eo-sim: replay a request trace through Energy Orchestrator's own policy code and the baselines."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator

from common.logs import configure_logging
from common.settings import BinarySettings, Flag, OptionalPath, Seconds, SettingsError, load, setting
from common.settings import build_parser as settings_parser
from gpumodel.model import PROFILES
from sim.engine import Policy, RunResult, SimConfig
from sim.keda import HpaConfig
from sim.plot import plot, pyplot
from sim.policies import StaticSchedule, ThresholdTrigger
from sim.report import ATTRIBUTION, document, summarize, table
from sim.scenario import (
    DEFAULT_POLICIES,
    DESCRIPTIONS,
    POLICY_NAMES,
    Scenario,
    default_slo_s,
    default_slos,
    joint_optimum,
    load_test_capacity,
    peak_replicas,
    static_replicas,
    tuned_optimum,
    tuned_threshold,
    user_threshold,
)
from sim.server import ServerConfig
from sim.slo import Slos
from sim.synth import PREFIX as SYNTH_PREFIX
from sim.synth import SYNTHETIC, synthetic_trace
from sim.trace import Trace, TraceError, compress, load_trace, overlay

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


_DESCRIPTION = (
    "Replay an LLM request trace against a calibrated GPU inference-server model and compare "
    "replica/power policies: static provisioning for the peak, KEDA's request-rate threshold, "
    "the offline optimum (replicas and SM clocks), and Energy Orchestrator's own scaler policy "
    "(decide()) and power-cap controller (step()). Prints a table of energy, latency (TTFT, "
    "inter-token, end-to-end) and SLO attainment per policy."
)
_EPILOG = (
    "Every flag can also be set with an environment variable: --some-flag is EO_SOME_FLAG (the flag "
    "wins). Trace formats: Azure 'TIMESTAMP,ContextTokens,GeneratedTokens' or generic "
    "'arrival_s,prompt_tokens,output_tokens' (header optional); or a synthetic trace: "
    + ", ".join(SYNTH_PREFIX + n for n in SYNTHETIC)
    + " (with --seed). SLOs: with none of --ttft-slo-seconds, --itl-slo-seconds, --slo-seconds given, "
    "a TTFT and ITL pair derived from the trace; with any given, exactly those. " + ATTRIBUTION
)


def _known_profile(name: str) -> str:
    if name not in PROFILES:
        raise ValueError(f"{name!r} is not one of {', '.join(PROFILES)}")
    return name


def _policy_list(text: str) -> str:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICY_NAMES]
    if unknown or not names:
        raise ValueError(
            f"unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(POLICY_NAMES)}"
        )
    return ",".join(names)


class SimSettings(BinarySettings):
    """eo-sim's flags (each also ``EO_<FLAG>``)."""

    trace: OptionalPath = setting(
        None,
        "request trace CSV, or synth:NAME for a generated one (default: the Azure conversation trace in "
        "../shared when present)",
    )
    seed: int = setting(1, "seed of a synthetic (synth:NAME) trace", ge=0)
    speedup: float = setting(
        1.0, "compress time by this factor (8: an hour replays in 7.5 min at 8x the rate)", gt=0
    )
    overlay: int = setting(1, "superpose N copies of the trace, shifted by span/N and wrapped", ge=1)
    profile: Annotated[str, AfterValidator(_known_profile)] = setting(
        "llama-3.1-8b-h100", f"GPU server profile: {', '.join(PROFILES)}"
    )
    ttft_slo_seconds: Seconds | None = setting(
        None,
        "time-to-first-token SLO (default, when no SLO is given: 2x the trace's unloaded p99, rounded up "
        "to a vLLM TTFT histogram bucket)",
    )
    itl_slo_seconds: Seconds | None = setting(
        None,
        "inter-token latency SLO, each request's mean per output token after the first (default, when no "
        "SLO is given: 2x the unloaded p99, rounded up to a vLLM ITL histogram bucket)",
    )
    slo_seconds: Seconds | None = setting(
        None, "end-to-end latency SLO (optional; Energy Orchestrator's policies hold it when given)"
    )
    latency_quantile: float = setting(
        0.99, "quantile of requests held within the SLOs (baselines' load test, scaler, sidecar)", gt=0, lt=1
    )
    policies: Annotated[str, AfterValidator(_policy_list)] = setting(
        ",".join(DEFAULT_POLICIES), f"comma-separated policies to compare: {', '.join(POLICY_NAMES)}"
    )
    capacity_rps: float | None = setting(
        None, "per-replica capacity at the SLO (default: a simulated load test)", gt=0
    )
    static_replicas: int | None = setting(
        None,
        "replicas of the static baseline (default: the peak minute's rate over 70% of the capacity, "
        "rounded up)",
        ge=1,
    )
    threshold_rps: float | None = setting(
        None, "request-rate threshold per replica of the KEDA baseline (default: 70% of the capacity)", gt=0
    )
    target_attainment: float = setting(
        0.99, "share of requests within all SLOs the searched baselines are tuned to hold", gt=0, le=1
    )
    cap_actuator: Literal["power", "clocks"] = setting(
        "clocks", "what the power-cap sidecar moves: power or clocks"
    )
    cap_target_ratio: float = setting(
        1.0, "sidecar latency target as a share of the SLO when the scaler also runs", gt=0
    )
    max_batch: int = setting(256, "vLLM max_num_seqs per replica", ge=1)
    cold_start_seconds: Seconds | None = setting(None, "replica cold start (default: the profile's)")
    step_seconds: Seconds = setting(0.25, "control step of the simulation (must divide 5 s)")
    json_path: OptionalPath = setting(None, "write the figures and time series as JSON here", flag="--json")
    plot: OptionalPath = setting(None, "write a PNG of load, replicas, power and latency per policy here")
    progress: Flag = setting(False, "show a progress bar on stderr even when it is not a terminal")
    log_level: str = setting("WARNING", "logging level")


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(SimSettings, "eo-sim", _DESCRIPTION, _EPILOG)


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


def run_policies(
    sc: Scenario, names: Sequence[str], args: SimSettings, progress: Progress
) -> list[RunResult]:
    results: list[RunResult] = []
    static_n: int | None = args.static_replicas
    first = sc.first_minute_replicas()
    replica_only: RunResult | None = None  # the joint optimum starts from it: computed once
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
        elif name in ("optimum", "optimum-replicas"):
            if replica_only is None:
                replica_only = tuned_optimum(sc)
            r = replica_only if name == "optimum-replicas" else joint_optimum(sc, replica_only)
        else:
            r = sc.run(_eo_policy(name, sc, args, static_n), cb)
        results.append(r)
        progress.finish_one()
    return results


def _eo_policy(name: str, sc: Scenario, args: SimSettings, static_n: int | None) -> Policy:
    if name == "caps-only":
        return sc.sidecar_alone(static_n if static_n is not None else peak_replicas(sc))
    # eo-learned is eo as a user without a load test deploys it: the same sidecar, no replicaCapacityRps.
    return sc.eo_policy(name, learned=name == "eo-learned", sidecar=name in ("eo", "eo-learned"))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = load(SimSettings, argv, prog="eo-sim", description=_DESCRIPTION, epilog=_EPILOG)
    except SettingsError as exc:
        print(f"eo-sim: error: {exc}", file=sys.stderr)
        return 2
    configure_logging("text", args.log_level)
    try:
        return _main(args)
    except (TraceError, ValueError) as exc:
        print(f"eo-sim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"eo-sim: error: {exc}", file=sys.stderr)
        return 1


def read_trace(args: SimSettings) -> Trace:
    """The trace the flags name: a file, or ``synth:NAME`` generated with ``--seed``."""
    if args.trace is not None and str(args.trace).startswith(SYNTH_PREFIX):
        return synthetic_trace(str(args.trace), args.seed)
    trace_path = args.trace or default_trace()
    if trace_path is None:
        raise ValueError(f"no --trace given and {DEFAULT_TRACE_NAME} was not found in ../shared/data/traces")
    return load_trace(trace_path)


def scenario_slos(args: SimSettings, trace: Trace, server: ServerConfig) -> Slos:
    """The SLOs the flags give; none given: the default TTFT + ITL pair."""
    if args.ttft_slo_seconds is None and args.itl_slo_seconds is None and args.slo_seconds is None:
        return default_slos(trace, server)
    return Slos(ttft_s=args.ttft_slo_seconds, itl_s=args.itl_slo_seconds, e2e_s=args.slo_seconds)


def _main(args: SimSettings) -> int:
    if args.plot is not None:
        pyplot()  # without matplotlib, say so before the simulation runs rather than after
    names = args.policies.split(",")
    trace = overlay(compress(read_trace(args), args.speedup), args.overlay)
    server = ServerConfig(
        PROFILES[args.profile], max_batch=args.max_batch, cold_start_s=args.cold_start_seconds
    )
    slos = scenario_slos(args, trace, server)
    policy_slo = slos.e2e_s if slos.e2e_s is not None else default_slo_s(trace, server)
    capacity = args.capacity_rps
    if capacity is None:
        capacity = load_test_capacity(trace, server, slos, args.latency_quantile)
        if capacity <= 0:
            raise ValueError(f"one idle replica cannot hold {slos.describe(args.latency_quantile)}; "
                             "give larger SLOs")  # fmt: skip
    sc = Scenario(trace, server, slos, capacity, policy_slo, quantile=args.latency_quantile,
                  target_attainment=args.target_attainment, sim=SimConfig(step_s=args.step_seconds),
                  cap_target_ratio=args.cap_target_ratio, cap_actuator=args.cap_actuator)  # fmt: skip
    show = args.progress or sys.stderr.isatty()
    progress = Progress(show, len(names))
    results = run_policies(sc, names, args, progress)
    summaries = [summarize(r, slos) for r in results]
    print(f"trace {trace.name}: {len(trace.requests)} requests over {trace.span_s / 60:.1f} min; "
          f"profile {server.profile.name}; SLOs {slos.describe(args.latency_quantile)}; "
          f"replica capacity at the SLOs {capacity:.2f} req/s")  # fmt: skip
    if sc.sidecar_governor() is None and slos.e2e_s is None and any(n in ("eo", "caps-only") for n in names):
        print(f"The clock sidecar (eo, caps-only) holds end-to-end latency {sc.sidecar_target_s():g} s "
              "(it reads end-to-end latency only); the scaler holds the SLOs above")  # fmt: skip
    print(table(summaries))
    print(ATTRIBUTION)
    meta = {
        "trace": trace.name,
        "requests": len(trace.requests),
        "profile": server.profile.name,
        "slos": dict(slos.given()),
        "policy_slo_s": policy_slo,
        "latency_quantile": args.latency_quantile,
        "capacity_rps": capacity,
        "descriptions": {n: DESCRIPTIONS[n] for n in names},
    }
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(document(summaries, results, meta), indent=1))
    if args.plot is not None:
        plot(results, summaries, f"eo-sim: {trace.name}, {server.profile.name}", args.plot)
    return 0
