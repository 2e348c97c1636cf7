"""GPU readings at scrape time: the monotonic energy reader (shared with pod attribution) and the
``gpu`` source that publishes the ``eo_gpu_*`` families.

Energy per GPU comes from the hardware counter (``nvmlDeviceGetTotalEnergyConsumption``, Volta and
newer) when the GPU answers it at discovery, else from board power integrated between reads; which
one is published in ``eo_gpu_info{energy_source}``. Either way the total goes through a
``ResettableCounter`` kept per UUID for the life of the process, so it never goes backwards, not even
across a driver reload (the backend is reopened, the UUID finds its old counter).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from devices.base import (
    CLOCK_EVENT_REASONS,
    GpuBackend,
    GpuDevice,
    GpuError,
    GpuLost,
    GpuNoPermission,
    GpuNotSupported,
    GpuUnavailable,
)
from exporter.collector import OnceLog, SourceReading
from exporter.counters import PowerIntegrator, ResettableCounter

log = logging.getLogger(__name__)

HARDWARE_COUNTER = "hardware_counter"
INTEGRATED_POWER = "integrated_power"

_FATAL = (GpuLost, GpuUnavailable)
"""Errors after which the device list is stale: the backend is reopened after the retry interval."""


@dataclass
class _GpuState:
    """What the exporter keeps per GPU UUID: the energy counter and the values that never change."""

    energy_source: str
    model: str
    counter: ResettableCounter = field(default_factory=ResettableCounter)
    integrator: PowerIntegrator = field(default_factory=PowerIntegrator)
    default_limit_mw: int | None = None
    limit_constraints_mw: tuple[int, int] | None = None


class GpuEnergyReader:
    """Thread-safe access to every GPU and its monotonic energy in joules.

    ``read_energy_joules`` is what pod attribution calls at the instant it samples the inference
    servers' counters (it codes against ``Callable[[], Mapping[str, float]]``).
    """

    def __init__(
        self,
        backend: GpuBackend,
        clock: Callable[[], float] = time.monotonic,
        retry_interval_s: float = 10.0,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._retry_interval_s = retry_interval_s
        self._lock = threading.RLock()
        self._devices: list[GpuDevice] | None = None
        self._states: dict[str, _GpuState] = {}
        self._retry_at = 0.0
        self._reopen_at: float | None = None

    # -- device list -------------------------------------------------------------------------------
    def devices(self) -> Sequence[GpuDevice]:
        """Every GPU. Raises GpuUnavailable while the backend cannot be opened (retried later)."""
        with self._lock:
            now = self._clock()
            if self._reopen_at is not None and now >= self._reopen_at:
                log.info("reopening the GPU backend after a lost GPU or driver error")
                self._reopen_at = None
                self._devices = None
                self._backend.close()
            if self._devices is None:
                if now < self._retry_at:
                    wait_s = self._retry_at - now
                    raise GpuUnavailable(f"GPU backend unavailable; next retry in {wait_s:.0f} s")
                try:
                    devices = list(self._backend.devices())
                    for dev in devices:
                        self._state(dev)
                except GpuError:
                    self._retry_at = now + self._retry_interval_s
                    raise
                self._devices = devices
                log.info("GPU backend open: %d GPU(s) %s", len(devices), [d.uuid for d in devices])
            return self._devices

    def mark_broken(self) -> None:
        """A GPU was lost or the driver failed: reopen the backend at the next read after the interval."""
        with self._lock:
            if self._reopen_at is None:
                self._reopen_at = self._clock() + self._retry_interval_s

    def _state(self, dev: GpuDevice) -> _GpuState:
        state = self._states.get(dev.uuid)
        if state is not None:
            return state
        try:
            dev.total_energy_mj()
            source = HARDWARE_COUNTER
        except GpuNotSupported:
            source = INTEGRATED_POWER
        state = _GpuState(energy_source=source, model=dev.name)
        with contextlib.suppress(GpuNotSupported, GpuNoPermission):
            state.default_limit_mw = dev.power_limit_default_mw()
        with contextlib.suppress(GpuNotSupported, GpuNoPermission):
            state.limit_constraints_mw = dev.power_limit_constraints_mw()
        self._states[dev.uuid] = state
        return state

    def state(self, dev: GpuDevice) -> _GpuState:
        with self._lock:
            return self._state(dev)

    # -- energy ------------------------------------------------------------------------------------
    def energy_joules(self, dev: GpuDevice, power_mw: float | None = None) -> float:
        """Monotonic energy of ``dev`` in joules; ``power_mw`` saves a read when integrating power."""
        with self._lock:
            state = self._state(dev)
            if state.energy_source == HARDWARE_COUNTER:
                return state.counter.update(dev.total_energy_mj()) / 1000.0
            power = dev.power_usage_mw() if power_mw is None else power_mw
            joules = state.integrator.update(self._clock(), power / 1000.0)
            return state.counter.update(joules)

    def read_energy_joules(self) -> dict[str, float]:
        """Every readable GPU's monotonic energy in joules, keyed by UUID (unreadable ones left out)."""
        with self._lock:
            try:
                devices = self.devices()
            except GpuError:
                return {}
            out: dict[str, float] = {}
            for dev in devices:
                try:
                    out[dev.uuid] = self.energy_joules(dev)
                except _FATAL:
                    self.mark_broken()
                except GpuError:
                    pass
            return out


