"""Load patterns for simulated GPUs (``--sim-load``): a running batch size as a function of time.

Pure code: a pattern is parsed from text into a frozen object, and ``batch_at(t_s, phase)`` gives the
batch at ``t_s`` seconds. Patterns:

* ``idle``: batch 0 (the GPU sits at idle power).
* ``constant:BATCH``: a fixed running batch, e.g. ``constant:32``.
* ``sine:PERIOD_S:MAX_BATCH``: ``MAX_BATCH * (1 - cos(2 pi t / PERIOD_S)) / 2``, between 0 and
  ``MAX_BATCH``; each GPU is shifted by ``index / count`` of a period so they do not move in lockstep.
* ``square:PERIOD_S:BATCH``: ``BATCH`` for the first half of each period, 0 for the second (also
  phase-shifted per GPU): sharp steps for watching caps and rates react.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SIM_LOAD = "sine:120:96"


@dataclass(frozen=True)
class LoadPattern:
    kind: str
    batch: float = 0.0
    period_s: float = 1.0

    def batch_at(self, t_s: float, phase: float = 0.0) -> float:
        """Running batch at ``t_s`` seconds; ``phase`` is a fraction of a period (0..1)."""
        if self.kind == "idle":
            return 0.0
        if self.kind == "constant":
            return self.batch
        x = (t_s / self.period_s + phase) % 1.0
        if self.kind == "sine":
            return self.batch * (1.0 - math.cos(2.0 * math.pi * x)) / 2.0
        return self.batch if x < 0.5 else 0.0  # square


def _number(text: str, what: str, pattern: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} in {pattern!r} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} in {pattern!r} must be a finite number >= 0, got {text!r}")
    return value


def parse_load_pattern(text: str) -> LoadPattern:
    """Parse ``idle``, ``constant:BATCH``, ``sine:PERIOD_S:MAX_BATCH`` or ``square:PERIOD_S:BATCH``."""
    kind, *args = text.strip().split(":")
    expected = {"idle": 0, "constant": 1, "sine": 2, "square": 2}
    if kind not in expected:
        raise ValueError(
            f"unknown load pattern {text!r}; use idle, constant:BATCH, sine:PERIOD_S:MAX_BATCH "
            "or square:PERIOD_S:BATCH"
        )
    if len(args) != expected[kind]:
        raise ValueError(f"load pattern {kind!r} takes {expected[kind]} ':'-separated values, got {text!r}")
    if kind == "idle":
        return LoadPattern("idle")
    if kind == "constant":
        return LoadPattern("constant", batch=_number(args[0], "BATCH", text))
    period = _number(args[0], "PERIOD_S", text)
    if period <= 0:
        raise ValueError(f"PERIOD_S in {text!r} must be > 0")
    return LoadPattern(kind, batch=_number(args[1], "BATCH", text), period_s=period)
