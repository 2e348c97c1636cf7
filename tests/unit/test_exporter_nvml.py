"""The NVML backend and the GPU collector, with pynvml faked at its import site (autospec)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock, create_autospec

import pynvml
import pytest
from prometheus_client import CollectorRegistry

from devices import nvml as nvml_module
from devices.base import (
    CLOCK_EVENT_REASONS,
    GpuDevice,
    GpuError,
    GpuLost,
    GpuNoPermission,
    GpuNotSupported,
    GpuUnavailable,
)
from devices.nvml import CLOCK_EVENT_BITS, NvmlBackend, reasons_from_bitmask
from exporter.collector import ExporterCollector, SourceReading
from exporter.gpu import GpuEnergyReader, GpuSource

UUIDS = ["GPU-11111111-2222-3333-4444-555555555555", "GPU-66666666-7777-8888-9999-000000000000"]
MODEL = "NVIDIA H100 80GB HBM3"


class Boards:
    """What each fake GPU answers; a value that is an exception is raised instead."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {
            f"h{i}": {
                "uuid": uuid,
                "name": MODEL,
                "power": 350_000 + i * 100_000,
                "energy": 1_000_000 + i,
                "limit": 700_000,
                "management": 700_000,
                "default": 700_000,
                "constraints": [200_000, 700_000],
                "temperature": 60 + i,
                "utilization": SimpleNamespace(gpu=85, memory=40),
                "clock": 1_980,
                "reasons": 0x4 | 0x20,
            }
            for i, uuid in enumerate(UUIDS)
        }

    def answer(self, key: str) -> Callable[..., Any]:
        def reply(handle: str, *_args: object) -> Any:
            value = self.values[handle][key]
            if isinstance(value, BaseException):
                raise value
            return value

        return reply


@pytest.fixture
def boards() -> Boards:
    return Boards()


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch, boards: Boards) -> MagicMock:
    fake = create_autospec(pynvml)
    fake.nvmlDeviceGetCount.return_value = len(UUIDS)
    fake.nvmlDeviceGetHandleByIndex.side_effect = lambda i: f"h{i}"
    for fn, key in [
        ("nvmlDeviceGetUUID", "uuid"),
        ("nvmlDeviceGetName", "name"),
        ("nvmlDeviceGetPowerUsage", "power"),
        ("nvmlDeviceGetTotalEnergyConsumption", "energy"),
        ("nvmlDeviceGetEnforcedPowerLimit", "limit"),
        ("nvmlDeviceGetPowerManagementLimit", "management"),
        ("nvmlDeviceGetPowerManagementDefaultLimit", "default"),
        ("nvmlDeviceGetPowerManagementLimitConstraints", "constraints"),
        ("nvmlDeviceGetTemperature", "temperature"),
        ("nvmlDeviceGetUtilizationRates", "utilization"),
        ("nvmlDeviceGetClockInfo", "clock"),
        ("nvmlDeviceGetCurrentClocksEventReasons", "reasons"),
    ]:
        getattr(fake, fn).side_effect = boards.answer(key)
    monkeypatch.setattr(nvml_module, "pynvml", fake)
    return fake


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def setup(fake_nvml: MagicMock, clock: Clock) -> Iterator[tuple[CollectorRegistry, GpuEnergyReader]]:
    registry = CollectorRegistry()
    reader = GpuEnergyReader(NvmlBackend(), clock=clock, retry_interval_s=10.0)
    registry.register(ExporterCollector([GpuSource(reader, "node-a")]))
    yield registry, reader


def labels(gpu: int, **extra: str) -> dict[str, str]:
    return {"node": "node-a", "gpu": str(gpu), "uuid": UUIDS[gpu], **extra}


