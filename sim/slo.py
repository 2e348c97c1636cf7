"""Service-level objectives of an LLM workload, and which requests met them.

Three per-request latencies, as an LLM user feels them and as vLLM's histograms count them:

* TTFT, time to first token: arrival to the first output token (queueing plus prefill);
* ITL, inter-token latency: the request's mean time per output token after the first (its decode time
  over ``output_tokens - 1``; vLLM's benchmarks call it TPOT). A request with one output token has no
  inter-token interval, so it cannot miss an ITL objective;
* end-to-end: arrival to the last token.

A run's attainment of one objective is the share of the trace's requests within it; its
``slo_attainment`` is the share within every objective given at once. A request that never finished
misses every objective. Pure code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("ttft", "itl", "e2e")
LABELS = {"ttft": "TTFT", "itl": "ITL", "e2e": "end-to-end"}


@dataclass(frozen=True)
class Slos:
    """Latency objectives in seconds, held at a quantile of the requests; None: not an objective."""

    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        if not self.given():
            raise ValueError("give at least one SLO (TTFT, ITL or end-to-end latency)")
        for kind, value in self.given():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"the {LABELS[kind]} SLO must be a positive number of seconds, got {value}")

    def given(self) -> list[tuple[str, float]]:
        """``(kind, seconds)`` of each objective given, in ``KINDS`` order."""
        values = {"ttft": self.ttft_s, "itl": self.itl_s, "e2e": self.e2e_s}
        return [(k, v) for k in KINDS if (v := values[k]) is not None]

    def describe(self, quantile: float | None = None) -> str:
        """``p99 TTFT <= 0.5 s, ITL <= 0.025 s`` (without the quantile when None)."""
        head = f"p{quantile * 100:g} " if quantile is not None else ""
        return head + ", ".join(f"{LABELS[k]} <= {v:g} s" for k, v in self.given())


@dataclass(frozen=True)
class RequestLatencies:
    """Per request of a run, indexed like the trace; NaN where there is no value (unfinished, or no
    inter-token interval)."""

    ttft_s: Sequence[float]
    itl_s: Sequence[float]
    e2e_s: Sequence[float]

    @staticmethod
    def of(
        arrival_s: Sequence[float],
        first_token_s: Sequence[float],
        end_s: Sequence[float],
        output_tokens: Sequence[int],
    ) -> RequestLatencies:
        ttft = [f - a for a, f in zip(arrival_s, first_token_s, strict=True)]
        e2e = [e - a for a, e in zip(arrival_s, end_s, strict=True)]
        itl = [
            (e - f) / (n - 1) if n > 1 else math.nan
            for f, e, n in zip(first_token_s, end_s, output_tokens, strict=True)
        ]
        return RequestLatencies(ttft, itl, e2e)

    def within(self, kind: str, slo_s: float) -> list[bool]:
        """Per request, whether it met the ``kind`` objective (unfinished requests never do)."""
        if kind == "ttft":
            return [x <= slo_s for x in self.ttft_s]  # NaN compares False
        if kind == "e2e":
            return [x <= slo_s for x in self.e2e_s]
        if kind == "itl":
            return [
                not math.isnan(e) and (math.isnan(x) or x <= slo_s)
                for x, e in zip(self.itl_s, self.e2e_s, strict=True)
            ]
        raise ValueError(f"unknown SLO kind {kind!r}")


@dataclass(frozen=True)
class Attainment:
    """Shares of requests within each objective (None where it is not one) and within all of them."""

    ttft: float | None
    itl: float | None
    e2e: float | None
    all: float

    def of_kind(self, kind: str) -> float | None:
        return {"ttft": self.ttft, "itl": self.itl, "e2e": self.e2e}[kind]


def attainment(latencies: RequestLatencies, slos: Slos) -> Attainment:
    """Per-objective and all-objective attainment; 1.0 for a trace with no requests (nothing missed)."""
    n = len(latencies.e2e_s)
    shares: dict[str, float] = {}
    every = [True] * n
    for kind, slo in slos.given():
        ok = latencies.within(kind, slo)
        shares[kind] = sum(ok) / n if n else 1.0
        every = [a and b for a, b in zip(every, ok, strict=True)]
    return Attainment(shares.get("ttft"), shares.get("itl"), shares.get("e2e"), sum(every) / n if n else 1.0)
