"""Power and speed of one inference replica as a function of batch size, power cap and SM clock.

The model, and why it has this shape (parameters fitted to `shared/data/calibration/`, ML.ENERGY
leaderboard v3, vLLM on H100 80GB, task lm-arena-chat; see docs/gpu-model.md):

* Iteration time of continuous batching grows linearly with the running batch:
  ``t(b) = iter_base_s + iter_per_seq_s * b``. Throughput is ``b / t(b)`` output tokens per second.
  The fit uses throughput, so the amortised prefill of an average chat prompt is inside ``t(b)``.
* Board power at full clocks saturates with batch: ``P(b) = P_max - P_span * exp(-b / k)`` while any
  request runs, and ``idle_power_w`` (model resident, P0, 0% utilisation) when none does.
* Lowering the SM clock to a ratio ``r`` of its maximum (by locking clocks, or because a power cap
  binds) scales the dynamic power as ``r**2`` (voltage falls with frequency) above a static floor,
  and stretches only the compute-bound share of an iteration: ``t * (m + (1 - m) / r)``. Decode is
  memory-bound (``m`` = 0.8), so throughput stays within ~5% down to ~65% of TDP, then falls, as
  published. A cap above the native draw at the current batch does nothing.

Both fits reproduce every calibration row's throughput and J/token within 6%
(tests/unit/test_gpumodel.py checks 10%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ServerProfile:
    """One replica of one model on ``num_gpus`` GPUs. Power figures are totals over those GPUs."""

    name: str
    gpu_model: str
    num_gpus: int
    idle_power_w: float
    """Power with the model resident and no request running."""
    max_power_w: float
    """Asymptotic power at full clocks and very large batches."""
    power_span_w: float
    """``max_power_w`` minus the power of a batch of (almost) zero requests that are running."""
    power_batch_scale: float
    """Batch size over which power approaches ``max_power_w`` (the ``k`` of the exponential)."""
    static_power_w: float
    """Power that does not scale with SM clock (memory, fans, leakage)."""
    iter_base_s: float
    iter_per_seq_s: float
    memory_bound_share: float
    """Share of an iteration's time that does not stretch when the SM clock falls."""
    max_batch: int
    max_sm_clock_mhz: int
    min_sm_clock_mhz: int
    power_limit_min_w: float
    power_limit_max_w: float
    power_limit_default_w: float
    cold_start_s: float
    prefill_tokens_per_s: float
    """Prompt tokens per second a replica prefills at full clocks (compute-bound); used for TTFT."""

    def native_power_w(self, batch: float) -> float:
        """Power drawn at full clocks with ``batch`` requests running."""
        if batch <= 0:
            return self.idle_power_w
        return self.max_power_w - self.power_span_w * math.exp(-batch / self.power_batch_scale)

    def iteration_time_s(self, batch: float, clock_ratio: float = 1.0) -> float:
        """Seconds per decode iteration (one output token per running request) at ``clock_ratio``."""
        base = self.iter_base_s + self.iter_per_seq_s * max(batch, 0.0)
        return base * (self.memory_bound_share + (1.0 - self.memory_bound_share) / clock_ratio)

    def power_at_clock_w(self, batch: float, clock_ratio: float) -> float:
        """Power with the SM clock at ``clock_ratio`` of its maximum."""
        native = self.native_power_w(batch)
        if native <= self.static_power_w:
            return native
        return self.static_power_w + (native - self.static_power_w) * clock_ratio**2

    @property
    def min_clock_ratio(self) -> float:
        return self.min_sm_clock_mhz / self.max_sm_clock_mhz


@dataclass(frozen=True)
class OperatingPoint:
    """What a replica does at one instant: its power, speed and whether a cap holds it back."""

    batch: float
    power_w: float
    clock_ratio: float
    iteration_time_s: float
    tokens_per_s: float
    power_capped: bool

    @property
    def joules_per_token(self) -> float:
        return self.power_w / self.tokens_per_s if self.tokens_per_s > 0 else math.inf


