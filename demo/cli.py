"""``make demo`` / ``python -m demo``: the command line of the live loop (see ``demo.loop``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Annotated, Literal

from pydantic import BeforeValidator
from pydantic_settings import SettingsConfigDict

from common.settings import BinarySettings, Flag, SettingsError, from_values, setting
from common.settings import build_parser as settings_parser
from demo.data import conversation_trace_excerpt
from demo.loop import DemoConfig, run_demo
from demo.prometheus import PrometheusNotInstalled
from demo.report import DemoResult, Row, decisions_line, format_row, header, write_outputs
from demo.schedule import Phase

_SHARED_TRACE = Path(__file__).resolve().parents[2] / "shared/data/traces/azure_llm_2023_conv.csv"
# The first 8,000 requests of the same trace ship with the demo, for machines without ../shared.
DEFAULT_TRACE = _SHARED_TRACE if _SHARED_TRACE.is_file() else conversation_trace_excerpt()

# Wall-clock seconds and trace speed-up of each phase. The conversation trace runs ~5.5 req/s at native
# speed; one simulated replica holds the SLO up to ~16 req/s. "surge" asks for more than every GPU can
# serve, on purpose, so the SLO alert fires; "calm" lets the scaler consolidate; "quiet" is silence, so
# the workload scales to zero.
MAX_GPUS = 16  # one process runs them all, with a vLLM endpoint and a sidecar each

STANDARD_PHASES = (
    Phase("warm-up", 30, 2),
    Phase("rising", 20, 3.5),
    Phase("busy", 45, 5),
    Phase("surge", 40, 20),
    Phase("calm", 60, 1.5),
    Phase("quiet", 95, 0),
)
QUICK_PHASES = (
    Phase("warm-up", 15, 2),
    Phase("busy", 35, 5),
    Phase("surge", 45, 20),
    Phase("calm", 40, 1.5),
    Phase("quiet", 85, 0),
)


_MAX_PIECE_ECHO = 24  # a phase error quotes at most this much of the bad piece


def parse_phases(text: str) -> tuple[Phase, ...]:
    """``name:seconds:speedup,...`` into phases, with an error that names the bad piece."""
    phases = []
    for piece in text.split(","):
        parts = piece.strip().split(":")
        shown = piece if len(piece) <= _MAX_PIECE_ECHO else piece[:_MAX_PIECE_ECHO] + "…"
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"phase {shown!r}: expected name:seconds:speedup")
        name, seconds, speedup = parts
        try:
            phase = Phase(name, float(seconds), float(speedup))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"phase {shown!r}: seconds and speedup must be numbers"
            ) from None
        if phase.duration_s <= 0 or phase.speedup < 0:
            raise argparse.ArgumentTypeError(f"phase {shown!r}: need seconds > 0 and speedup >= 0")
        phases.append(phase)
    return tuple(phases)


def _phases_field(value: object) -> object:
    """The ``--phases`` text parsed as above (empty: none); a bad piece becomes the setting's error."""
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return parse_phases(value)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


Phases = Annotated[tuple[Phase, ...] | None, BeforeValidator(_phases_field)]


class DemoSettings(BinarySettings):
    """The demo's options (each also ``EO_DEMO_<OPTION>``)."""

    model_config = SettingsConfigDict(env_prefix="EO_DEMO_")

    trace: Path = setting(
        DEFAULT_TRACE, "request trace, Azure CSV or generic CSV; the default is the conversation trace"
    )
    phases: Phases = setting(
        None, "load schedule as name:seconds:speedup,... (none: a 5-minute schedule, or --quick's)"
    )
    quick: Flag = setting(False, "a shorter schedule (under 4 minutes), as the end-to-end test runs")
    gpus: int = setting(6, "simulated GPUs on the node, also the ScaledObject's maxReplicaCount")
    actuator: Literal["clocks", "power"] = setting(
        "clocks", "what the sidecars move: locked SM clocks (clocks) or the power limit (power)"
    )
    out: Path = setting(Path("out"), "folder for demo-summary.json and demo.png")
    verbose: Flag = setting(False, "log what every component does", short="-v")


