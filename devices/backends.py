"""Opening the GPU backend a GPU-writing daemon (eo-powercap, eo-node-agent) was told to use."""

from __future__ import annotations

import importlib
from typing import Literal

from devices.base import GpuBackend, GpuError, GpuUnavailable
from devices.simulated import SimulatedBackend, SimulatedGpu


def open_backend(
    kind: Literal["nvml", "simulated"], simulated_gpus: int = 1, simulated_unprivileged: bool = False
) -> GpuBackend:
    """NVML, or ``simulated_gpus`` simulated GPUs (refusing setters, as without CAP_SYS_ADMIN, when
    ``simulated_unprivileged``). Raises ``GpuUnavailable`` saying why NVML cannot be used."""
    if kind == "simulated":
        gpus = [SimulatedGpu(i, privileged=not simulated_unprivileged) for i in range(simulated_gpus)]
        return SimulatedBackend(gpus)
    try:
        # Imported only when asked for: NVML needs the driver's library, the simulated path must not.
        nvml = importlib.import_module("devices.nvml")
        backend: GpuBackend = nvml.NvmlBackend()
    except (ImportError, AttributeError) as exc:
        raise GpuUnavailable(f"the NVML backend is not available in this build: {exc}") from exc
    except GpuError as exc:
        raise GpuUnavailable(f"cannot use NVML (driver or GPU missing?): {exc}") from exc
    return backend