class _Families:
    """The GPU metric families of one scrape."""

    def __init__(self) -> None:
        base = ["node", "gpu", "uuid"]
        with_model = [*base, "model"]
        self.info = GaugeMetricFamily(
            "eo_gpu_info",
            "1 per GPU; energy_source says whether eo_gpu_energy_joules_total is the GPU's hardware "
            "energy counter (hardware_counter) or board power integrated between reads (integrated_power).",
            labels=[*with_model, "energy_source"],
        )
        self.power = GaugeMetricFamily(
            "eo_gpu_power_watts",
            "Board power draw in watts (whole board, also in MIG mode).",
            labels=with_model,
        )
        self.energy = CounterMetricFamily(
            "eo_gpu_energy_joules",
            "Board energy in joules; monotonic across driver counter resets and reloads.",
            labels=with_model,
        )
        self.limit = GaugeMetricFamily(
            "eo_gpu_power_limit_watts", "Enforced power limit in watts (lowest limit in force).", labels=base
        )
        self.limit_default = GaugeMetricFamily(
            "eo_gpu_power_limit_default_watts", "Default power management limit in watts.", labels=base
        )
        self.limit_min = GaugeMetricFamily(
            "eo_gpu_power_limit_min_watts", "Lowest settable power management limit in watts.", labels=base
        )
        self.limit_max = GaugeMetricFamily(
            "eo_gpu_power_limit_max_watts", "Highest settable power management limit in watts.", labels=base
        )
        self.temperature = GaugeMetricFamily(
            "eo_gpu_temperature_celsius", "GPU die temperature in degrees Celsius.", labels=base
        )
        self.utilization = GaugeMetricFamily(
            "eo_gpu_utilization_ratio",
            "Share of the last sample period in which a kernel ran, 0..1.",
            labels=base,
        )
        self.sm_clock = GaugeMetricFamily("eo_gpu_sm_clock_hertz", "Current SM clock in hertz.", labels=base)
        self.clock_event = GaugeMetricFamily(
            "eo_gpu_clock_event_active",
            "1 while the clock-event (throttle) reason holds the GPU's clocks down, else 0.",
            labels=[*base, "reason"],
        )

    def __iter__(self) -> Iterator[Metric]:
        return iter(
            (
                self.info,
                self.power,
                self.energy,
                self.limit,
                self.limit_default,
                self.limit_min,
                self.limit_max,
                self.temperature,
                self.utilization,
                self.sm_clock,
                self.clock_event,
            )
        )


_Staged = list[tuple[GaugeMetricFamily | CounterMetricFamily, list[str], float]]


class GpuSource:
    """The ``gpu`` collector: every ``eo_gpu_*`` family, read at scrape time."""

    name = "gpu"

    def __init__(self, reader: GpuEnergyReader, node: str) -> None:
        self._reader = reader
        self._node = node
        self._once = OnceLog(log)

    def read(self) -> SourceReading:
        try:
            devices = self._reader.devices()
        except GpuError as err:
            self._once(("gpu-down", type(err)), logging.WARNING, "GPU collector down: %s", err)
            return SourceReading((), False)
        fams = _Families()
        up = True
        for dev in devices:
            # A GPU's samples are staged and committed only if it was not lost halfway through.
            staged: _Staged = []
            try:
                self._read_one(dev, fams, staged)
            except _FATAL as err:
                log.warning("GPU %s (%s) unreadable, its series are omitted: %s", dev.index, dev.uuid, err)
                self._reader.mark_broken()
                up = False
                continue
            for family, labels, value in staged:
                family.add_metric(labels, value)
        return SourceReading(list(fams), up)

    def _not_available(self, dev: GpuDevice, what: str, err: GpuError) -> None:
        self._once((dev.uuid, what), logging.INFO, "GPU %s: %s not available (%s)", dev.uuid, what, err)

    def _read_one(self, dev: GpuDevice, fams: _Families, out: _Staged) -> None:
        state = self._reader.state(dev)
        base = [self._node, str(dev.index), dev.uuid]
        with_model = [*base, state.model]

        def optional(what: str, read: Callable[[], float]) -> float | None:
            # A reading this GPU or driver does not offer is left out; the rest is still published.
            try:
                return read()
            except (GpuNotSupported, GpuNoPermission) as err:
                self._not_available(dev, what, err)
                return None

        out.append((fams.info, [*with_model, state.energy_source], 1.0))
        power_mw = optional("power", dev.power_usage_mw)
        if power_mw is not None:
            out.append((fams.power, with_model, power_mw / 1000.0))
        energy_j = optional("energy", lambda: self._reader.energy_joules(dev, power_mw))
        if energy_j is not None:
            out.append((fams.energy, with_model, energy_j))
        limit_mw = optional("power limit", dev.power_limit_mw)
        if limit_mw is not None:
            out.append((fams.limit, base, limit_mw / 1000.0))
        if state.default_limit_mw is not None:
            out.append((fams.limit_default, base, state.default_limit_mw / 1000.0))
        if state.limit_constraints_mw is not None:
            low, high = state.limit_constraints_mw
            out.append((fams.limit_min, base, low / 1000.0))
            out.append((fams.limit_max, base, high / 1000.0))
        temperature = optional("temperature", dev.temperature_c)
        if temperature is not None:
            out.append((fams.temperature, base, float(temperature)))
        utilization = optional("utilization", dev.utilization_percent)
        if utilization is not None:
            out.append((fams.utilization, base, utilization / 100.0))
        clock_mhz = optional("SM clock", dev.sm_clock_mhz)
        if clock_mhz is not None:
            out.append((fams.sm_clock, base, clock_mhz * 1e6))
        try:
            reasons = dev.clock_event_reasons()
        except (GpuNotSupported, GpuNoPermission) as err:
            self._not_available(dev, "clock event reasons", err)
        else:
            for reason in CLOCK_EVENT_REASONS:
                out.append((fams.clock_event, [*base, reason], 1.0 if reason in reasons else 0.0))
