"""Pure counter arithmetic: energy counters that never go backwards, and power integrated over time.

No I/O and no clock here: callers pass raw readings and timestamps, so the rules are tested directly.

The rules:

* ``ResettableCounter`` (GPU energy, NVML mJ since the driver was loaded). NVML's counter restarts at
  zero when the driver is reloaded or the GPU is reset. When a raw reading is lower than the previous
  one, the counter was reset in between, and the new raw value is the growth since that reset: the
  published total grows by the new raw value (energy spent between the last read before the reset and
  the reset itself is lost, a few seconds at most). So the published total never decreases.
* ``WrappingCounter`` (RAPL ``energy_uj``). The register wraps at ``max_energy_range_uj``; a decrease
  means exactly one wrap, so the growth is ``raw + range - previous``. Readings are taken at every
  scrape (seconds apart), far below the wrap period (tens of minutes at server package power).
* ``PowerIntegrator`` (GPUs without a hardware energy counter). Trapezoidal integration of power
  samples; the first sample only starts the clock.
"""

from __future__ import annotations


class _MonotonicCounter:
    """A monotonic total built from a raw counter; what a decrease means is the subclass's rule."""

    def __init__(self) -> None:
        self._last_raw: float | None = None
        self._total = 0.0

    @property
    def total(self) -> float:
        return self._total

    def update(self, raw: float) -> float:
        """Feed a raw reading; return the monotonic total (in the raw reading's unit)."""
        if self._last_raw is None:
            # Start from the raw value, so a fresh exporter publishes what the hardware counter says.
            self._total = raw
        elif raw >= self._last_raw:
            self._total += raw - self._last_raw
        else:
            self._total += self._growth_after_decrease(raw, self._last_raw)
        self._last_raw = raw
        return self._total

    def _growth_after_decrease(self, raw: float, last_raw: float) -> float:
        raise NotImplementedError


class ResettableCounter(_MonotonicCounter):
    """A monotonic total built from a raw counter that may restart at zero."""

    def update(self, raw: float) -> float:
        if raw < 0:
            raise ValueError(f"raw counter reading must be >= 0, got {raw}")
        return super().update(raw)

    def _growth_after_decrease(self, raw: float, last_raw: float) -> float:
        return raw  # restarted at zero since the last read: all of it is new


class WrappingCounter(_MonotonicCounter):
    """A monotonic total built from a raw counter that wraps to zero at ``max_range``."""

    def __init__(self, max_range: float) -> None:
        if max_range <= 0:
            raise ValueError(f"max_range must be > 0, got {max_range}")
        super().__init__()
        self._max_range = max_range

    def _growth_after_decrease(self, raw: float, last_raw: float) -> float:
        return raw + self._max_range - last_raw  # exactly one wrap since the last read


class PowerIntegrator:
    """Energy in joules from power samples in watts taken at ``t_s`` seconds (any monotonic origin)."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None
        self._joules = 0.0

    @property
    def joules(self) -> float:
        return self._joules

    def update(self, t_s: float, power_w: float) -> float:
        """Add the trapezoid since the previous sample; return the total in joules."""
        if self._last is not None:
            last_t, last_w = self._last
            dt = t_s - last_t
            if dt > 0:
                self._joules += (last_w + power_w) / 2 * dt
            elif dt < 0:
                # A clock that went backwards cannot be trusted for this interval: skip it.
                pass
        self._last = (t_s, power_w)
        return self._joules
