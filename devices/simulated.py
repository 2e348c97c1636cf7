"""A simulated GPU that follows the calibrated model in ``gpumodel``.

It implements the same interface as the NVML device, so the exporter, the power-cap sidecar, the demo
and the tests run without a GPU. Its load (the running batch) comes from an injected callable; its
energy counter integrates the modelled power exactly between reads, and its temperature follows a
first-order thermal model, so caps, clock locks and thermal guards have something real to act on.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence

from devices.base import ClockLock, GpuError, GpuIdentity, GpuNoPermission, GpuNotSupported, clock_range
from gpumodel import H100_LLAMA_8B, ServerProfile, operating_point

AMBIENT_C = 30.0
# °C per watt above ambient at steady state, and the time constant (s): an air-cooled H100 SXM sits
# near 35 °C idle and 70-75 °C at 700 W.
THERMAL_RESISTANCE_C_PER_W = 0.064
THERMAL_TIME_CONSTANT_S = 30.0
SLOWDOWN_C = 87


def idle_load() -> float:
    return 0.0


class SimulatedGpu(GpuIdentity):
    """One simulated GPU serving ``profile`` (whose figures are divided by its ``num_gpus``)."""

    def __init__(
        self,
        index: int,
        profile: ServerProfile = H100_LLAMA_8B,
        load: Callable[[], float] = idle_load,
        clock: Callable[[], float] = time.monotonic,
        uuid: str | None = None,
        privileged: bool = True,
    ) -> None:
        uuid = uuid or f"GPU-5e1a0000-0000-4000-8000-{index:012d}"
        super().__init__(index, uuid, f"{profile.gpu_model} (simulated)")
        self._profile = profile
        self._load = load
        self._clock = clock
        self._privileged = privileged
        self._lock = threading.Lock()
        per_gpu = 1.0 / profile.num_gpus
        self._scale = per_gpu
        self._limit_mw = int(profile.power_limit_default_w * per_gpu * 1000)
        self._other_limit_mw: int | None = None
        self._clock_lock: ClockLock | None = None
        self._last_t = clock()
        self._energy_mj = 0.0
        self._temperature_c = AMBIENT_C + THERMAL_RESISTANCE_C_PER_W * profile.idle_power_w * per_gpu
        self._fault: GpuError | None = None
        self._batch = 0.0
        self._set_calls: list[tuple[str, int]] = []

    # -- test and demo hooks -------------------------------------------------------------------------
    def inject_fault(self, fault: GpuError | None) -> None:
        """Make every later call raise ``fault`` (None clears it): GPU lost, driver gone, ..."""
        self._fault = fault

    def set_load(self, load: Callable[[], float]) -> None:
        self._load = load

    @property
    def locked_sm_clock_mhz(self) -> int | None:
        """The upper end of the locked SM clock range, None when clocks are not locked."""
        return self._clock_lock.max_mhz if self._clock_lock else None

    @property
    def set_calls(self) -> list[tuple[str, int]]:
        """Every setter call so far as (what, value): lets tests prove a dry run set nothing."""
        return list(self._set_calls)

    # -- model ---------------------------------------------------------------------------------------
    def _point(self, batch: float) -> tuple[float, float, bool]:
        cap_w = self._enforced_mw() / 1000 / self._scale
        locked = self._clock_lock.max_mhz if self._clock_lock else None
        op = operating_point(self._profile, batch, power_cap_w=cap_w, locked_clock_mhz=locked)
        return op.power_w * self._scale, op.clock_ratio, op.power_capped

    def _advance(self) -> None:
        """Integrate energy and temperature up to now, at the batch seen on the previous read."""
        if self._fault is not None:
            raise self._fault
        now = self._clock()
        dt = max(now - self._last_t, 0.0)
        power_w, _, _ = self._point(self._batch)
        self._energy_mj += power_w * dt * 1000
        target_c = AMBIENT_C + THERMAL_RESISTANCE_C_PER_W * power_w
        self._temperature_c = target_c + (self._temperature_c - target_c) * math.exp(
            -dt / THERMAL_TIME_CONSTANT_S
        )
        self._last_t = now
        self._batch = max(float(self._load()), 0.0)

    # -- GpuDevice (index, uuid and name: GpuIdentity) -----------------------------------------------
    def power_usage_mw(self) -> int:
        with self._lock:
            self._advance()
            return int(self._point(self._batch)[0] * 1000)

    def total_energy_mj(self) -> int:
        with self._lock:
            self._advance()
            return int(self._energy_mj)

    def power_limit_mw(self) -> int:
        with self._lock:
            self._advance()
            return self._enforced_mw()

    def power_management_limit_mw(self) -> int:
        with self._lock:
            return self._limit_mw

    def set_other_limit_mw(self, limit_mw: int | None) -> None:
        """Another limit in force besides the management limit (a test hook: e.g. a board or rack cap
        set outside NVML's management limit); the enforced limit is the lower of the two."""
        with self._lock:
            self._advance()
            self._other_limit_mw = limit_mw

    def _enforced_mw(self) -> int:
        other = self._other_limit_mw
        return self._limit_mw if other is None else min(self._limit_mw, other)

    def power_limit_default_mw(self) -> int:
        return int(self._profile.power_limit_default_w * self._scale * 1000)

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        return (
            int(self._profile.power_limit_min_w * self._scale * 1000),
            int(self._profile.power_limit_max_w * self._scale * 1000),
        )

    def temperature_c(self) -> int:
        with self._lock:
            self._advance()
            return round(self._temperature_c)

    def slowdown_temperature_c(self) -> int:
        return SLOWDOWN_C

    def utilization_percent(self) -> int:
        with self._lock:
            self._advance()
            return 100 if self._batch > 0 else 0

    def sm_clock_mhz(self) -> int:
        with self._lock:
            self._advance()
            if self._batch <= 0:
                return self._profile.min_sm_clock_mhz
            return round(self._point(self._batch)[1] * self._profile.max_sm_clock_mhz)

    def max_sm_clock_mhz(self) -> int:
        return self._profile.max_sm_clock_mhz

    def supported_sm_clocks_mhz(self) -> Sequence[int]:
        top, bottom = self._profile.max_sm_clock_mhz, self._profile.min_sm_clock_mhz
        return list(range(top, bottom - 1, -15))

    def clock_event_reasons(self) -> frozenset[str]:
        with self._lock:
            self._advance()
            reasons: set[str] = set()
            if self._batch <= 0:
                reasons.add("gpu_idle")
            elif self._point(self._batch)[2]:
                reasons.add("sw_power_cap")
            if self._clock_lock is not None:
                reasons.add("applications_clocks_setting")
            if self._temperature_c >= SLOWDOWN_C:
                reasons.add("sw_thermal_slowdown")
            return frozenset(reasons)

    def set_power_limit_mw(self, limit_mw: int) -> None:
        with self._lock:
            self._advance()
            self._check_privileged()
            low, high = self.power_limit_constraints_mw()
            if not low <= limit_mw <= high:
                raise GpuNotSupported(f"power limit {limit_mw} mW outside [{low}, {high}] mW")
            self._set_calls.append(("power_limit_mw", limit_mw))
            self._limit_mw = limit_mw

    def lock_sm_clocks_mhz(self, min_mhz: int, max_mhz: int) -> None:
        with self._lock:
            self._advance()
            self._check_privileged()
            lock = clock_range(min_mhz, max_mhz)
            self._set_calls.append(("lock_sm_clocks_mhz", max_mhz))
            self._clock_lock = lock

    def reset_sm_clocks(self) -> None:
        with self._lock:
            self._advance()
            self._check_privileged()
            self._set_calls.append(("reset_sm_clocks", 0))
            self._clock_lock = None

    def _check_privileged(self) -> None:
        if not self._privileged:
            raise GpuNoPermission("setting limits or clocks needs root (CAP_SYS_ADMIN)")


class SimulatedBackend:
    """``count`` simulated GPUs, each with its own load callable."""

    def __init__(self, gpus: Sequence[SimulatedGpu]) -> None:
        self._gpus = list(gpus)

    def devices(self) -> Sequence[SimulatedGpu]:
        return self._gpus

    def close(self) -> None:
        return None
