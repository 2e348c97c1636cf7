"""bench/gpu_check.py in its simulated mode: one short run, read-only, every part of the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_simulated_run_reports_energy_scrapes_and_dry_run_decisions() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--simulated", "--seconds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout)
    energy = report["energy"]
    # The exporter's counter and the integrated power agree on the simulated GPU (same model).
    assert energy["exporter_energy_j"] > 0
    assert abs(energy["ratio"] - 1.0) < 0.05
    assert energy["scrape_latency_max_ms"] > 0
    decisions = report["governor_dry_run"]
    reasons = [d["reason"] for d in decisions]
    clocks = [d["clock_mhz"] for d in decisions]
    # Small batch: the governor lowers; a queue: the ceiling at once; an unparsable page: never lower.
    assert "feedforward" in reasons and min(clocks) < max(clocks)
    queue = [d for d in decisions if d["phase"] == "queue"]
    assert queue[0]["reason"] == "queue_forming" and queue[0]["clock_mhz"] == max(clocks)
    assert decisions[-1]["read_error"] and decisions[-1]["clock_mhz"] == max(clocks)
    # The live sidecar (dry-run, governor) on the same GPU: lowers at a small batch, publishes its
    # target on its own /metrics, the ceiling at once for a queue and for a page it cannot parse.
    live = report["sidecar_dry_run"]
    live_clocks = [d["clock_mhz"] for d in live]
    assert "feedforward" in {d["reason"] for d in live} and min(live_clocks) < max(live_clocks)
    assert all(d["published_target_mhz"] == d["clock_mhz"] for d in live)
    assert next(d["reason"] for d in live if d["phase"] == "queue") == "queue_forming"
    assert live[-1]["clock_mhz"] == max(live_clocks)
    # Read-only: not one setter reached the GPU.
    assert report["setter_calls"] == []
