"""KEDA and the Horizontal Pod Autoscaler, as arithmetic: what replica count a metric leads to.

From the Kubernetes HPA controller and KEDA's scale loop (see docs/simulator.md):

* HPA, every ``sync_s`` (15 s) while replicas >= 1, for an ``AverageValue`` external metric:
  ``ratio = value / (target * current)``; within ``tolerance`` (10%) of 1 nothing changes, else
  ``desired = ceil(value / target)``.
* Stabilisation: scale-down takes the highest recommendation of the last ``scale_down_window_s``
  (300 s default), scale-up the lowest of the last ``scale_up_window_s`` (0 s default).
* Rate limits (default behaviour): up by at most max(100%, 4 pods) per 15 s, down by at most 100%.
* Bounds: the HPA's minimum is ``max(minReplicaCount, 1)``; KEDA itself scales 0 -> 1 when a poll
  (every ``polling_s``, 30 s) finds the trigger active, and 1+ -> 0 once ``cooldown_s`` (300 s) have
  passed since the last active poll (only with ``minReplicaCount`` 0).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

_EPS = 1e-9


@dataclass(frozen=True)
class HpaConfig:
    min_replicas: int = 0
    max_replicas: int = 100
    tolerance: float = 0.1
    sync_s: float = 15.0
    polling_s: float = 30.0
    cooldown_s: float = 300.0
    scale_down_window_s: float = 300.0
    scale_up_window_s: float = 0.0
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0
    scale_down_percent: float = 100.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.tolerance < 0 or self.sync_s <= 0 or self.polling_s <= 0:
            raise ValueError("tolerance must be >= 0 and the periods > 0")


def hpa_recommendation(value: float, target: float, current: int, tolerance: float) -> int:
    """The HPA's raw recommendation for an AverageValue external metric (before stabilisation/bounds)."""
    if target <= 0:
        raise ValueError("target must be > 0")
    value = max(0.0, value) if math.isfinite(value) else 0.0
    if current > 0 and abs(value / (target * current) - 1.0) <= tolerance:
        return current
    return max(0, math.ceil(value / target - _EPS))


def scale_up_limit(current: int, config: HpaConfig) -> int:
    """Most replicas one sync may reach from ``current`` (default policies: +100% or +4 pods)."""
    return max(math.floor(current * (1 + config.scale_up_percent / 100)), current + config.scale_up_pods)


def scale_down_limit(current: int, config: HpaConfig) -> int:
    """Fewest replicas one sync may reach from ``current`` (default policy: -100%)."""
    return max(0, math.ceil(current * (1 - config.scale_down_percent / 100)))


class Autoscaler:
    """One ScaledObject: KEDA's activation/cooldown around one HPA. Holds the replica spec."""

    def __init__(self, config: HpaConfig, initial_replicas: int) -> None:
        self.config = config
        self.replicas = initial_replicas
        self.last_active_s: float | None = 0.0  # the grace of one cooldown after start
        self._history: deque[tuple[float, int]] = deque()
        if initial_replicas > 0:
            # The service ran before the trace at this count: the HPA's stabilisation window already
            # holds that recommendation, so the first sync cannot drop replicas a live HPA would keep.
            self._history.append((0.0, initial_replicas))

    def hpa_sync(self, now_s: float, value: float, target: float) -> int:
        """One HPA sync; a no-op at zero replicas (KEDA owns 0 <-> 1)."""
        cfg = self.config
        current = self.replicas
        if current == 0:
            return current
        rec = hpa_recommendation(value, target, current, cfg.tolerance)
        self._history.append((now_s, rec))
        horizon = max(cfg.scale_down_window_s, cfg.scale_up_window_s)
        while self._history and self._history[0][0] < now_s - horizon - _EPS:
            self._history.popleft()
        up = min(
            (r for t, r in self._history if t >= now_s - cfg.scale_up_window_s - _EPS),
            default=rec,
        )
        down = max(
            (r for t, r in self._history if t >= now_s - cfg.scale_down_window_s - _EPS),
            default=rec,
        )
        desired = current
        desired = max(desired, up)
        desired = min(desired, down)
        desired = min(desired, scale_up_limit(current, cfg))
        desired = max(desired, scale_down_limit(current, cfg))
        desired = min(max(desired, cfg.min_replicas, 1), cfg.max_replicas)
        self.replicas = desired
        return desired

    def keda_poll(self, now_s: float, active: bool) -> int:
        """One KEDA poll of IsActive: activation from zero and scale-to-zero after the cooldown."""
        cfg = self.config
        if active:
            self.last_active_s = now_s
            if self.replicas == 0:
                self.replicas = max(cfg.min_replicas, 1)
        elif self.replicas > 0 and cfg.min_replicas == 0:
            since = now_s - self.last_active_s if self.last_active_s is not None else math.inf
            if since >= cfg.cooldown_s - _EPS:
                self.replicas = 0
                self._history.clear()
        return self.replicas
