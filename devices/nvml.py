"""Real GPUs through NVML (``pynvml`` from NVIDIA's ``nvidia-ml-py``).

Thin adapter: each method is one NVML call plus a unit-preserving conversion. NVML errors are
translated once, by ``_ERRORS`` below, into the project's ``GpuError`` family (raised ``from`` the
original). Static facts (name, UUID, power-limit constraints, default limit, slowdown temperature,
max SM clock) are read once and cached, so a scrape costs only the calls whose values change.

MIG: ``nvmlDeviceGetCount`` and ``nvmlDeviceGetHandleByIndex`` enumerate physical GPUs only (MIG
instances need ``nvmlDeviceGetMigDeviceHandleByIndex``), so a partitioned board is one device here and
its power and energy are the whole board's; per-instance calls such as utilization may answer
NOT_SUPPORTED and are then omitted by the collector.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pynvml

# The exception class and error codes are imported by name, so tests that replace the ``pynvml``
# module at this import site with an autospec fake still catch and translate real NVML errors.
from pynvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_FUNCTION_NOT_FOUND,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NO_PERMISSION,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_RESET_REQUIRED,
    NVML_ERROR_UNINITIALIZED,
    NVMLError,
)

from devices.base import (
    CLOCK_EVENT_REASONS,
    GpuError,
    GpuIdentity,
    GpuLost,
    GpuNoPermission,
    GpuNotSupported,
    GpuUnavailable,
    clock_range,
)

T = TypeVar("T")

# The one translation table from NVML return codes to our exceptions; anything else is a GpuError.
_ERRORS: dict[int, type[GpuError]] = {
    NVML_ERROR_NOT_SUPPORTED: GpuNotSupported,
    NVML_ERROR_FUNCTION_NOT_FOUND: GpuNotSupported,  # the installed driver predates the call
    NVML_ERROR_NO_PERMISSION: GpuNoPermission,
    NVML_ERROR_GPU_IS_LOST: GpuLost,
    NVML_ERROR_RESET_REQUIRED: GpuLost,
    NVML_ERROR_UNINITIALIZED: GpuUnavailable,
    NVML_ERROR_LIBRARY_NOT_FOUND: GpuUnavailable,
    NVML_ERROR_DRIVER_NOT_LOADED: GpuUnavailable,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: GpuUnavailable,
}

# NVML's clock-event reason bits (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*; the values
# are the same in both namings), in the order of CLOCK_EVENT_REASONS.
CLOCK_EVENT_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}
assert tuple(CLOCK_EVENT_BITS) == CLOCK_EVENT_REASONS


def translate(err: NVMLError, what: str) -> GpuError:
    """The project's exception for an NVML error (the caller raises it ``from err``)."""
    code = int(getattr(err, "value", -1))
    return _ERRORS.get(code, GpuError)(f"{what}: {err}")


def _nvml(fn: Callable[..., T], what: str, *args: Any) -> T:
    try:
        return fn(*args)
    except NVMLError as err:
        raise translate(err, what) from err


def reasons_from_bitmask(mask: int) -> frozenset[str]:
    return frozenset(name for name, bit in CLOCK_EVENT_BITS.items() if mask & bit)


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str; very old pynvml releases returned bytes.
    return value.decode() if isinstance(value, bytes) else value


