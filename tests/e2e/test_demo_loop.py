"""The whole loop, shortened: ``python -m demo --quick`` in-process, asserting that it closes.

Real Prometheus (with the project's rules) and Alertmanager, the real exporter, eo-scaler over gRPC
and one eo-powercap sidecar per replica; only the GPUs and the vLLM replicas are simulated. The
schedule's surge asks for more than every GPU can serve, on purpose, so the SLO alert must fire.
Takes about 3.5 minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.cli import QUICK_PHASES
from demo.loop import DemoConfig, run_demo
from demo.report import DemoResult, write_outputs
from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]
TRACE = REPO / "demo" / "data" / "azure_llm_2023_conv_first8000.csv"


@pytest.fixture(scope="module")
def result() -> DemoResult:
    return run_demo(DemoConfig(TRACE, QUICK_PHASES, gpus=6, actuator="clocks"))


def _phase_rows(result: DemoResult, name: str) -> list:
    return [r for r in result.rows if r.phase == name]


def test_replicas_rise_with_load_and_fall_when_it_drops(result: DemoResult) -> None:
    warm_up = max(r.desired for r in _phase_rows(result, "warm-up"))
    surge = max(r.desired for r in _phase_rows(result, "surge"))
    quiet_end = _phase_rows(result, "quiet")[-1].desired
    assert warm_up <= 2
    assert surge == 6, "the surge exceeds every GPU: the scaler must ask for all of them"
    assert quiet_end < surge
    assert result.final_desired <= 1, "after a quiet phase the workload consolidates (or scales to zero)"


def test_sidecars_move_the_gpus_and_restore_them(result: DemoResult) -> None:
    settings = [r.mean_setting for r in result.rows if r.mean_setting is not None]
    assert result.cap_changes > 0
    assert min(settings) < 1980, "some replica's SM clock cap went below the H100's maximum"
    assert result.gpus_restored


def test_the_sidecars_govern_clocks_and_bridge_the_cold_starts(result: DemoResult) -> None:
    """Moving clocks, the sidecars run the governor: feedforward moves from the batch, and the bridge
    while the surge's replicas cold-start (reasons from the sidecars' own decision counters)."""
    decisions = result.summary()["sidecar_decisions_by_reason"]
    assert decisions.get("feedforward", 0) > 0, decisions
    assert decisions.get("scale_up_bridge", 0) > 0, decisions


def test_the_scaler_says_why_it_scaled_up_and_down(result: DemoResult) -> None:
    """The scaler's own decision counters, read from the demo's Prometheus: the surge is answered by a
    scale-up reason (a breach, a forming queue or the load), the quiet phase by consolidation or zero."""
    decisions = result.summary()["scaler_decisions_by_reason"]
    ups = {
        "slo_breach",
        "queue_forming",
        "kv_saturation",
        "scale_up_load",
        "burst_headroom",
        "forecast",
        "wake",
    }
    assert ups & set(decisions), decisions
    assert {"consolidate", "idle_zero"} & set(decisions), decisions


def test_the_slo_holds_while_capacity_suffices(result: DemoResult) -> None:
    served, held = result.by_phase["warm-up"]
    assert served > 0 and held / served >= 0.99


def test_slo_alert_fires_on_the_deliberate_surge(result: DemoResult) -> None:
    assert "EoLatencySLOBreach" in result.alerts_seen
    surge_and_after = [r for r in result.rows if r.phase in ("surge", "calm")]
    assert any(r.latency_s is not None and r.latency_s > result.slo_s for r in surge_and_after)


def test_the_firing_alert_reaches_the_webhook_receiver(result: DemoResult) -> None:
    assert "EoLatencySLOBreach" in result.alerts_delivered, "Alertmanager delivered it to the demo's webhook"


def test_prometheus_sees_the_energy_kpis(result: DemoResult) -> None:
    jpr = [r.joules_per_request for r in result.rows if r.joules_per_request is not None]
    assert jpr, "J/request from the recording rules reached Prometheus"
    assert all(0 < j < 10_000 for j in jpr)
    assert result.gpu_energy_j is not None and result.gpu_energy_j > 0
    assert result.finished == result.requests, "every request of the schedule was served"


def test_outputs_are_written(result: DemoResult, tmp_path: Path) -> None:
    summary, png = write_outputs(result, tmp_path)
    assert summary.read_text().startswith("{")
    assert png.stat().st_size > 10_000
