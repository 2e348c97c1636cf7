"""The governor's prefill model: the TTFT a stream of prompts predicts at a clock, learned online.

TTFT is a request's prefill plus its wait behind the prompts ahead of it (chunked prefill serves the
prompts in arrival order). The work arriving per second is the prompt-token rate, which the inference
server counts (vLLM ``vllm:prompt_tokens_total``, ``common.servers``): it moves with the load in the
interval the load moves, tens of seconds before the slower first tokens fill the TTFT histogram's tail.
That makes it the governor's feedforward for TTFT.

The queue is taken as M/G/1: prompts arrive at random (Poisson) at ``tokens_per_s`` prompt tokens per
second, ``mean_tokens`` per request, and one server prefills them at ``rate(clock)`` tokens per second:

* utilisation ``rho = tokens_per_s / rate(clock)`` and mean prefill ``S = mean_tokens / rate(clock)``;
* mean TTFT (Pollaczek-Khinchine): ``E[T] = S + rho * S * (1 + scv) / (2 * (1 - rho))``, ``scv`` the
  squared coefficient of variation of prompt sizes (1: exponential sizes; Azure's conversation trace
  has about 0.92);
* TTFT at quantile ``q``: the time in system taken as exponential with that mean,
  ``T_q = E[T] * ln(1 / (1 - q))``. Exact for M/M/1 (``scv`` 1); for other spreads a first-order
  approximation, and its bias is the online correction's to remove. It needs no prompt-size quantile,
  which no counter gives, and it grows without bound as ``rho`` nears 1, which is what a forming
  prefill queue does.

Prefill is compute-bound, so ``rate`` is the prior's tokens per second at the top clock times
clock / top clock (gpumodel ``prefill_point``), divided by a learned ratio: each interval with first
tokens, the per-token prefill time that makes the model's ``E[T]`` equal the observed mean TTFT (the
TTFT histogram's ``_sum`` over ``_count`` since the previous scrape), at the clock in force and that
interval's prompt rate, over the prior's. The ratio is an exponentially weighted estimate, each
observation weighted by how many first tokens it averages and clamped to [``MIN_RATIO``,
``MAX_RATIO``] like the iteration profile's. It absorbs what the prior leaves out: prompt tokens the
decode iterations amortise, prefill chunks sharing iterations with the decode batch, a slower GPU.

Pure: no clock, no I/O; every update returns a new profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from powercap.profile import DEFAULT_WEIGHT, MAX_RATIO, MIN_RATIO

DEFAULT_SCV = 1.0
"""Prompt sizes' squared coefficient of variation where none is given (exponential sizes)."""
FIRSTS_HALF_WEIGHT = 4.0
"""An interval's mean TTFT over this many first tokens gets half of ``weight``: one slow first
token in a quiet interval moves the ratio little, a busy interval's mean moves it fully."""