def test_every_gpu_metric_in_base_units(setup: tuple[CollectorRegistry, GpuEnergyReader]) -> None:
    registry, _ = setup
    get = registry.get_sample_value
    assert get("eo_gpu_power_watts", labels(0, model=MODEL)) == 350.0
    assert get("eo_gpu_power_watts", labels(1, model=MODEL)) == 450.0
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == 1000.0
    assert get("eo_gpu_info", labels(0, model=MODEL, energy_source="hardware_counter")) == 1.0
    assert get("eo_gpu_power_limit_watts", labels(0)) == 700.0
    assert get("eo_gpu_power_limit_default_watts", labels(0)) == 700.0
    assert get("eo_gpu_power_limit_min_watts", labels(0)) == 200.0
    assert get("eo_gpu_power_limit_max_watts", labels(0)) == 700.0
    assert get("eo_gpu_temperature_celsius", labels(1)) == 61.0
    assert get("eo_gpu_utilization_ratio", labels(0)) == 0.85
    assert get("eo_gpu_sm_clock_hertz", labels(0)) == 1.98e9
    assert get("eo_gpu_clock_event_active", labels(0, reason="sw_power_cap")) == 1.0
    assert get("eo_gpu_clock_event_active", labels(0, reason="sw_thermal_slowdown")) == 1.0
    assert get("eo_gpu_clock_event_active", labels(0, reason="gpu_idle")) == 0.0
    assert get("eo_exporter_collector_up", {"collector": "gpu"}) == 1.0
    assert get("eo_exporter_collect_duration_seconds", {"collector": "gpu"}) >= 0.0


def test_uuids_keep_nvmls_form_and_static_values_are_read_once(
    setup: tuple[CollectorRegistry, GpuEnergyReader], fake_nvml: MagicMock
) -> None:
    registry, reader = setup
    assert [d.uuid for d in reader.devices()] == UUIDS
    for _ in range(3):
        registry.get_sample_value("eo_gpu_power_watts", labels(0, model=MODEL))
    assert fake_nvml.nvmlInit.call_count == 1
    assert fake_nvml.nvmlDeviceGetPowerManagementLimitConstraints.call_count == len(UUIDS)
    assert fake_nvml.nvmlDeviceGetPowerManagementDefaultLimit.call_count == len(UUIDS)
    assert fake_nvml.nvmlDeviceGetPowerUsage.call_count == 3 * len(UUIDS)


def test_not_supported_reading_is_omitted_and_the_rest_published(
    setup: tuple[CollectorRegistry, GpuEnergyReader], boards: Boards
) -> None:
    registry, _ = setup
    # MIG mode: utilization is not reported for the board; clock event reasons neither.
    boards.values["h0"]["utilization"] = pynvml.NVMLError_NotSupported()
    boards.values["h0"]["reasons"] = pynvml.NVMLError_NotSupported()
    get = registry.get_sample_value
    assert get("eo_gpu_utilization_ratio", labels(0)) is None
    assert get("eo_gpu_clock_event_active", labels(0, reason="sw_power_cap")) is None
    assert get("eo_gpu_utilization_ratio", labels(1)) == 0.85
    assert get("eo_gpu_power_watts", labels(0, model=MODEL)) == 350.0
    assert get("eo_exporter_collector_up", {"collector": "gpu"}) == 1.0


def test_gpu_without_energy_counter_integrates_power(
    fake_nvml: MagicMock, boards: Boards, clock: Clock
) -> None:
    for board in boards.values.values():
        board["energy"] = pynvml.NVMLError_NotSupported()  # pre-Volta
    registry = CollectorRegistry()
    registry.register(ExporterCollector([GpuSource(GpuEnergyReader(NvmlBackend(), clock=clock), "node-a")]))
    get = registry.get_sample_value
    assert get("eo_gpu_info", labels(0, model=MODEL, energy_source="integrated_power")) == 1.0
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == 0.0
    clock.t += 10.0
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == pytest.approx(3500.0)
    boards.values["h0"]["power"] = 450_000
    clock.t += 2.0
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == pytest.approx(3500.0 + 800.0)


