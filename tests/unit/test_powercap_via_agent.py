"""``eo-powercap --apply-via agent``: the sidecar runs its controller, publishes its request for the node
agent on /metrics, and never writes to the GPU (no privilege, no lock, no state file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devices.simulated import SimulatedGpu
from powercap.events import CapEvent
from powercap.main import load_settings
from powercap.persist import GpuLock
from powercap.sidecar import PowercapHandle, start_powercap
from tests.support.powercap import FakeClock, ScriptedSource, settings

UUID = "GPU-5e1a0000-0000-4000-8000-000000000000"


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[CapEvent] = []

    def emit(self, event: CapEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        return None


class WallClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def start(handles: list[PowercapHandle], gpu: SimulatedGpu, tmp_path: Path, **kw: Any) -> PowercapHandle:
    clock: FakeClock = kw.pop("clock")
    wall: WallClock = kw.pop("wall", WallClock())
    events = kw.pop("events", None)
    source = kw.pop("source", ScriptedSource(latency_s=0.1))
    h = start_powercap(
        settings(tmp_path, apply_via="agent", **kw),
        [gpu],
        source,
        clock=clock,
        events=events,
        run_loop=False,
        wall_clock=wall,
    )
    handles.append(h)
    return h


def sample(h: PowercapHandle, name: str, **labels: str) -> float | None:
    return h.sidecar.metrics.registry.get_sample_value(name, labels)


def test_it_publishes_its_request_and_sets_nothing_without_privilege(
    tmp_path: Path, handles: list[PowercapHandle]
) -> None:
    clock, wall = FakeClock(), WallClock()
    gpu = SimulatedGpu(0, clock=clock, privileged=False)  # any setter would raise no-permission
    sink = RecordingSink()
    h = start(handles, gpu, tmp_path, clock=clock, wall=wall, events=sink)
    stamps = []
    for _ in range(4):
        clock.advance(5)
        wall.now += 5
        h.sidecar.tick()
        stamps.append(sample(h, "eo_powercap_request_timestamp_seconds"))
    # Lowered by one bounded step per tick from the board's default, as in direct mode.
    assert sample(h, "eo_powercap_requested_watts", uuid=UUID) == 600.0
    assert sample(h, "eo_powercap_target_watts", uuid=UUID) == 600.0
    assert stamps == [wall.now - 15, wall.now - 10, wall.now - 5, wall.now], "stamped at each decision"
    assert sample(h, "eo_powercap_state", uuid=UUID, state="controlling") == 1.0
    assert sample(h, "eo_powercap_dry_run") == 0.0
    assert gpu.set_calls == []
    assert not (tmp_path / "state").exists(), "no state file, no lock: the agent owns both"
    assert all(e.reason == "PowerCapLoweredRequested" for e in sink.events) and len(sink.events) == 4
    h.stop()
    assert gpu.set_calls == []


def test_a_stale_signal_asks_for_the_ceiling(tmp_path: Path, handles: list[PowercapHandle]) -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock, privileged=False)
    source = ScriptedSource(latency_s=0.1)
    h = start(handles, gpu, tmp_path, clock=clock, source=source, stale_after_s=10.0)
    for _ in range(3):
        clock.advance(5)
        h.sidecar.tick()
    assert sample(h, "eo_powercap_requested_watts", uuid=UUID) == 625.0
    source.failing = True
    for _ in range(3):
        clock.advance(5)
        h.sidecar.tick()
    assert sample(h, "eo_powercap_requested_watts", uuid=UUID) == 700.0
    assert sample(h, "eo_powercap_state", uuid=UUID, state="restored") == 1.0


def test_the_ceiling_is_the_boards_default_not_the_agents_cap(
    tmp_path: Path, handles: list[PowercapHandle]
) -> None:
    """A sidecar restarted while the agent holds 500 W must still be able to ask for 700 W."""
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock)
    gpu.set_power_limit_mw(500_000)  # the agent's cap, in force when this sidecar starts
    h = start(handles, gpu, tmp_path, clock=clock, source=ScriptedSource(latency_s=5.0))  # a breach
    clock.advance(5)
    h.sidecar.tick()
    assert sample(h, "eo_powercap_requested_watts", uuid=UUID) == 700.0
    assert sample(h, "eo_powercap_applied_watts", uuid=UUID) == 500.0, "what is in force, read"
    assert sample(h, "eo_powercap_ceiling_watts", uuid=UUID) == 700.0


def test_it_takes_no_lock_so_the_agent_can_write(tmp_path: Path, handles: list[PowercapHandle]) -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock)
    lock = GpuLock(tmp_path / "state" / "locks", gpu.uuid)  # the agent holds it
    try:
        h = start(handles, gpu, tmp_path, clock=clock)
        clock.advance(5)
        h.sidecar.tick()
        assert sample(h, "eo_powercap_requested_watts", uuid=UUID) is not None
    finally:
        lock.release()


def test_clock_requests_are_published_in_hertz(tmp_path: Path, handles: list[PowercapHandle]) -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock, privileged=False)
    h = start(handles, gpu, tmp_path, clock=clock, actuator="clocks")
    clock.advance(5)
    h.sidecar.tick()
    requested = sample(h, "eo_powercap_requested_sm_clock_hertz", uuid=UUID)
    assert requested is not None and requested < gpu.max_sm_clock_mhz() * 1e6
    assert sample(h, "eo_powercap_requested_watts", uuid=UUID) is None
    assert gpu.set_calls == []


def test_dry_run_through_the_agent_publishes_no_request(
    tmp_path: Path, handles: list[PowercapHandle]
) -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock, privileged=False)
    h = start(handles, gpu, tmp_path, clock=clock, dry_run=True)
    clock.advance(5)
    h.sidecar.tick()
    assert sample(h, "eo_powercap_target_watts", uuid=UUID) == 675.0
    assert sample(h, "eo_powercap_requested_watts", uuid=UUID) is None
    assert sample(h, "eo_powercap_request_timestamp_seconds") is None


def test_the_flag_and_its_variable() -> None:
    base = {"EO_LATENCY_TARGET_SECONDS": "2"}
    assert load_settings([], base).apply_via == "direct"
    assert load_settings([], {**base, "EO_APPLY_VIA": "agent"}).via_agent
    assert load_settings(["--apply-via", "agent"], base).sets_nothing
    with pytest.raises(Exception, match="--apply-via / EO_APPLY_VIA"):
        load_settings([], {**base, "EO_APPLY_VIA": "node"})