class NvmlGpu(GpuIdentity):
    """One physical GPU behind an NVML handle."""

    def __init__(self, index: int, handle: Any) -> None:
        uuid = _text(_nvml(pynvml.nvmlDeviceGetUUID, "uuid", handle))
        super().__init__(index, uuid, _text(_nvml(pynvml.nvmlDeviceGetName, "name", handle)))
        self._handle = handle

    def power_usage_mw(self) -> int:
        return int(_nvml(pynvml.nvmlDeviceGetPowerUsage, "power usage", self._handle))

    def total_energy_mj(self) -> int:
        return int(_nvml(pynvml.nvmlDeviceGetTotalEnergyConsumption, "total energy", self._handle))

    def power_limit_mw(self) -> int:
        return int(_nvml(pynvml.nvmlDeviceGetEnforcedPowerLimit, "enforced power limit", self._handle))

    def power_management_limit_mw(self) -> int:
        fn = pynvml.nvmlDeviceGetPowerManagementLimit
        return int(_nvml(fn, "power management limit", self._handle))

    @functools.cached_property
    def _default_limit_mw(self) -> int:
        fn = pynvml.nvmlDeviceGetPowerManagementDefaultLimit
        return int(_nvml(fn, "default power limit", self._handle))

    def power_limit_default_mw(self) -> int:
        return self._default_limit_mw

    @functools.cached_property
    def _constraints_mw(self) -> tuple[int, int]:
        fn = pynvml.nvmlDeviceGetPowerManagementLimitConstraints
        low, high = _nvml(fn, "power limit constraints", self._handle)
        return int(low), int(high)

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        return self._constraints_mw

    def temperature_c(self) -> int:
        fn = pynvml.nvmlDeviceGetTemperature
        return int(_nvml(fn, "temperature", self._handle, pynvml.NVML_TEMPERATURE_GPU))

    @functools.cached_property
    def _slowdown_c(self) -> int:
        fn = pynvml.nvmlDeviceGetTemperatureThreshold
        threshold = pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
        return int(_nvml(fn, "slowdown temperature", self._handle, threshold))

    def slowdown_temperature_c(self) -> int:
        return self._slowdown_c

    def utilization_percent(self) -> int:
        rates = _nvml(pynvml.nvmlDeviceGetUtilizationRates, "utilization", self._handle)
        return int(rates.gpu)

    def sm_clock_mhz(self) -> int:
        return int(_nvml(pynvml.nvmlDeviceGetClockInfo, "SM clock", self._handle, pynvml.NVML_CLOCK_SM))

    @functools.cached_property
    def _max_sm_clock_mhz(self) -> int:
        fn = pynvml.nvmlDeviceGetMaxClockInfo
        return int(_nvml(fn, "max SM clock", self._handle, pynvml.NVML_CLOCK_SM))

    def max_sm_clock_mhz(self) -> int:
        return self._max_sm_clock_mhz

    def supported_sm_clocks_mhz(self) -> Sequence[int]:
        # Graphics clocks are listed per memory clock; the highest memory clock is the one in use
        # while serving.
        mem = _nvml(pynvml.nvmlDeviceGetSupportedMemoryClocks, "memory clocks", self._handle)
        if not mem:
            raise GpuNotSupported("no supported memory clocks reported")
        fn = pynvml.nvmlDeviceGetSupportedGraphicsClocks
        clocks = _nvml(fn, "graphics clocks", self._handle, max(mem))
        return sorted((int(c) for c in clocks), reverse=True)

    def clock_event_reasons(self) -> frozenset[str]:
        # nvidia-ml-py renamed "throttle reasons" to "clocks event reasons" (driver 535); keep both.
        fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if fn is None:
            fn = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return reasons_from_bitmask(int(_nvml(fn, "clock event reasons", self._handle)))

    def set_power_limit_mw(self, limit_mw: int) -> None:
        fn = pynvml.nvmlDeviceSetPowerManagementLimit
        _nvml(fn, f"set power limit {limit_mw} mW", self._handle, int(limit_mw))

    def lock_sm_clocks_mhz(self, min_mhz: int, max_mhz: int) -> None:
        lock = clock_range(min_mhz, max_mhz)
        fn = pynvml.nvmlDeviceSetGpuLockedClocks
        what = f"lock SM clocks {lock.min_mhz}..{lock.max_mhz} MHz"
        _nvml(fn, what, self._handle, int(lock.min_mhz), int(lock.max_mhz))

    def reset_sm_clocks(self) -> None:
        _nvml(pynvml.nvmlDeviceResetGpuLockedClocks, "reset locked clocks", self._handle)


class NvmlBackend:
    """Initialises NVML on first use and lists the physical GPUs; ``close()`` shuts NVML down.

    After ``close()`` the next ``devices()`` initialises NVML again and opens fresh handles: the
    exporter does this after a GPU is lost or the driver is reloaded.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: list[NvmlGpu] | None = None

    def devices(self) -> Sequence[NvmlGpu]:
        with self._lock:
            if self._devices is None:
                _nvml(pynvml.nvmlInit, "NVML init")
                try:
                    count = int(_nvml(pynvml.nvmlDeviceGetCount, "device count"))
                    self._devices = [
                        NvmlGpu(i, _nvml(pynvml.nvmlDeviceGetHandleByIndex, f"GPU {i} handle", i))
                        for i in range(count)
                    ]
                except GpuError:
                    self._shutdown()
                    raise
            return self._devices

    def close(self) -> None:
        with self._lock:
            if self._devices is not None:
                self._devices = None
                self._shutdown()

    @staticmethod
    def _shutdown() -> None:
        # Shutting down a library that already lost its driver: nothing is left to release.
        with contextlib.suppress(NVMLError):
            pynvml.nvmlShutdown()