def test_counter_reset_keeps_the_published_energy_monotonic(
    setup: tuple[CollectorRegistry, GpuEnergyReader], boards: Boards
) -> None:
    registry, reader = setup
    get = registry.get_sample_value
    boards.values["h0"]["energy"] = 5_000_000
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == 5000.0
    boards.values["h0"]["energy"] = 400_000  # driver reloaded: NVML restarted near zero
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == 5400.0
    boards.values["h0"]["energy"] = 900_000
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == 5900.0
    assert reader.read_energy_joules()[UUIDS[0]] == 5900.0


def test_lost_gpu_marks_the_collector_down_and_keeps_the_other_gpu(
    setup: tuple[CollectorRegistry, GpuEnergyReader], boards: Boards, fake_nvml: MagicMock, clock: Clock
) -> None:
    registry, reader = setup
    get = registry.get_sample_value
    assert get("eo_exporter_collector_up", {"collector": "gpu"}) == 1.0
    boards.values["h1"]["temperature"] = pynvml.NVMLError_GpuIsLost()
    assert get("eo_exporter_collector_up", {"collector": "gpu"}) == 0.0
    # Nothing of the lost GPU is published, not even what was read before the failure.
    assert get("eo_gpu_power_watts", labels(1, model=MODEL)) is None
    assert get("eo_gpu_info", labels(1, model=MODEL, energy_source="hardware_counter")) is None
    assert get("eo_gpu_power_watts", labels(0, model=MODEL)) == 350.0
    assert UUIDS[0] in reader.read_energy_joules()

    # After the retry interval the backend is reopened (NVML re-initialised, fresh handles).
    boards.values["h1"]["temperature"] = 70
    clock.t += 11.0
    assert get("eo_exporter_collector_up", {"collector": "gpu"}) == 1.0
    assert fake_nvml.nvmlShutdown.call_count == 1
    assert fake_nvml.nvmlInit.call_count == 2
    assert get("eo_gpu_temperature_celsius", labels(1)) == 70.0


def test_energy_survives_a_driver_reload_through_reopen(
    setup: tuple[CollectorRegistry, GpuEnergyReader], boards: Boards, clock: Clock
) -> None:
    registry, _ = setup
    get = registry.get_sample_value
    boards.values["h0"]["energy"] = 8_000_000
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == 8000.0
    boards.values["h0"]["energy"] = pynvml.NVMLError_GpuIsLost()
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) is None
    boards.values["h0"]["energy"] = 1_000  # reloaded driver, counter restarted
    clock.t += 11.0
    assert get("eo_gpu_energy_joules_total", labels(0, model=MODEL)) == 8001.0


def test_nvml_init_failure_marks_gpu_down_and_keeps_serving(fake_nvml: MagicMock, clock: Clock) -> None:
    fake_nvml.nvmlInit.side_effect = pynvml.NVMLError_LibraryNotFound()

    class Other:
        name = "other"

        def read(self) -> Any:
            return SourceReading((), True)

    registry = CollectorRegistry()
    reader = GpuEnergyReader(NvmlBackend(), clock=clock, retry_interval_s=10.0)
    registry.register(ExporterCollector([GpuSource(reader, "node-a"), Other()]))
    get = registry.get_sample_value
    assert get("eo_exporter_collector_up", {"collector": "gpu"}) == 0.0
    assert get("eo_exporter_collector_up", {"collector": "other"}) == 1.0
    assert get("eo_gpu_power_watts", labels(0, model=MODEL)) is None
    assert reader.read_energy_joules() == {}
    assert fake_nvml.nvmlInit.call_count == 1  # no retry storm before the interval
    fake_nvml.nvmlInit.side_effect = None
    clock.t += 11.0
    assert get("eo_exporter_collector_up", {"collector": "gpu"}) == 1.0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pynvml.NVMLError_NotSupported, GpuNotSupported),
        (pynvml.NVMLError_FunctionNotFound, GpuNotSupported),
        (pynvml.NVMLError_NoPermission, GpuNoPermission),
        (pynvml.NVMLError_GpuIsLost, GpuLost),
        (pynvml.NVMLError_Uninitialized, GpuUnavailable),
        (pynvml.NVMLError_DriverNotLoaded, GpuUnavailable),
        (pynvml.NVMLError_Unknown, GpuError),
    ],
)
def test_nvml_errors_translate_once_from_the_original(
    fake_nvml: MagicMock, error: type[pynvml.NVMLError], expected: type[GpuError]
) -> None:
    gpu = NvmlBackend().devices()[0]
    fake_nvml.nvmlDeviceSetPowerManagementLimit.side_effect = error()
    with pytest.raises(expected) as info:
        gpu.set_power_limit_mw(300_000)
    assert type(info.value) is expected
    assert isinstance(info.value.__cause__, pynvml.NVMLError)


