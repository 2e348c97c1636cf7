"""The simulated GPU behaves as the interface promises and as the model says."""

from __future__ import annotations

import pytest

from devices.base import GpuDevice, GpuLost, GpuNoPermission, GpuNotSupported
from devices.simulated import SimulatedGpu
from gpumodel import H100_LLAMA_8B


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_implements_the_gpu_interface() -> None:
    assert isinstance(SimulatedGpu(0), GpuDevice)


def test_energy_counter_integrates_modelled_power() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, load=lambda: 64, clock=clock)
    start = gpu.total_energy_mj()  # first read picks up the load
    clock.now += 10
    expected_w = H100_LLAMA_8B.native_power_w(64)
    assert gpu.total_energy_mj() - start == pytest.approx(expected_w * 10 * 1000, rel=1e-6)
    assert gpu.power_usage_mw() == pytest.approx(expected_w * 1000, rel=1e-3)


def test_idle_draws_model_resident_power_and_reports_idle_reason() -> None:
    gpu = SimulatedGpu(0, clock=FakeClock())
    assert gpu.power_usage_mw() == 140_000
    assert "gpu_idle" in gpu.clock_event_reasons()
    assert gpu.utilization_percent() == 0


def test_power_limit_binds_and_is_reported() -> None:
    gpu = SimulatedGpu(0, load=lambda: 256, clock=FakeClock())
    gpu.power_usage_mw()
    gpu.set_power_limit_mw(400_000)
    assert gpu.power_usage_mw() == pytest.approx(400_000, rel=0.01)
    assert "sw_power_cap" in gpu.clock_event_reasons()
    assert gpu.set_calls == [("power_limit_mw", 400_000)]


def test_limit_outside_constraints_is_refused() -> None:
    gpu = SimulatedGpu(0, clock=FakeClock())
    with pytest.raises(GpuNotSupported):
        gpu.set_power_limit_mw(100_000)
    assert gpu.power_limit_mw() == 700_000


def test_unprivileged_setters_raise_no_permission() -> None:
    gpu = SimulatedGpu(0, clock=FakeClock(), privileged=False)
    with pytest.raises(GpuNoPermission):
        gpu.set_power_limit_mw(500_000)
    with pytest.raises(GpuNoPermission):
        gpu.lock_sm_clocks_mhz(1000, 1000)


def test_injected_fault_raises_until_cleared() -> None:
    gpu = SimulatedGpu(0, clock=FakeClock())
    gpu.inject_fault(GpuLost("fell off the bus"))
    with pytest.raises(GpuLost):
        gpu.power_usage_mw()
    gpu.inject_fault(None)
    assert gpu.power_usage_mw() > 0


def test_temperature_rises_under_load_towards_steady_state() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(0, load=lambda: 512, clock=clock)
    cold = gpu.temperature_c()
    clock.now += 300
    hot = gpu.temperature_c()
    assert hot > cold + 20
    assert hot < gpu.slowdown_temperature_c()
