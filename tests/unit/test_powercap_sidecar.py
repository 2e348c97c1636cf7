"""The sidecar loop against SimulatedGpu (the same interface as NVML), ticked on an injected clock."""

from __future__ import annotations

import itertools
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devices.base import GpuError, GpuLost
from devices.simulated import SimulatedGpu
from gpumodel import H100_LLAMA_8B, operating_point
from powercap.events import CapEvent
from powercap.latency import LatencySample
from powercap.settings import StartupRefused
from powercap.sidecar import PowercapHandle, start_powercap
from tests.support.powercap import FakeClock, ScriptedSource, settings

ORIGINAL_MW = 700_000


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[CapEvent] = []

    def emit(self, event: CapEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        return None


class ModelledServer:
    """Latency of a vLLM replica on ``gpu`` from the calibrated model: ``tokens`` decode iterations at the
    running batch, slowed by whatever cap is in force. Closes the loop without a hand-written answer."""

    def __init__(self, gpu: SimulatedGpu, tokens: int = 100) -> None:
        self.gpu = gpu
        self.batch = 64.0
        self.tokens = tokens

    def read(self, now_s: float) -> LatencySample:
        cap_w = self.gpu.power_limit_mw() / 1000
        op = operating_point(H100_LLAMA_8B, self.batch, power_cap_w=cap_w)
        return LatencySample(
            self.tokens * op.iteration_time_s, self.batch / op.iteration_time_s / self.tokens
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def start(
    handles: list[PowercapHandle], gpus: list[SimulatedGpu], source: Any, clock: FakeClock, **kw: Any
) -> PowercapHandle:
    events = kw.pop("events", None)
    h = start_powercap(
        settings(kw.pop("tmp_path"), **kw), gpus, source, clock=clock, events=events, run_loop=False
    )
    handles.append(h)
    return h


def tick(h: PowercapHandle, clock: FakeClock, times: int = 1, dt: float = 5.0) -> None:
    for _ in range(times):
        clock.advance(dt)
        h.sidecar.tick()


def record(tmp_path: Path, gpu: SimulatedGpu) -> dict[str, Any]:
    return dict(json.loads((tmp_path / "state" / f"{gpu.uuid}.json").read_text()))


def scrape(h: PowercapHandle, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{h.port}{path}", timeout=5) as resp:
        return str(resp.read().decode())


def test_step_response_to_a_load_increase(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    server = ModelledServer(gpu)
    sink = RecordingSink()
    h = start(handles, [gpu], server, clock, tmp_path=tmp_path, latency_target_s=2.6, events=sink)
    tick(h, clock, times=40)
    low_mw = gpu.power_limit_mw()
    assert low_mw < 300_000, "with plenty of headroom at batch 64 the cap comes down"
    assert server.read(0).latency_s is not None and server.read(0).latency_s < 2.6
    # The load triples: at the low cap the latency breaks the SLO ...
    server.batch = 192.0
    assert (server.read(0).latency_s or 0) > 2.6
    tick(h, clock)
    # ... and one control interval later the cap is at the ceiling and the SLO holds again.
    assert gpu.power_limit_mw() == ORIGINAL_MW
    assert h.sidecar.last_decision is not None and h.sidecar.last_decision.reason == "slo_breach"
    assert (server.read(0).latency_s or 9) <= 2.6
    tick(h, clock, times=40)
    assert (server.read(0).latency_s or 9) <= 2.6
    assert any(e.reason == "PowerCapRaised" and e.warning for e in sink.events)
    assert any(e.reason == "PowerCapLowered" for e in sink.events)
    metrics = scrape(h)
    assert f'eo_powercap_changes_total{{reason="slo_breach",uuid="{gpu.uuid}"}} 1.0' in metrics


def test_every_set_stays_in_bounds_and_steps_down_at_most_max_step(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    source = ScriptedSource(latency_s=0.1)
    h = start(
        handles, [gpu], source, clock, tmp_path=tmp_path, floor_w=400.0, ceiling_w=650.0, max_step_w=30.0
    )
    tick(h, clock, times=30)
    values = [v for what, v in gpu.set_calls if what == "power_limit_mw"][1:]  # [0] is the permission probe
    assert values and min(values) == 400_000 and max(values) <= 650_000
    assert all(a - b <= 30_000 for a, b in itertools.pairwise(values))


def test_stale_metrics_restore_the_original(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    source = ScriptedSource(latency_s=0.1)
    h = start(handles, [gpu], source, clock, tmp_path=tmp_path, stale_after_s=30.0)
    tick(h, clock, times=5)
    assert gpu.power_limit_mw() < ORIGINAL_MW
    assert record(tmp_path, gpu)["status"] == "controlling"
    source.failing = True
    tick(h, clock, times=6)  # 30 s: not yet stale
    assert gpu.power_limit_mw() < ORIGINAL_MW
    tick(h, clock)
    assert gpu.power_limit_mw() == ORIGINAL_MW
    assert record(tmp_path, gpu)["status"] == "restored"
    assert f'eo_powercap_state{{state="restored",uuid="{gpu.uuid}"}} 1.0' in scrape(h)
    # Fresh data again: control resumes.
    source.failing = False
    tick(h, clock, times=3)
    assert gpu.power_limit_mw() < ORIGINAL_MW


def test_stop_restores_and_persists_restored(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    h = start(handles, [gpu], ScriptedSource(latency_s=0.1), clock, tmp_path=tmp_path)
    tick(h, clock, times=4)
    assert gpu.power_limit_mw() == ORIGINAL_MW - 4 * 25_000
    assert h.stop() is True
    assert gpu.power_limit_mw() == ORIGINAL_MW
    assert gpu.set_calls[-1] == ("power_limit_mw", ORIGINAL_MW)
    assert record(tmp_path, gpu)["status"] == "restored"


def test_restart_after_crash_restores_first_and_keeps_the_true_original(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    crashed = start_powercap(
        settings(tmp_path), [gpu], ScriptedSource(latency_s=0.1), clock=clock, run_loop=False
    )
    tick(crashed, clock, times=6)
    capped = gpu.power_limit_mw()
    assert capped < ORIGINAL_MW and record(tmp_path, gpu)["status"] == "controlling"
    # A crash: no restore ran; the kernel drops the flock with the process (here: we drop it).
    for g in crashed.sidecar.gpus:
        g.unlock()
    crashed._server.stop()
    calls_before = len(gpu.set_calls)

    h = start(handles, [gpu], ScriptedSource(latency_s=0.9), clock, tmp_path=tmp_path)
    assert gpu.set_calls[calls_before] == ("power_limit_mw", ORIGINAL_MW), (
        "restore comes before anything else"
    )
    assert gpu.power_limit_mw() == ORIGINAL_MW
    assert h.sidecar.gpus[0].original_w == ORIGINAL_MW / 1000, (
        "the original is the persisted one, not the cap"
    )
    text = scrape(h)
    assert f'eo_powercap_original_watts{{uuid="{gpu.uuid}"}} 700.0' in text
    assert f'eo_powercap_changes_total{{reason="crash_recovery",uuid="{gpu.uuid}"}} 1.0' in text


def test_gpu_error_mid_change_restores_and_does_not_crash(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    sink = RecordingSink()
    h = start(
        handles,
        [gpu],
        ScriptedSource(latency_s=0.1),
        clock,
        tmp_path=tmp_path,
        error_backoff_s=20.0,
        events=sink,
    )
    tick(h, clock, times=3)
    gpu.inject_fault(GpuError("NVML_ERROR_UNKNOWN"))
    tick(h, clock)  # no exception escapes
    assert f'eo_powercap_state{{state="error",uuid="{gpu.uuid}"}} 1.0' in scrape(h)
    assert record(tmp_path, gpu)["status"] == "controlling", "restore failed while the fault lasts"
    assert any(e.reason == "PowerCapError" for e in sink.events)
    gpu.inject_fault(None)
    tick(h, clock)  # the pending restore is retried
    assert gpu.power_limit_mw() == ORIGINAL_MW
    assert record(tmp_path, gpu)["status"] == "restored"
    assert any(e.reason == "PowerCapRestored" and "(gpu_error)" in e.message for e in sink.events)
    tick(h, clock, times=2)
    assert gpu.power_limit_mw() == ORIGINAL_MW, "paused during the back-off"
    tick(h, clock, times=4)
    assert gpu.power_limit_mw() < ORIGINAL_MW, "control resumes after the back-off"


def test_gpu_lost_at_stop_leaves_the_state_file_for_the_next_sidecar(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    h = start(handles, [gpu], ScriptedSource(latency_s=0.1), clock, tmp_path=tmp_path)
    tick(h, clock, times=2)
    gpu.inject_fault(GpuLost("fell off the bus"))
    assert h.stop() is False
    assert record(tmp_path, gpu)["status"] == "controlling"


def test_dry_run_sets_nothing_but_publishes_the_target(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock, privileged=False)  # dry-run needs no privilege
    sink = RecordingSink()
    h = start(
        handles, [gpu], ScriptedSource(latency_s=0.1), clock, tmp_path=tmp_path, dry_run=True, events=sink
    )
    tick(h, clock, times=5)
    h.stop()
    assert gpu.set_calls == []
    assert gpu.power_limit_mw() == ORIGINAL_MW
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").glob("*.json"))
    text = h.sidecar.metrics.registry.get_sample_value("eo_powercap_target_watts", {"uuid": gpu.uuid})
    assert text == 575.0
    assert (
        h.sidecar.metrics.registry.get_sample_value("eo_powercap_applied_watts", {"uuid": gpu.uuid}) == 700.0
    )
    assert h.sidecar.metrics.registry.get_sample_value("eo_powercap_dry_run") == 1.0
    assert all(e.reason == "PowerCapLoweredDryRun" for e in sink.events) and len(sink.events) == 5


def test_refuses_without_permission(tmp_path: Path, clock: FakeClock) -> None:
    gpu = SimulatedGpu(0, clock=clock, privileged=False)
    with pytest.raises(StartupRefused, match="CAP_SYS_ADMIN"):
        start_powercap(settings(tmp_path), [gpu], ScriptedSource(), clock=clock, run_loop=False)
    assert gpu.set_calls == []


def test_refuses_a_gpu_another_writer_holds(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    start(handles, [gpu], ScriptedSource(), clock, tmp_path=tmp_path)
    with pytest.raises(StartupRefused, match="controlled by another process"):
        start_powercap(settings(tmp_path), [gpu], ScriptedSource(), clock=clock, run_loop=False)
    # A dry-run beside it is fine: it writes nothing.
    start(handles, [gpu], ScriptedSource(), clock, tmp_path=tmp_path, dry_run=True)


def test_refusal_releases_the_locks_it_took(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    ok, locked_out = SimulatedGpu(0, clock=clock), SimulatedGpu(1, clock=clock, privileged=False)
    with pytest.raises(StartupRefused):
        start_powercap(settings(tmp_path), [ok, locked_out], ScriptedSource(), clock=clock, run_loop=False)
    start(handles, [ok], ScriptedSource(), clock, tmp_path=tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"floor_w": 750.0}, "floor 750 W is above ceiling 700 W"),
        ({"ceiling_w": 150.0}, "floor 200 W is above ceiling 150 W"),
    ],
)
def test_refuses_bounds_that_cannot_hold(
    tmp_path: Path, clock: FakeClock, overrides: dict[str, float], message: str
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    with pytest.raises(StartupRefused, match=message):
        start_powercap(settings(tmp_path, **overrides), [gpu], ScriptedSource(), clock=clock, run_loop=False)


def test_refuses_without_gpus(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(StartupRefused, match="no GPU visible"):
        start_powercap(settings(tmp_path), [], ScriptedSource(), clock=clock, run_loop=False)


def test_foreign_write_stops_control_of_that_gpu(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    sink = RecordingSink()
    h = start(handles, [gpu], ScriptedSource(latency_s=0.1), clock, tmp_path=tmp_path, events=sink)
    tick(h, clock, times=2)
    gpu.set_power_limit_mw(640_000)  # a node agent writes
    calls = len(gpu.set_calls)
    tick(h, clock, times=3)
    assert gpu.set_calls[calls:] == [] and gpu.power_limit_mw() == 640_000
    assert any(e.reason == "PowerCapForeignWrite" and e.warning for e in sink.events)
    assert record(tmp_path, gpu)["status"] == "released"
    h.stop()
    assert gpu.power_limit_mw() == 640_000, "never restore over another writer"


class HotGpu(SimulatedGpu):
    """The simulated board cannot reach its slowdown temperature at 700 W; this one runs hot."""

    def temperature_c(self) -> int:
        return 84


def test_thermal_guard_lowers_even_when_latency_breaches(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = HotGpu(0, clock=clock)
    h = start(handles, [gpu], ScriptedSource(latency_s=5.0), clock, tmp_path=tmp_path)
    tick(h, clock, times=2)
    assert gpu.power_limit_mw() == ORIGINAL_MW - 2 * 25_000
    assert h.sidecar.last_decision is not None and h.sidecar.last_decision.reason == "thermal"


def test_clock_actuator_locks_and_stop_resets(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    h = start(handles, [gpu], ScriptedSource(latency_s=0.1), clock, tmp_path=tmp_path, actuator="clocks")
    tick(h, clock, times=3)
    locks = [v for what, v in gpu.set_calls if what == "lock_sm_clocks_mhz"]
    assert (
        locks and locks[-1] <= 1980 - 3 * 90 + 15 and all(v in gpu.supported_sm_clocks_mhz() for v in locks)
    )
    assert record(tmp_path, gpu)["actuator"] == "clocks"
    target = h.sidecar.metrics.registry.get_sample_value(
        "eo_powercap_target_sm_clock_hertz", {"uuid": gpu.uuid}
    )
    assert target == (1980 - 3 * 90) * 1e6
    h.stop()
    assert gpu.set_calls[-1] == ("reset_sm_clocks", 0)
    assert "applications_clocks_setting" not in gpu.clock_event_reasons()


def test_metrics_and_health_endpoints(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    gpu = SimulatedGpu(0, clock=clock)
    h = start(handles, [gpu], ScriptedSource(latency_s=0.4), clock, tmp_path=tmp_path, floor_w=300.0)
    tick(h, clock)
    text = scrape(h)
    for line in (
        f'eo_powercap_target_watts{{uuid="{gpu.uuid}"}} 675.0',
        f'eo_powercap_applied_watts{{uuid="{gpu.uuid}"}} 675.0',
        f'eo_powercap_floor_watts{{uuid="{gpu.uuid}"}} 300.0',
        f'eo_powercap_ceiling_watts{{uuid="{gpu.uuid}"}} 700.0',
        f'eo_powercap_state{{state="controlling",uuid="{gpu.uuid}"}} 1.0',
        "eo_powercap_latency_seconds 0.4",
        "eo_powercap_latency_target_seconds 1.0",
        "eo_powercap_dry_run 0.0",
    ):
        assert line in text
    assert scrape(h, "/healthz") == "ok\n"
    clock.advance(60.0)  # no tick for 60 s: the loop is stalled
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(h, "/healthz")
    assert err.value.code == 503
    err.value.close()


def test_another_limit_in_force_is_neither_lowered_into_ours_nor_taken_for_a_foreign_write(
    tmp_path: Path, clock: FakeClock, handles: list[PowercapHandle]
) -> None:
    """Enforced 500 W under a 700 W management limit (e.g. a rack cap): the sidecar's permission probe,
    its record of the original and its restore all go by the management limit, so stopping leaves it
    at 700 W, as found, and the lower enforced limit is not mistaken for another writer."""
    gpu = SimulatedGpu(0, clock=clock)
    gpu.set_other_limit_mw(500_000)
    source = ScriptedSource(latency_s=0.1)
    h = start(handles, [gpu], source, clock, tmp_path=tmp_path)
    assert gpu.set_calls[0] == ("power_limit_mw", ORIGINAL_MW), "the probe writes back 700 W, not 500 W"
    tick(h, clock, times=10)
    assert record(tmp_path, gpu)["original_power_limit_mw"] == ORIGINAL_MW
    assert gpu.power_management_limit_mw() < ORIGINAL_MW, "still controlling: no foreign write seen"
    assert h.sidecar.gpus[0].status == "controlling"
    h.stop()
    handles.remove(h)
    assert gpu.power_management_limit_mw() == ORIGINAL_MW
    assert gpu.power_limit_mw() == 500_000
