"""Typed settings of the sidecar's control loop; they fail fast with the name of the flag at fault."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/energy-orchestrator/powercap")


class StartupRefused(Exception):
    """The sidecar must not start; the message says why and what to do. The CLI exits 2 with it."""


@dataclass(frozen=True)
class Settings:
    latency_target_s: float
    actuator: str = "power"
    dry_run: bool = False
    interval_s: float = 5.0
    floor_w: float | None = None
    """None: the GPU's minimum settable limit."""
    ceiling_w: float | None = None
    """None: the GPU's original limit (the sidecar never raises above how it found the GPU)."""
    max_step_w: float = 25.0
    floor_mhz: float | None = None
    ceiling_mhz: float | None = None
    max_step_mhz: float = 90.0
    lower_below_ratio: float = 0.85
    raise_above_ratio: float = 0.95
    raise_fraction: float = 0.5
    settle_s: float = 30.0
    stale_after_s: float = 30.0
    thermal_margin_c: float = 5.0
    breach_memory_s: float = 300.0
    load_jump_ratio: float = 0.5
    error_backoff_s: float = 60.0
    state_dir: Path = DEFAULT_STATE_DIR
    lock_dir: Path | None = None
    """None: ``<state_dir>/locks``. Must be node-wide (hostPath) for two writers to see each other."""
    listen_address: str = "0.0.0.0"
    port: int = 9104

    def __post_init__(self) -> None:
        def positive(flag: str, value: float | None) -> None:
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise ValueError(f"{flag}: must be a positive number, got {value}")

        positive("--latency-target-seconds", self.latency_target_s)
        positive("--interval-seconds", self.interval_s)
        positive("--stale-after-seconds", self.stale_after_s)
        for flag, value in (
            ("--floor-watts", self.floor_w),
            ("--ceiling-watts", self.ceiling_w),
            ("--max-step-watts", self.max_step_w),
            ("--floor-sm-clock-mhz", self.floor_mhz),
            ("--ceiling-sm-clock-mhz", self.ceiling_mhz),
            ("--max-step-mhz", self.max_step_mhz),
        ):
            positive(flag, value)
        if self.actuator not in ("power", "clocks"):
            raise ValueError(f"--actuator: {self.actuator!r} is not power or clocks")
        if self.floor_w is not None and self.ceiling_w is not None and self.floor_w > self.ceiling_w:
            raise ValueError(f"--floor-watts ({self.floor_w}) is above --ceiling-watts ({self.ceiling_w})")
        if self.floor_mhz is not None and self.ceiling_mhz is not None and self.floor_mhz > self.ceiling_mhz:
            raise ValueError(
                f"--floor-sm-clock-mhz ({self.floor_mhz}) is above "
                f"--ceiling-sm-clock-mhz ({self.ceiling_mhz})"
            )
        if not 0 < self.lower_below_ratio < self.raise_above_ratio <= 1:
            raise ValueError(
                "--lower-below-ratio and --raise-above-ratio: need 0 < lower < raise <= 1, got "
                f"{self.lower_below_ratio} and {self.raise_above_ratio}"
            )
        if not 0 < self.raise_fraction <= 1:
            raise ValueError(f"--raise-fraction: must be in (0, 1], got {self.raise_fraction}")
        for flag, value in (
            ("--settle-seconds", self.settle_s),
            ("--thermal-margin-celsius", self.thermal_margin_c),
            ("--breach-memory-seconds", self.breach_memory_s),
            ("--load-jump-ratio", self.load_jump_ratio),
            ("--error-backoff-seconds", self.error_backoff_s),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{flag}: must be a number >= 0, got {value}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port: {self.port} is not a TCP port")

    @property
    def locks(self) -> Path:
        return self.lock_dir if self.lock_dir is not None else self.state_dir / "locks"
