"""The real ``eo-powercap`` binary on a simulated GPU against a latency source that misbehaves.

Its latency source is a real HTTP peer on loopback (``hostile_server``) that first serves a vLLM
histogram with plenty of headroom, so the sidecar lowers the cap, and then trickles (one byte every
0.5 s), serves NaN buckets or frozen counters. The rules under test (docs/powercap.md, "Restore rules"):
no usable signal for --stale-after-seconds restores the GPU within one more interval; SIGTERM restores
and exits within 5 s whatever the loop is doing; a SIGKILLed sidecar's successor restores at start.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from powercap.sidecar import SHUTDOWN_BUDGET_S
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.powercap import HistogramFeed, SidecarProcess

INTERVAL_S = 0.5
STALE_AFTER_S = 3.0
WINDOW_S = 2.0
# Process scheduling on a loaded test machine; the rule itself is stale-after + one interval.
SLACK_S = 3.0


@pytest.fixture
def peer() -> Iterator[tuple[str, Behaviour, HistogramFeed]]:
    feed = HistogramFeed()
    with hostile_server(Behaviour(handler=feed, trickle_interval_s=0.5)) as (url, behaviour):
        yield url + "/metrics", behaviour, feed


@pytest.fixture
def processes() -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for p in started:
        p.kill()


def start(
    processes: list[SidecarProcess], tmp_path: Path, url: str, stale_after_s: float = STALE_AFTER_S
) -> SidecarProcess:
    args = [
        "--metrics-url", url,
        "--latency-target-seconds", "2",
        "--interval-seconds", str(INTERVAL_S),
        "--settle-seconds", "0",
        "--latency-window-seconds", str(WINDOW_S),
        "--stale-after-seconds", str(stale_after_s),
        "--scrape-timeout-seconds", "2",
    ]  # fmt: skip
    p = SidecarProcess(args, tmp_path / "state")
    processes.append(p)
    return p


def start_trickling(behaviour: Behaviour) -> None:
    behaviour.handler = None
    behaviour.mode = "trickle"


def test_trickling_source_restores_within_stale_after_plus_one_interval(
    tmp_path: Path, peer: tuple[str, Behaviour, HistogramFeed], processes: list[SidecarProcess]
) -> None:
    url, behaviour, _ = peer
    p = start(processes, tmp_path, url)
    p.wait_for(p.capped, 30, "capped on good data")
    start_trickling(behaviour)
    took = p.wait_for(p.restored, STALE_AFTER_S + INTERVAL_S + SLACK_S, "restored while the source trickles")
    assert took <= STALE_AFTER_S + INTERVAL_S + SLACK_S
    # Published in order within one step: the counter may land a moment after the limit.
    p.wait_for(lambda: p.sample("eo_powercap_state", {"state": "restored"}) == 1.0, 2, "state restored")
    p.wait_for(
        lambda: p.sample("eo_powercap_changes_total", {"reason": "stale_metrics"}) == 1.0, 2, "counted"
    )
    # The loop is alive (each read ends at its deadline): liveness must not restart a safe sidecar.
    assert p.get("/healthz")[0] == 200
    rc, _ = p.terminate(SHUTDOWN_BUDGET_S)
    assert rc == 0, p.log_text()


def test_sigterm_while_a_read_trickles_restores_and_exits_within_5_s(
    tmp_path: Path, peer: tuple[str, Behaviour, HistogramFeed], processes: list[SidecarProcess]
) -> None:
    url, behaviour, _ = peer
    # Stale-after far away: when SIGTERM comes, the GPU is still capped and only the stop restores it.
    p = start(processes, tmp_path, url, stale_after_s=120.0)
    p.wait_for(p.capped, 30, "capped on good data")
    served = len(behaviour.requests)
    start_trickling(behaviour)
    p.wait_for(lambda: len(behaviour.requests) > served, 5, "inside a trickling read")
    assert p.record_status() == "controlling"
    rc, took = p.terminate(SHUTDOWN_BUDGET_S)
    assert rc == 0, f"no clean exit within {SHUTDOWN_BUDGET_S:g}s of SIGTERM: {p.log_text()}"
    assert took <= SHUTDOWN_BUDGET_S
    assert p.record_status() == "restored"
    assert any("original setting restored" in m for m in p.messages())


def test_sigkill_then_restart_restores_first(
    tmp_path: Path, peer: tuple[str, Behaviour, HistogramFeed], processes: list[SidecarProcess]
) -> None:
    url, behaviour, _ = peer
    first = start(processes, tmp_path, url, stale_after_s=120.0)
    first.wait_for(first.capped, 30, "capped on good data")
    start_trickling(behaviour)
    first.kill()  # SIGKILL: no handler runs, the state file keeps saying controlling
    assert first.record_status() == "controlling"
    second = start(processes, tmp_path, url, stale_after_s=120.0)
    # Restored at start, before the first tick: the trickling source cannot delay it.
    assert second.record_status() == "restored"
    second.wait_for(lambda: second.applied_watts() == 700.0, 10, "publishing the restored limit")
    assert second.sample("eo_powercap_changes_total", {"reason": "crash_recovery"}) == 1.0
    assert any("restoring what a previous sidecar left in force" in m for m in second.messages())
    rc, _ = second.terminate(SHUTDOWN_BUDGET_S)
    assert rc == 0, second.log_text()


@pytest.mark.parametrize("fault", ["nan", "frozen"])
def test_no_usable_signal_restores_after_stale_after(
    fault: str,
    tmp_path: Path,
    peer: tuple[str, Behaviour, HistogramFeed],
    processes: list[SidecarProcess],
) -> None:
    url, _, feed = peer
    p = start(processes, tmp_path, url)
    p.wait_for(p.capped, 30, "capped on good data")
    if fault == "nan":
        feed.nan = True
        bound = STALE_AFTER_S + INTERVAL_S + SLACK_S
    else:
        # Frozen counters still show the last finished requests until they leave the window.
        feed.frozen = True
        bound = WINDOW_S + STALE_AFTER_S + INTERVAL_S + SLACK_S
    p.wait_for(p.restored, bound, f"restored on {fault} buckets")
    p.wait_for(
        lambda: p.sample("eo_powercap_changes_total", {"reason": "stale_metrics"}) == 1.0, 2, "counted"
    )
    latency = p.sample("eo_powercap_latency_seconds", uuid=None)
    assert latency is not None and math.isnan(latency), "no usable latency is shown as NaN, not a number"
    rc, _ = p.terminate(SHUTDOWN_BUDGET_S)
    assert rc == 0, p.log_text()