def test_setters_call_nvml(fake_nvml: MagicMock) -> None:
    gpu: GpuDevice = NvmlBackend().devices()[1]
    gpu.set_power_limit_mw(450_000)
    gpu.lock_sm_clocks_mhz(1_200, 1_500)
    gpu.reset_sm_clocks()
    fake_nvml.nvmlDeviceSetPowerManagementLimit.assert_called_once_with("h1", 450_000)
    fake_nvml.nvmlDeviceSetGpuLockedClocks.assert_called_once_with("h1", 1_200, 1_500)
    fake_nvml.nvmlDeviceResetGpuLockedClocks.assert_called_once_with("h1")
    with pytest.raises(GpuNotSupported):
        gpu.lock_sm_clocks_mhz(1_500, 1_200)


def test_supported_clocks_and_static_readings(fake_nvml: MagicMock) -> None:
    fake_nvml.nvmlDeviceGetSupportedMemoryClocks.return_value = [1_593, 877]
    fake_nvml.nvmlDeviceGetSupportedGraphicsClocks.return_value = [1_200, 1_980, 1_500]
    fake_nvml.nvmlDeviceGetMaxClockInfo.return_value = 1_980
    fake_nvml.nvmlDeviceGetTemperatureThreshold.return_value = 87
    gpu = NvmlBackend().devices()[0]
    assert gpu.supported_sm_clocks_mhz() == [1_980, 1_500, 1_200]
    fake_nvml.nvmlDeviceGetSupportedGraphicsClocks.assert_called_once_with("h0", 1_593)
    assert gpu.max_sm_clock_mhz() == 1_980
    assert gpu.slowdown_temperature_c() == 87
    assert isinstance(gpu, GpuDevice)


def test_clock_event_bits_match_pynvml_and_the_reason_names() -> None:
    assert tuple(CLOCK_EVENT_BITS) == CLOCK_EVENT_REASONS
    assert CLOCK_EVENT_BITS["sw_power_cap"] == pynvml.nvmlClocksEventReasonSwPowerCap
    assert CLOCK_EVENT_BITS["hw_thermal_slowdown"] == pynvml.nvmlClocksThrottleReasonHwThermalSlowdown
    assert CLOCK_EVENT_BITS["display_clock_setting"] == pynvml.nvmlClocksEventReasonDisplayClockSetting
    assert reasons_from_bitmask(0x1 | 0x80) == {"gpu_idle", "hw_power_brake_slowdown"}
    assert reasons_from_bitmask(0) == frozenset()


def test_older_binding_falls_back_to_throttle_reasons(fake_nvml: MagicMock) -> None:
    del fake_nvml.nvmlDeviceGetCurrentClocksEventReasons
    fake_nvml.nvmlDeviceGetCurrentClocksThrottleReasons.return_value = 0x40
    gpu = NvmlBackend().devices()[0]
    assert gpu.clock_event_reasons() == {"hw_thermal_slowdown"}


def test_enforced_and_management_limits_are_read_apart(fake_nvml: MagicMock, boards: Boards) -> None:
    """The sidecar sets and restores the management limit; the enforced one may be lower."""
    boards.values["h0"]["limit"] = 450_000  # another limit in force holds the GPU lower
    backend = nvml_module.NvmlBackend()
    try:
        device = backend.devices()[0]
        assert device.power_limit_mw() == 450_000
        assert device.power_management_limit_mw() == 700_000
    finally:
        backend.close()