def operating_point(
    profile: ServerProfile,
    batch: float,
    power_cap_w: float | None = None,
    locked_clock_mhz: float | None = None,
) -> OperatingPoint:
    """Solve for the clock at which the replica runs under an optional power cap and clock lock.

    ``power_cap_w`` is the total over the replica's GPUs. The clock is the lower of the locked clock
    and the highest clock whose power fits under the cap, never below the GPU's minimum clock (a real
    GPU then exceeds the cap slightly rather than stopping; so does the model).
    """
    ratio = 1.0
    if locked_clock_mhz is not None:
        ratio = min(1.0, max(profile.min_clock_ratio, locked_clock_mhz / profile.max_sm_clock_mhz))
    capped = False
    if power_cap_w is not None and batch > 0 and profile.power_at_clock_w(batch, ratio) > power_cap_w:
        native = profile.native_power_w(batch)
        dynamic = native - profile.static_power_w
        headroom = max(power_cap_w - profile.static_power_w, 0.0)
        ratio = max(profile.min_clock_ratio, math.sqrt(headroom / dynamic)) if dynamic > 0 else ratio
        capped = True
    power = profile.power_at_clock_w(batch, ratio)
    it = profile.iteration_time_s(batch, ratio)
    tokens_per_s = batch / it if batch > 0 else 0.0
    return OperatingPoint(batch, power, ratio, it, tokens_per_s, capped)


# Fitted by weighted least squares to the H100 rows of the calibration CSV (docs/gpu-model.md).
H100_LLAMA_8B = ServerProfile(
    name="llama-3.1-8b-h100",
    gpu_model="NVIDIA H100 80GB HBM3",
    num_gpus=1,
    idle_power_w=140.0,
    max_power_w=689.6,
    power_span_w=234.0,
    power_batch_scale=56.2,
    static_power_w=120.0,
    iter_base_s=0.006672,
    iter_per_seq_s=0.00008946,
    memory_bound_share=0.8,
    max_batch=512,
    max_sm_clock_mhz=1980,
    min_sm_clock_mhz=345,
    power_limit_min_w=200.0,
    power_limit_max_w=700.0,
    power_limit_default_w=700.0,
    cold_start_s=60.0,
    prefill_tokens_per_s=40_000.0,
)

H100X4_LLAMA_70B = ServerProfile(
    name="llama-3.1-70b-h100x4",
    gpu_model="NVIDIA H100 80GB HBM3",
    num_gpus=4,
    idle_power_w=4 * 140.0,
    max_power_w=2516.5,
    power_span_w=802.6,
    power_batch_scale=157.6,
    static_power_w=4 * 120.0,
    iter_base_s=0.016472,
    iter_per_seq_s=0.00013516,
    memory_bound_share=0.8,
    max_batch=1024,
    max_sm_clock_mhz=1980,
    min_sm_clock_mhz=345,
    power_limit_min_w=4 * 200.0,
    power_limit_max_w=4 * 700.0,
    power_limit_default_w=4 * 700.0,
    cold_start_s=180.0,
    prefill_tokens_per_s=12_000.0,
)

PROFILES: dict[str, ServerProfile] = {p.name: p for p in (H100_LLAMA_8B, H100X4_LLAMA_70B)}


@dataclass(frozen=True)
class PrefillPoint:
    """Prefill (prompt processing) at one cap and clock: compute-bound, so it draws the replica's full
    dynamic power and its speed scales with the SM clock."""

    power_w: float
    clock_ratio: float
    tokens_per_s: float


def prefill_point(
    profile: ServerProfile, power_cap_w: float | None = None, locked_clock_mhz: float | None = None
) -> PrefillPoint:
    """Prefill at an optional power cap and clock lock (an addition for the simulator's TTFT).

    Compute-bound prefill is modelled as drawing ``max_power_w`` at full clocks (the saturated end of
    ``P(b)``); a cap binds the same way as for decode and the prompt-token rate falls with the clock
    ratio (no memory-bound share: the whole step stretches).
    """
    ratio = 1.0
    if locked_clock_mhz is not None:
        ratio = min(1.0, max(profile.min_clock_ratio, locked_clock_mhz / profile.max_sm_clock_mhz))
    dynamic = profile.max_power_w - profile.static_power_w
    if power_cap_w is not None and profile.static_power_w + dynamic * ratio**2 > power_cap_w and dynamic > 0:
        headroom = max(power_cap_w - profile.static_power_w, 0.0)
        ratio = max(profile.min_clock_ratio, math.sqrt(headroom / dynamic))
    power = profile.static_power_w + dynamic * ratio**2
    return PrefillPoint(power, ratio, profile.prefill_tokens_per_s * ratio)
