"""The adapter interface between the simulator and whatever decides replicas and power caps.

Two kinds of replica control:

* ``ReplicaController``: a KEDA trigger. At each HPA sync / KEDA poll it answers what the live scaler
  answers (a metric value with its target, and IsActive) from what Prometheus would hold; the engine's
  ``Autoscaler`` applies KEDA/HPA arithmetic. Energy Orchestrator's ``decide()`` and KEDA's own
  prometheus-scaler threshold are both such triggers.
* ``ReplicaSchedule``: replicas chosen outside KEDA (static provisioning, the offline optimum).

``CapController``: what one power-cap sidecar does per replica at its interval (Energy Orchestrator's
``step()``; "no caps" is simply no controller; ``SlotClocks`` applies a planned clock schedule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sim.observe import SimPrometheus


@dataclass(frozen=True)
class ScalerAnswer:
    """One answer of a KEDA external trigger: GetMetrics' value with its target, and IsActive."""

    value: float
    target: float
    active: bool
    reason: str = ""


class ReplicaController(Protocol):
    @property
    def name(self) -> str: ...

    def answer(self, prom: SimPrometheus, now_s: float) -> ScalerAnswer:
        """What the trigger reports at ``now_s`` (a slot boundary), from Prometheus' view only."""
        ...


class ReplicaSchedule(Protocol):
    @property
    def name(self) -> str: ...

    def replicas_at(self, now_s: float) -> int:
        """Replicas that must be ready at ``now_s``."""
        ...

    @property
    def prestart(self) -> bool:
        """True when replicas are started a cold start ahead (they count as ready on time)."""
        ...


@dataclass(frozen=True)
class ReplicaScrape:
    """What the replica's own /metrics shows at one instant (cumulative histograms, current gauges)."""

    running: int
    waiting: int
    ttft_counts: tuple[float, ...]
    """Cumulative TTFT bucket counts (``sim.observe.TTFT_BUCKETS_S``, last: +Inf)."""
    itl_counts: tuple[float, ...]
    """Cumulative output tokens per ITL bucket (``sim.observe.ITL_BUCKETS_S``)."""
    itl_sum_s: float
    clock_mhz: float | None
    """The SM clock lock in force (None: unlocked)."""
    ttft_sum_s: float = 0.0
    """The TTFT histogram's cumulative sum."""
    prompt_tokens: float = 0.0
    """Cumulative prompt tokens of the requests that got their first token (vLLM's counter)."""


@dataclass(frozen=True)
class CapReading:
    """What one sidecar sees at ``now_s``: its pod's latency quantile and request rate over its window,
    its server's scrape, and whether its workload is scaling up (desired replicas above ready ones)."""

    now_s: float
    latency_s: float | None
    load_rps: float
    scrape: ReplicaScrape | None = None
    scaling_up: bool | None = None


@dataclass(frozen=True)
class CapSetting:
    power_cap_w: float | None = None
    locked_clock_mhz: float | None = None


class CapController(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def interval_s(self) -> float:
        """Seconds between ``control`` calls."""
        ...

    @property
    def window_s(self) -> float:
        """Seconds of the replica's own latency history each reading covers."""
        ...

    @property
    def quantile(self) -> float:
        """The latency quantile each reading carries."""
        ...

    def start(self, replica_id: int, now_s: float) -> CapSetting:
        """A replica became ready: the sidecar starts (records the original, applies its first setting)."""
        ...

    def control(self, replica_id: int, reading: CapReading) -> CapSetting:
        """One control interval for one replica."""
        ...


@dataclass(frozen=True)
class ThresholdTrigger:
    """KEDA's prometheus scaler on a request-rate threshold, as users run it today without caps.

    Query ``sum(rate(vllm:request_success_total[window]))``, ``threshold`` requests per second per
    replica (AverageValue), IsActive when the value exceeds ``activation_threshold`` (KEDA's default 0).
    """

    threshold_rps: float
    window_s: float = 60.0
    activation_threshold: float = 0.0
    name: str = "threshold"

    def __post_init__(self) -> None:
        if not self.threshold_rps > 0:
            raise ValueError("threshold_rps must be > 0")

    def answer(self, prom: SimPrometheus, now_s: float) -> ScalerAnswer:
        value = prom.rate(self.window_s, now_s)
        return ScalerAnswer(value, self.threshold_rps, value > self.activation_threshold, "rate")


@dataclass(frozen=True)
class StaticSchedule:
    """A fixed number of replicas, ready from the start (provisioned for the peak)."""

    replicas: int
    name: str = "static"
    prestart: bool = True

    def replicas_at(self, now_s: float) -> int:
        return self.replicas


@dataclass(frozen=True)
class SlotSchedule:
    """Replicas per fixed time slot (the offline optimum's plan), started a cold start ahead."""

    slot_s: float
    counts: Sequence[int]
    name: str = "optimum"
    prestart: bool = True

    def replicas_at(self, now_s: float) -> int:
        if not self.counts:
            return 0
        i = min(len(self.counts) - 1, max(0, math.floor(now_s / self.slot_s + 1e-9)))
        return self.counts[i]


@dataclass(frozen=True)
class SlotClocks:
    """SM clocks per fixed time slot, on every ready replica (the joint optimum's plan, or one clock for
    a load test). Behind the ``CapController`` interface, so the engine applies it like a sidecar
    would; it reads nothing."""

    slot_s: float
    clocks_mhz: Sequence[float]
    name: str = "planned-clocks"
    interval_s: float = 5.0
    window_s: float = 60.0
    quantile: float = 0.99

    def __post_init__(self) -> None:
        if not self.clocks_mhz or not self.slot_s > 0:
            raise ValueError("SlotClocks needs at least one clock and slot_s > 0")

    def clock_at(self, now_s: float) -> float:
        i = min(len(self.clocks_mhz) - 1, max(0, math.floor(now_s / self.slot_s + 1e-9)))
        return self.clocks_mhz[i]

    def start(self, replica_id: int, now_s: float) -> CapSetting:
        return CapSetting(locked_clock_mhz=self.clock_at(now_s))

    def control(self, replica_id: int, reading: CapReading) -> CapSetting:
        return CapSetting(locked_clock_mhz=self.clock_at(reading.now_s))
