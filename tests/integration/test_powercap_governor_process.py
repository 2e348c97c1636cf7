"""``eo-powercap`` with TTFT and ITL targets as a real process: the governor runs from the flags alone
(``--control auto``), lowers the clock against a vLLM-format /metrics with gauges, says why on /metrics
and in its log, jumps to the ceiling when a queue forms, and SIGTERM restores the clocks and the budget."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.powercap import SidecarProcess, VllmStateFeed

MAX_HZ = 1980e6


def test_the_binary_governs_from_ttft_and_itl_targets_and_restores_on_sigterm(tmp_path: Path) -> None:
    feed = VllmStateFeed()
    with hostile_server(Behaviour(handler=feed)) as (url, _):
        args = [
            "--metrics-url", url + "/metrics",
            "--latency-target-seconds", "10",
            "--ttft-target-seconds", "0.6", "--itl-target-seconds", "0.06", "--target-share", "0.8",
            "--actuator", "clocks", "--power-budget-watts", "500",
            "--interval-seconds", "0.2", "--settle-seconds", "0",
        ]  # fmt: skip
        sidecar = SidecarProcess(args, tmp_path / "state")
        try:
            sidecar.wait_for(
                lambda: (sidecar.sample("eo_powercap_applied_sm_clock_hertz") or MAX_HZ) < MAX_HZ,
                20.0,
                "the clock lowered",
            )
            assert (
                sidecar.sample("eo_powercap_decisions_total", {"reason": "feedforward"}, uuid=None) or 0
            ) > 0
            assert sidecar.sample("eo_powercap_ttft_target_seconds", uuid=None) == 0.6 * 0.8
            assert sidecar.sample("eo_powercap_applied_watts") == 500.0
            assert sidecar.record_status() == "controlling"
            feed.waiting = 4
            sidecar.wait_for(
                lambda: sidecar.sample("eo_powercap_applied_sm_clock_hertz") == MAX_HZ,
                5.0,
                "the ceiling once a queue formed",
            )
            assert any("requests are waiting" in m for m in sidecar.messages())
            rc, took = sidecar.terminate(10.0)
            assert rc == 0 and took < 5.0, sidecar.log_text()
            time.sleep(0.1)
            assert sidecar.record_status() == "restored"
        finally:
            sidecar.kill()
