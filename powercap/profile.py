"""A per-GPU profile of decode iteration time, (SM clock, running batch) -> seconds, learned online.

The governor (``powercap.governor``) picks the lowest clock whose predicted inter-token latency holds
the target at the replica's running batch; this is what it predicts from. It starts from gpumodel's
calibrated prior (``t(b) * (m + (1 - m) / r)``, docs/gpu-model.md) and learns from what the sidecar
observes each interval: the server's mean inter-token time over the interval (its ITL histogram's
``_sum`` and ``_count`` deltas) at the clock in force and the batch the server reported.

Learning is a ratio observed / prior per bin, an exponentially weighted estimate:

* bins are fixed at construction (at most ``MAX_CLOCK_BINS`` clock bins x ``MAX_BATCH_BINS`` batch bins,
  batch bins on powers of two), so memory is bounded whatever runs for however long;
* each ratio is clamped to [``MIN_RATIO``, ``MAX_RATIO``]: one absurd reading (a stall, a scrape that
  raced a restart) moves a bin by at most a bounded amount, and no run of them takes it past the clamp;
* a bin never observed uses the profile-wide ratio (also exponentially weighted), so what is learned at
  one clock and batch carries over to the others until they are seen.

Pure: no clock, no I/O; every update returns a new profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from gpumodel.model import ServerProfile

MAX_CLOCK_BINS = 16
MAX_BATCH_BINS = 12
MIN_RATIO = 0.25
MAX_RATIO = 4.0
DEFAULT_WEIGHT = 0.3
"""Weight of one observation in a bin's estimate (and in the profile-wide one)."""


@dataclass(frozen=True)
class IterationPrior:
    """gpumodel's iteration time: ``(base + per_seq * b) * (m + (1 - m) / r)`` with ``r`` = clock / max."""

    base_s: float
    per_seq_s: float
    memory_bound_share: float
    max_clock_mhz: float

    def __post_init__(self) -> None:
        for name in ("base_s", "max_clock_mhz"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: must be a positive finite number, got {value}")
        if not math.isfinite(self.per_seq_s) or self.per_seq_s < 0:
            raise ValueError(f"per_seq_s: must be a finite number >= 0, got {self.per_seq_s}")
        if not 0 <= self.memory_bound_share < 1:
            raise ValueError(f"memory_bound_share: must be in [0, 1), got {self.memory_bound_share}")

    def iteration_s(self, clock_mhz: float, batch: float) -> float:
        ratio = min(1.0, max(clock_mhz, 1.0) / self.max_clock_mhz)
        base = self.base_s + self.per_seq_s * max(batch, 0.0)
        return base * (self.memory_bound_share + (1.0 - self.memory_bound_share) / ratio)


def prior_of(model: ServerProfile) -> IterationPrior:
    """The calibrated prior of one gpumodel server profile."""
    return IterationPrior(
        model.iter_base_s, model.iter_per_seq_s, model.memory_bound_share, float(model.max_sm_clock_mhz)
    )


def _edges(low: float, high: float, count: int) -> tuple[float, ...]:
    if count <= 1 or high <= low:
        return (low,)
    return tuple(low + (high - low) * i / (count - 1) for i in range(count))


@dataclass(frozen=True)
class IterationProfile:
    """Learned (clock, batch) -> iteration seconds. Build one with ``IterationProfile.start``."""

    prior: IterationPrior
    clock_edges: tuple[float, ...]
    """Lower edges of the clock bins, ascending (MHz)."""
    batch_edges: tuple[float, ...]
    """Lower edges of the batch bins, ascending (0, 1, 2, 4, ...)."""
    ratios: tuple[float | None, ...]
    """Per bin (clock-major), observed / prior; None until the bin is observed."""
    global_ratio: float = 1.0
    weight: float = DEFAULT_WEIGHT
    observations: int = 0

    @classmethod
    def start(
        cls,
        prior: IterationPrior,
        clock_range_mhz: tuple[float, float],
        max_batch: int,
        clock_bins: int = 8,
        weight: float = DEFAULT_WEIGHT,
    ) -> IterationProfile:
        if not 0 < weight <= 1:
            raise ValueError(f"weight: must be in (0, 1], got {weight}")
        low, high = clock_range_mhz
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(f"clock_range_mhz: need 0 < low <= high, got {clock_range_mhz}")
        clocks = _edges(low, high, min(max(clock_bins, 1), MAX_CLOCK_BINS))
        batches: list[float] = [0.0, 1.0]
        while len(batches) < MAX_BATCH_BINS and batches[-1] * 2 <= max(max_batch, 1):
            batches.append(batches[-1] * 2)
        return cls(prior, clocks, tuple(batches), (None,) * (len(clocks) * len(batches)), weight=weight)

    def _bin(self, clock_mhz: float, batch: float) -> int:
        c = max(0, sum(1 for e in self.clock_edges if clock_mhz >= e) - 1)
        b = max(0, sum(1 for e in self.batch_edges if batch >= e) - 1)
        return c * len(self.batch_edges) + b

    def ratio_at(self, clock_mhz: float, batch: float) -> float:
        learned = self.ratios[self._bin(clock_mhz, batch)]
        return learned if learned is not None else self.global_ratio

    def estimate_s(self, clock_mhz: float, batch: float) -> float:
        """Predicted seconds per decode iteration at that clock and running batch."""
        return self.prior.iteration_s(clock_mhz, batch) * self.ratio_at(clock_mhz, batch)

    def observe(self, clock_mhz: float, batch: float, iteration_s: float) -> IterationProfile:
        """Learn one observation; anything that is not a positive finite number is ignored (missing
        data is never a number)."""
        values = (clock_mhz, batch, iteration_s)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return self
        if iteration_s <= 0 or clock_mhz <= 0 or batch < 0:
            return self
        ratio = min(MAX_RATIO, max(MIN_RATIO, iteration_s / self.prior.iteration_s(clock_mhz, batch)))
        i = self._bin(clock_mhz, batch)
        old = self.ratios[i]
        new = ratio if old is None else old + self.weight * (ratio - old)
        ratios = (*self.ratios[:i], new, *self.ratios[i + 1 :])
        global_ratio = self.global_ratio + self.weight * (ratio - self.global_ratio)
        return replace(self, ratios=ratios, global_ratio=global_ratio, observations=self.observations + 1)
