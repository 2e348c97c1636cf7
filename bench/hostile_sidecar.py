"""How fast the real ``eo-powercap`` restores when its latency source turns hostile, and exits on SIGTERM.

Each run starts the installed binary on a simulated GPU (dry-run off: it really sets and restores the
simulated limit), with a real loopback HTTP peer as its /metrics source. The peer first serves a vLLM
histogram with plenty of headroom until the sidecar has lowered the cap, then misbehaves:

* ``restore``: the peer trickles one byte every 0.5 s (or hangs); time from then until the sidecar's
  /metrics shows the original limit and its state file says restored. Target: at most stale-after +
  one interval (the staleness clock starts at the last usable read, up to one interval before).
* ``sigterm``: stale-after set far away so only the stop can restore; SIGTERM while a trickling read is
  in flight; time until the process has exited, and whether its state file says restored. Target 5 s.

Times are polled every 50 ms, so they carry up to ~50 ms of polling error.

    python bench/hostile_sidecar.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from powercap.sidecar import SHUTDOWN_BUDGET_S
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.powercap import HistogramFeed, SidecarProcess


def sidecar_args(url: str, interval_s: float, stale_after_s: float) -> list[str]:
    return [
        "--metrics-url", url,
        "--latency-target-seconds", "2",
        "--interval-seconds", str(interval_s),
        "--settle-seconds", "0",
        "--latency-window-seconds", str(4 * interval_s),
        "--stale-after-seconds", str(stale_after_s),
        "--scrape-timeout-seconds", "2",
    ]  # fmt: skip


def misbehave(behaviour: Behaviour, mode: str) -> None:
    behaviour.handler = None
    behaviour.mode = mode


def time_to_restore(work: Path, mode: str, interval_s: float, stale_after_s: float) -> tuple[float, float]:
    """(seconds from misbehaving to restored, seconds from SIGTERM to exit afterwards)."""
    with hostile_server(Behaviour(handler=HistogramFeed())) as (url, behaviour):
        p = SidecarProcess(sidecar_args(url + "/metrics", interval_s, stale_after_s), work / "state")
        try:
            p.wait_for(p.capped, 60, "capped on good data")
            misbehave(behaviour, mode)
            restore_s = p.wait_for(p.restored, stale_after_s + 30, f"restored ({mode})")
            rc, exit_s = p.terminate(30)
            if rc != 0:
                raise SystemExit(f"exit status {rc} after SIGTERM: {p.log_text()}")
            return restore_s, exit_s
        finally:
            p.kill()


def time_to_exit(work: Path, mode: str, interval_s: float) -> tuple[float, str | None]:
    """(seconds from SIGTERM, sent while capped and inside a misbehaving read, to exit; state file)."""
    with hostile_server(Behaviour(handler=HistogramFeed())) as (url, behaviour):
        p = SidecarProcess(sidecar_args(url + "/metrics", interval_s, 600.0), work / "state")
        try:
            p.wait_for(p.capped, 60, "capped on good data")
            served = len(behaviour.requests)
            misbehave(behaviour, mode)
            p.wait_for(lambda: len(behaviour.requests) > served, 10, "inside a hostile read")
            time.sleep(0.1)
            rc, exit_s = p.terminate(30)
            if rc is None:
                raise SystemExit(f"still running 30 s after SIGTERM: {p.log_text()}")
            return exit_s, p.record_status()
        finally:
            p.kill()


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--interval-seconds", type=float, default=0.5)
    ap.add_argument("--stale-after-seconds", type=float, default=3.0)
    a = ap.parse_args()
    target = a.stale_after_seconds + a.interval_seconds
    print(
        f"eo-powercap, simulated GPU, dry-run off; interval {a.interval_seconds:g} s, stale-after "
        f"{a.stale_after_seconds:g} s, {a.runs} runs per row"
    )
    print(f"{'source':<10} {'what':<36} {'figures':<34} target")
    for mode in ("trickle", "hang"):
        restores: list[float] = []
        exits_after: list[float] = []
        exits_capped: list[float] = []
        states: list[str | None] = []
        for _ in range(a.runs):
            with tempfile.TemporaryDirectory() as tmp:
                r, e = time_to_restore(Path(tmp), mode, a.interval_seconds, a.stale_after_seconds)
                restores.append(r)
                exits_after.append(e)
            with tempfile.TemporaryDirectory() as tmp:
                e, state = time_to_exit(Path(tmp), mode, a.interval_seconds)
                exits_capped.append(e)
                states.append(state)
        ok = "met" if max(restores) <= target else "MISSED"
        print(
            f"{mode:<10} {'restore after the source turned':<36} {summary(restores):<34} ≤ {target:g} s {ok}"
        )
        ok = "met" if max(exits_capped) <= SHUTDOWN_BUDGET_S else "MISSED"
        restored = sum(s == "restored" for s in states)
        print(
            f"{mode:<10} {'SIGTERM to exit, capped, mid-read':<36} {summary(exits_capped):<34} "
            f"≤ {SHUTDOWN_BUDGET_S:g} s {ok}; restored {restored}/{len(states)}"
        )
        ok = "met" if max(exits_after) <= SHUTDOWN_BUDGET_S else "MISSED"
        print(
            f"{mode:<10} {'SIGTERM to exit, already restored':<36} {summary(exits_after):<34} "
            f"≤ {SHUTDOWN_BUDGET_S:g} s {ok}"
        )


if __name__ == "__main__":
    main()
