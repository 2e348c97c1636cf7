"""The GPU interface every consumer codes against, and the project's own GPU errors.

Units live in the names (``_mw``, ``_mj``, ``_mhz``, ``_c``): values stay in the vendor's units here and
are converted to base units only where metrics are published. Vendor errors are translated once, in
the backend, into the exceptions below (raised ``from`` the original).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class GpuError(Exception):
    """Any failure talking to a GPU."""


class GpuNotSupported(GpuError):
    """The GPU or driver does not offer this reading or setting."""


class GpuNoPermission(GpuError):
    """The call needs privileges this process lacks (root / CAP_SYS_ADMIN to set limits or clocks)."""


class GpuLost(GpuError):
    """The GPU fell off the bus or the driver lost it; every later call will fail too."""


class GpuUnavailable(GpuError):
    """The management library could not be loaded or initialised (no driver, no GPU)."""


# Clock-event ("throttle") reasons, named as they appear in the `reason` label.
CLOCK_EVENT_REASONS: tuple[str, ...] = (
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
)


@dataclass(frozen=True)
class ClockLock:
    """Locked SM clock range in MHz; ``None`` in a field means that side is not locked."""

    min_mhz: int
    max_mhz: int


def clock_range(min_mhz: int, max_mhz: int) -> ClockLock:
    """The SM clock range to lock to; ``GpuNotSupported`` where it is empty (every backend refuses an
    empty range the same way, before anything reaches the GPU)."""
    if min_mhz > max_mhz:
        raise GpuNotSupported(f"locked clock range {min_mhz}..{max_mhz} MHz is empty")
    return ClockLock(min_mhz, max_mhz)


class GpuIdentity:
    """The part of a ``GpuDevice`` fixed when the GPU is opened: its index, UUID and product name. The
    backends' devices inherit it."""

    def __init__(self, index: int, uuid: str, name: str) -> None:
        self._index = index
        self._uuid = uuid
        self._name = name

    @property
    def index(self) -> int:
        return self._index

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def name(self) -> str:
        return self._name


@runtime_checkable
class GpuDevice(Protocol):
    """One physical GPU (a MIG-partitioned board counts once: power is per board)."""

    @property
    def index(self) -> int: ...
    @property
    def uuid(self) -> str:
        """NVML's ``GPU-…`` form, so joins with dcgm-exporter series work."""
        ...

    @property
    def name(self) -> str: ...

    def power_usage_mw(self) -> int:
        """Board power draw in milliwatts (NVML averages over ~1 s on Ampere and newer)."""
        ...

    def total_energy_mj(self) -> int:
        """Energy in millijoules since the driver was loaded. Raises GpuNotSupported before Volta."""
        ...

    def power_limit_mw(self) -> int:
        """Enforced power limit in milliwatts (the lowest of all limits in force)."""
        ...

    def power_management_limit_mw(self) -> int:
        """The power management limit in milliwatts: what ``set_power_limit_mw`` writes. The enforced
        limit can be lower (another limit in force), so setting and restoring go by this one."""
        ...

    def power_limit_default_mw(self) -> int: ...
    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """(min, max) settable power management limit in milliwatts."""
        ...

    def temperature_c(self) -> int: ...
    def slowdown_temperature_c(self) -> int:
        """Temperature in °C at which the GPU starts slowing itself down."""
        ...

    def utilization_percent(self) -> int:
        """Share of the last sample period in which a kernel ran, 0..100."""
        ...

    def sm_clock_mhz(self) -> int: ...
    def max_sm_clock_mhz(self) -> int: ...
    def supported_sm_clocks_mhz(self) -> Sequence[int]:
        """SM clocks the GPU accepts for locking, highest first."""
        ...

    def clock_event_reasons(self) -> frozenset[str]:
        """Active clock-event reasons, a subset of CLOCK_EVENT_REASONS."""
        ...

    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set the power management limit. Raises GpuNoPermission without root."""
        ...

    def lock_sm_clocks_mhz(self, min_mhz: int, max_mhz: int) -> None: ...
    def reset_sm_clocks(self) -> None:
        """Undo lock_sm_clocks_mhz: the GPU chooses its clocks again."""
        ...


class GpuBackend(Protocol):
    """Opens and closes the management library and lists its devices."""

    def devices(self) -> Sequence[GpuDevice]:
        """Every visible GPU. Raises GpuUnavailable when the library cannot be used."""
        ...

    def close(self) -> None: ...