def _finite_positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class PrefillProfile:
    """Prompt tokens per second at a clock, learned online. Build one with ``PrefillProfile.start``."""

    tokens_per_s: float
    """The prior: prompt tokens per second at ``max_clock_mhz`` (gpumodel ``prefill_tokens_per_s``)."""
    max_clock_mhz: float
    scv: float = DEFAULT_SCV
    ratio: float = 1.0
    """Learned observed / prior per-token prefill time."""
    weight: float = DEFAULT_WEIGHT
    observations: int = 0

    def __post_init__(self) -> None:
        for name in ("tokens_per_s", "max_clock_mhz"):
            if not _finite_positive(getattr(self, name)):
                raise ValueError(f"{name}: must be a positive finite number, got {getattr(self, name)}")
        if not (math.isfinite(self.scv) and self.scv >= 0):
            raise ValueError(f"scv: must be a finite number >= 0, got {self.scv}")
        if not 0 < self.weight <= 1:
            raise ValueError(f"weight: must be in (0, 1], got {self.weight}")

    @classmethod
    def start(cls, tokens_per_s: float, max_clock_mhz: float, scv: float = DEFAULT_SCV) -> PrefillProfile:
        return cls(tokens_per_s, max_clock_mhz, scv)

    def _prior_s_per_token(self, clock_mhz: float) -> float:
        return 1.0 / (self.tokens_per_s * min(1.0, max(clock_mhz, 1.0) / self.max_clock_mhz))

    def rate_tokens_per_s(self, clock_mhz: float) -> float:
        """Prompt tokens per second prefilled at ``clock_mhz`` (the prior, corrected)."""
        return 1.0 / (self._prior_s_per_token(clock_mhz) * self.ratio)

    def mean_ttft_s(self, clock_mhz: float, tokens_per_s: float, mean_tokens: float) -> float:
        """Predicted mean TTFT at that clock and prompt load; ``math.inf`` at or past saturation."""
        return _mean_ttft_s(
            self._prior_s_per_token(clock_mhz) * self.ratio, tokens_per_s, mean_tokens, self.scv
        )

    def ttft_quantile_s(
        self, clock_mhz: float, tokens_per_s: float, mean_tokens: float, quantile: float
    ) -> float:
        """Predicted TTFT at ``quantile`` at that clock and prompt load; ``math.inf`` at or past
        saturation (a queue that only grows)."""
        mean = _mean_ttft_s(
            self._prior_s_per_token(clock_mhz) * self.ratio, tokens_per_s, mean_tokens, self.scv
        )
        return mean * math.log(1.0 / (1.0 - quantile))

    def observe(
        self,
        clock_mhz: float,
        tokens_per_s: float,
        mean_tokens: float,
        mean_ttft_s: float,
        first_tokens: float,
    ) -> PrefillProfile:
        """Learn one interval: ``first_tokens`` requests got their first token, ``mean_tokens`` prompt
        tokens each on average, at ``mean_ttft_s``, while ``tokens_per_s`` prompt tokens arrived, at
        ``clock_mhz``. Anything not a finite number (or not positive where it must be) is ignored."""
        values = (clock_mhz, tokens_per_s, mean_tokens, mean_ttft_s, first_tokens)
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            return self
        if clock_mhz <= 0 or tokens_per_s < 0 or mean_tokens <= 0 or mean_ttft_s <= 0 or first_tokens <= 0:
            return self
        per_token = _per_token_s(tokens_per_s, mean_tokens, mean_ttft_s, self.scv)
        ratio = min(MAX_RATIO, max(MIN_RATIO, per_token / self._prior_s_per_token(clock_mhz)))
        weight = self.weight * first_tokens / (first_tokens + FIRSTS_HALF_WEIGHT)
        return replace(
            self, ratio=self.ratio + weight * (ratio - self.ratio), observations=self.observations + 1
        )


def _mean_ttft_s(s_per_token: float, tokens_per_s: float, mean_tokens: float, scv: float) -> float:
    """Pollaczek-Khinchine mean time in system of one prompt of ``mean_tokens``."""
    rho = tokens_per_s * s_per_token
    if rho >= 1.0:
        return math.inf
    service = mean_tokens * s_per_token
    return service + rho * service * (1.0 + scv) / (2.0 * (1.0 - rho))


def _per_token_s(tokens_per_s: float, mean_tokens: float, mean_ttft_s: float, scv: float) -> float:
    """The per-token prefill time at which the model's mean TTFT is ``mean_ttft_s``: the mean grows
    monotonically from 0 to infinity as the time per token goes from 0 to 1 / ``tokens_per_s``, so
    bisection finds it."""
    if tokens_per_s <= 0:
        return mean_ttft_s / mean_tokens
    low, high = 0.0, 1.0 / tokens_per_s
    for _ in range(60):
        mid = (low + high) / 2
        if _mean_ttft_s(mid, tokens_per_s, mean_tokens, scv) < mean_ttft_s:
            low = mid
        else:
            high = mid
    return (low + high) / 2