_DESCRIPTION = (
    "Run Energy Orchestrator's whole loop on this machine: simulated GPUs and vLLM-format "
    "servers replaying a real Azure LLM trace, the exporter, a real Prometheus (with the "
    "project's rules, time-compressed) and Alertmanager, eo-scaler polled over gRPC by a "
    "KEDA/HPA driver, and one eo-powercap sidecar per replica. Prints a live table, then a "
    "summary; writes demo-summary.json and demo.png. Stops everything it started, Ctrl-C included."
)
_EPILOG = "Every option also reads an environment variable EO_DEMO_<OPTION> (the option wins)."


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(DemoSettings, "python -m demo", _DESCRIPTION, _EPILOG)


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str] | None = None) -> DemoSettings:
    """The options from ``argv`` over ``environ`` (default: the process's); a bad value exits 2 with usage."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    try:
        return from_values(DemoSettings, given, environ=environ)
    except SettingsError as exc:
        parser.error(str(exc))


def setup_logging(out_dir: Path, verbose: bool) -> Path:
    """Everything at INFO into ``out_dir/demo.log``; the terminal keeps the table (errors only, or -v)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo.log"
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    to_file = logging.FileHandler(path, mode="w")
    to_file.setFormatter(fmt)
    to_terminal = logging.StreamHandler()
    to_terminal.setFormatter(fmt)
    to_terminal.setLevel(logging.INFO if verbose else logging.ERROR)
    logging.basicConfig(level=logging.INFO, handlers=[to_file, to_terminal], force=True)
    return path


class LiveTable:
    """Prints one line per row, and the column titles before the first and every 20th."""

    def __init__(self, actuator: str) -> None:
        self._header = header(actuator)
        self._rows = 0

    def __call__(self, row: Row) -> None:
        if self._rows % 20 == 0:
            print(self._header)
        self._rows += 1
        print(format_row(row), flush=True)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not 1 <= args.gpus <= MAX_GPUS:
        print(f"--gpus (EO_DEMO_GPUS) must be between 1 and {MAX_GPUS}, got {args.gpus}", file=sys.stderr)
        return 2
    if not args.trace.is_file():
        print(f"trace {args.trace} not found (pass --trace PATH)", file=sys.stderr)
        return 2
    log_path = setup_logging(args.out, args.verbose)
    phases = args.phases or (QUICK_PHASES if args.quick else STANDARD_PHASES)
    config = DemoConfig(args.trace, phases, gpus=args.gpus, actuator=args.actuator, out_dir=args.out)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop cleanly when killed, as on Ctrl-C
    plan = ", ".join(f"{p.name} {p.duration_s:g}s at x{p.speedup:g}" for p in phases)
    print(f"Energy Orchestrator demo, {config.duration_s:.0f} s: {plan}")
    print("starting Prometheus, Alertmanager, the exporter, eo-scaler and the KEDA driver ...")
    print(f"(every component's log goes to {log_path})")
    started = time.monotonic()

    try:
        result = run_demo(config, LiveTable(config.actuator), on_alert=lambda alert: print(alert.line()))
    except PrometheusNotInstalled as err:
        print(f"{err}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as err:  # a port, a binary that would not start: say which, not a trace
        logging.getLogger(__name__).exception("the demo could not run")
        print(f"the demo could not run: {err} (details in {log_path})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started has been stopped")
        return 130
    print_summary(result, time.monotonic() - started)
    summary_path, png = write_outputs(result, config.out_dir)
    print(f"wrote {summary_path} and {png}")
    return 0


def print_summary(result: DemoResult, wall_s: float) -> None:
    s = result.summary()
    attainment = s["slo_attainment"]
    print(f"\nSummary ({wall_s:.0f} s):")
    print(f"  requests finished        {s['finished']} of {s['requests']}")
    print(
        f"  within {s['slo_seconds']:g} s end to end    {'-' if attainment is None else f'{attainment:.1%}'}"
        f" of requests (the SLO: p95 <= {s['slo_seconds']:g} s; the surge exceeds every GPU on purpose)"
    )
    phases = ", ".join(f"{name} {share:.0%}" for name, share in s["slo_attainment_by_arrival_phase"].items())
    print(f"    by arrival phase       {phases}")
    print(f"  GPU energy               {s['gpu_energy_kj']} kJ, {s['gpu_joules_per_request']} J/request")
    print(f"  replicas                 up to {s['max_replicas']}, {s['final_replicas']} at the end")
    print(f"  sidecar setting changes  {s['sidecar_setting_changes']} ({s['sidecar_actuator']})")
    print(f"  sidecar decisions        {decisions_line(s['sidecar_decisions_by_reason'])} (by reason)")
    print(f"  scaler decisions         {decisions_line(s['scaler_decisions_by_reason'])} (by reason)")
    print(f"  alerts that fired        {', '.join(s['alerts_fired']) or 'none'}")
    delivered = ", ".join(s["alerts_delivered_to_webhook"]) or "none"
    print(f"  alerts delivered         {delivered} (by Alertmanager, to the demo's webhook receiver)")
    print(f"  GPUs restored            {'yes' if s['gpus_restored_to_original_settings'] else 'NO'}")
