"""Restoring never waits on the control loop, and no usable signal never holds a cap past stale-after.

The latency source here blocks inside ``read`` for as long as the test wants: a read that never returns,
which no real source (each bounded by its deadline) can do, so the rule is proven beyond the deadline.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.simulated import SimulatedGpu
from powercap.latency import LatencySample
from powercap.sidecar import SHUTDOWN_BUDGET_S, PowercapHandle, start_powercap
from tests.support.powercap import FakeClock, ScriptedSource, settings

ORIGINAL_MW = 700_000


class BlockingSource:
    """Answers a comfortable latency until ``block()``; then every read waits until ``release()``."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.inside = threading.Event()

    def block(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def read(self, now_s: float) -> LatencySample:
        if not self._open.is_set():
            self.inside.set()
            self._open.wait()
        return LatencySample(0.1, 10.0)


@pytest.fixture
def source() -> Iterator[BlockingSource]:
    s = BlockingSource()
    yield s
    s.release()


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def record_status(tmp_path: Path, gpu: SimulatedGpu) -> str:
    return str(json.loads((tmp_path / "state" / f"{gpu.uuid}.json").read_text())["status"])


def test_stop_restores_at_once_while_a_tick_is_stuck_in_a_read_and_the_late_tick_writes_nothing(
    tmp_path: Path, source: BlockingSource
) -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock)
    h = start_powercap(settings(tmp_path), [gpu], source, clock=clock, run_loop=False)
    for _ in range(3):
        clock.advance(5.0)
        h.sidecar.tick()
    assert gpu.power_limit_mw() < ORIGINAL_MW
    source.block()
    clock.advance(5.0)
    stuck_tick, decisions = in_thread(h.sidecar.tick)
    assert source.inside.wait(5), "the tick is inside the read"
    started = time.monotonic()
    stopper, stopped = in_thread(h.stop)
    stopper.join(SHUTDOWN_BUDGET_S + 1.0)
    took = time.monotonic() - started
    assert stopped == [True], f"stop did not return while a tick was stuck (waited {took:.1f}s)"
    assert took <= SHUTDOWN_BUDGET_S
    assert gpu.power_limit_mw() == ORIGINAL_MW
    assert record_status(tmp_path, gpu) == "restored"
    calls_after_stop = gpu.set_calls
    # The read returns a comfortable latency after the restore: the late tick must not cap again.
    source.release()
    stuck_tick.join(5)
    assert decisions and decisions[0].reason == "stopping"
    assert gpu.set_calls == calls_after_stop
    assert gpu.power_limit_mw() == ORIGINAL_MW


def test_the_watchdog_restores_while_a_read_never_returns(tmp_path: Path, source: BlockingSource) -> None:
    gpu = SimulatedGpu(0)
    s = settings(tmp_path, interval_s=0.1, stale_after_s=1.0)
    h: PowercapHandle = start_powercap(s, [gpu], source)
    try:
        deadline = time.monotonic() + 10
        while gpu.power_limit_mw() >= ORIGINAL_MW:
            assert time.monotonic() < deadline, "never lowered on a comfortable latency"
            time.sleep(0.01)
        source.block()
        blocked = time.monotonic()

        def restored() -> bool:
            decision = h.sidecar.last_decision
            return (
                gpu.power_limit_mw() == ORIGINAL_MW
                and record_status(tmp_path, gpu) == "restored"
                and decision is not None
                and decision.reason == "stale_metrics"
            )

        while not restored():
            # stale-after + one interval is the rule; the rest is scheduling on a loaded machine.
            assert time.monotonic() - blocked < s.stale_after_s + s.interval_s + 2.0, "not restored"
            time.sleep(0.01)
        assert source.inside.is_set(), "the loop was stuck in a read the whole time"
    finally:
        source.release()
        h.stop()


def test_the_watchdog_does_nothing_while_data_is_fresh_or_already_restored(tmp_path: Path) -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock)
    scripted = ScriptedSource(latency_s=0.1)
    h = start_powercap(settings(tmp_path, stale_after_s=30.0), [gpu], scripted, clock=clock, run_loop=False)
    try:
        clock.advance(5.0)
        h.sidecar.tick()
        assert h.sidecar.enforce_staleness() is None
        clock.advance(30.5)
        decision = h.sidecar.enforce_staleness()
        assert decision is not None and decision.action == "restore"
        assert h.sidecar.enforce_staleness() is None, "restored once, then nothing to do"
    finally:
        h.stop()


@pytest.mark.parametrize("latency", [None, math.nan, math.inf, -1.0])
def test_no_usable_latency_restores_after_stale_after(tmp_path: Path, latency: float | None) -> None:
    """No request finished (an idle server, frozen counters), NaN, Inf or a negative number: none is a
    reading. The cap is held through a short gap and restored once the gap reaches stale-after."""
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock)
    scripted = ScriptedSource(latency_s=0.1)
    h = start_powercap(settings(tmp_path, stale_after_s=30.0), [gpu], scripted, clock=clock, run_loop=False)
    try:
        for _ in range(4):
            clock.advance(5.0)
            h.sidecar.tick()
        capped = gpu.power_limit_mw()
        assert capped < ORIGINAL_MW
        scripted.latency_s = latency
        for _ in range(6):  # 30 s: a gap, not yet stale
            clock.advance(5.0)
            h.sidecar.tick()
        assert gpu.power_limit_mw() == capped
        assert h.sidecar.last_decision is not None and h.sidecar.last_decision.reason == "no_data"
        shown = h.sidecar.metrics.registry.get_sample_value("eo_powercap_latency_seconds")
        assert shown is not None and math.isnan(shown), "no usable latency is shown as NaN"
        clock.advance(5.0)
        h.sidecar.tick()
        assert gpu.power_limit_mw() == ORIGINAL_MW
        assert h.sidecar.last_decision is not None and h.sidecar.last_decision.reason == "stale_metrics"
        # Usable data again: control resumes.
        scripted.latency_s = 0.1
        for _ in range(3):
            clock.advance(5.0)
            h.sidecar.tick()
        assert gpu.power_limit_mw() < ORIGINAL_MW
    finally:
        h.stop()
