"""Request traces of our own making, for workload classes the Azure traces do not cover. Seeded and
deterministic: the same name and seed give the same requests on every machine.

* ``diurnal-bursts``: a day's shape compressed into ``span_s`` (1 h by default: each hour of the day
  lasts 2.5 minutes), a night trough at about a sixth of the afternoon peak, and random bursts, each
  shorter than a replica's cold start (10-45 s), that add half to nearly all of the peak rate on top
  of the hour's. Conversation-like requests (prompt and output lengths log-normal around the Azure
  conversation trace's medians).
* ``long-context``: chat with long prompts, 5,000-20,000 tokens (log-uniform: as many 5-10k as 10-20k
  prompts), outputs log-normal around 200 tokens, the rate rising and falling once over the span.

These are held-out-style classes: nothing in the policies is tuned to them. Arrivals are a
non-homogeneous Poisson process sampled by thinning (candidates at the highest rate, each kept with
probability rate(t) / highest).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sim.trace import Request, Trace, TraceError

# Relative request rate per hour of the day (0 h .. 23 h; 1.0 at the busiest hour): a night trough,
# a morning rise, a lunch dip and an afternoon peak, the shape of an interactive service's day.
DAILY_SHAPE: tuple[float, ...] = (
    0.22, 0.18, 0.16, 0.15, 0.16, 0.22, 0.35, 0.55, 0.75, 0.90, 0.97, 0.93,
    0.85, 0.92, 1.00, 0.98, 0.92, 0.82, 0.72, 0.64, 0.56, 0.46, 0.36, 0.28,
)  # fmt: skip


@dataclass(frozen=True)
class Burst:
    start_s: float
    duration_s: float
    extra_rps: float
    """Requests per second added on top of the hour's rate while the burst lasts."""

    def covers(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.start_s + self.duration_s


def _lognormal_tokens(rng: random.Random, median: float, sigma: float, low: int, high: int) -> int:
    return int(min(high, max(low, round(median * math.exp(rng.gauss(0.0, sigma))))))


def _thinning(
    rng: random.Random, span_s: float, rate: Callable[[float], float], top_rps: float
) -> list[float]:
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(top_rps)
        if t >= span_s:
            return times
        if rng.random() * top_rps < rate(t):
            times.append(t)


@dataclass(frozen=True)
class DiurnalBursts:
    seed: int = 1
    span_s: float = 3600.0
    peak_rps: float = 24.0
    bursts_per_hour_of_day: float = 0.6
    burst_min_s: float = 10.0
    burst_max_s: float = 45.0
    burst_extra_share: tuple[float, float] = (0.5, 0.9)
    """Each burst adds this share of ``peak_rps`` (uniform between the two)."""

    def __post_init__(self) -> None:
        if not (self.span_s > 0 and self.peak_rps > 0 and 0 < self.burst_min_s <= self.burst_max_s):
            raise ValueError("diurnal-bursts: need span_s > 0, peak_rps > 0, 0 < burst_min_s <= burst_max_s")

    def base_rps(self, t_s: float) -> float:
        """The day's rate at ``t_s``, linear between hourly values (wrapping midnight)."""
        hour = (t_s / self.span_s) * 24.0
        i = int(hour) % 24
        frac = hour - math.floor(hour)
        return self.peak_rps * (DAILY_SHAPE[i] * (1 - frac) + DAILY_SHAPE[(i + 1) % 24] * frac)

    def bursts(self) -> list[Burst]:
        """The bursts, non-overlapping, in time order (their own random stream, so they do not move when
        the request mix changes)."""
        rng = random.Random(f"diurnal-bursts/{self.seed}/bursts")
        hour_s = self.span_s / 24.0
        out: list[Burst] = []
        t = rng.expovariate(self.bursts_per_hour_of_day / hour_s)
        while t < self.span_s:
            duration = rng.uniform(self.burst_min_s, self.burst_max_s)
            extra = rng.uniform(*self.burst_extra_share) * self.peak_rps
            out.append(Burst(t, min(duration, self.span_s - t), extra))
            t += duration + rng.expovariate(self.bursts_per_hour_of_day / hour_s)
        return out

    def rate_rps(self, t_s: float, bursts: Sequence[Burst] | None = None) -> float:
        extra = sum(b.extra_rps for b in (self.bursts() if bursts is None else bursts) if b.covers(t_s))
        return self.base_rps(t_s) + extra

    def trace(self) -> Trace:
        bursts = self.bursts()
        rng = random.Random(f"diurnal-bursts/{self.seed}/requests")
        top = self.peak_rps * (1.0 + self.burst_extra_share[1])
        times = _thinning(rng, self.span_s, lambda t: self.rate_rps(t, bursts), top)
        # Lengths log-normal around the Azure conversation trace's medians (1020 and 129 tokens) and
        # p99s (about 4100 and 600).
        requests = tuple(
            Request(
                t, _lognormal_tokens(rng, 1020, 0.6, 16, 8000), _lognormal_tokens(rng, 130, 0.66, 1, 1500)
            )
            for t in times
        )
        return _trace(f"synth:diurnal-bursts seed {self.seed}", requests)


@dataclass(frozen=True)
class LongContextChat:
    seed: int = 1
    span_s: float = 3600.0
    low_rps: float = 1.5
    high_rps: float = 4.5
    prompt_min_tokens: int = 5_000
    prompt_max_tokens: int = 20_000

    def __post_init__(self) -> None:
        if not (self.span_s > 0 and 0 < self.low_rps <= self.high_rps):
            raise ValueError("long-context: need span_s > 0 and 0 < low_rps <= high_rps")
        if not 0 < self.prompt_min_tokens <= self.prompt_max_tokens:
            raise ValueError("long-context: need 0 < prompt_min_tokens <= prompt_max_tokens")

    def rate_rps(self, t_s: float) -> float:
        """Low at both ends, high in the middle (one smooth rise and fall)."""
        return self.low_rps + (self.high_rps - self.low_rps) * math.sin(math.pi * t_s / self.span_s) ** 2

    def trace(self) -> Trace:
        rng = random.Random(f"long-context/{self.seed}")
        times = _thinning(rng, self.span_s, self.rate_rps, self.high_rps)
        lo, hi = math.log(self.prompt_min_tokens), math.log(self.prompt_max_tokens)

        def prompt() -> int:
            tokens = round(math.exp(rng.uniform(lo, hi)))
            return min(self.prompt_max_tokens, max(self.prompt_min_tokens, tokens))

        requests = tuple(Request(t, prompt(), _lognormal_tokens(rng, 200, 0.7, 1, 2000)) for t in times)
        return _trace(f"synth:long-context seed {self.seed}", requests)


def _trace(name: str, requests: tuple[Request, ...]) -> Trace:
    if not requests:
        raise TraceError(f"{name}: the generator produced no requests (span or rate too small)")
    origin = requests[0].arrival_s  # a trace's first request arrives at 0 s
    return Trace(
        name, tuple(Request(r.arrival_s - origin, r.prompt_tokens, r.output_tokens) for r in requests)
    )


SYNTHETIC: dict[str, Callable[[int], Trace]] = {
    "diurnal-bursts": lambda seed: DiurnalBursts(seed=seed).trace(),
    "long-context": lambda seed: LongContextChat(seed=seed).trace(),
}
PREFIX = "synth:"


def synthetic_trace(name: str, seed: int = 1) -> Trace:
    """One of ``SYNTHETIC`` by name (``synth:`` prefix optional) at its default parameters."""
    key = name.removeprefix(PREFIX)
    if key not in SYNTHETIC:
        known = ", ".join(PREFIX + n for n in SYNTHETIC)
        raise TraceError(f"unknown synthetic trace {name!r}; choose from {known}")
    return SYNTHETIC[key](seed)


def write_csv(trace: Trace, path: Path) -> None:
    """The generic format (``arrival_s,prompt_tokens,output_tokens``), readable by ``load_trace``."""
    lines = ["arrival_s,prompt_tokens,output_tokens"]
    lines += [f"{r.arrival_s:.4f},{r.prompt_tokens},{r.output_tokens}" for r in trace.requests]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.synth", description="Write a synthetic trace as CSV.")
    ap.add_argument("name", choices=sorted(SYNTHETIC))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="CSV file to write")
    args = ap.parse_args(argv)
    trace = synthetic_trace(args.name, args.seed)
    try:
        write_csv(trace, args.out)
    except OSError as exc:
        print(f"sim.synth: error: {exc}", file=sys.stderr)
        return 1
    print(f"{trace.name}: {len(trace.requests)} requests over {trace.span_s / 60:.1f} min -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
