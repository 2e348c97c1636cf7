"""SLO objectives, per-request latencies and attainment (per SLO and within all at once)."""

from __future__ import annotations

import math
import random

import pytest

from gpumodel.model import H100_LLAMA_8B
from sim.observe import ITL_BUCKETS_S, TTFT_BUCKETS_S
from sim.scenario import default_itl_slo_s, default_slos, default_ttft_slo_s
from sim.server import ServerConfig
from sim.slo import RequestLatencies, Slos, attainment
from sim.trace import Request, Trace


def test_at_least_one_positive_slo() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Slos()
    with pytest.raises(ValueError, match="ITL"):
        Slos(itl_s=0.0)
    with pytest.raises(ValueError, match="TTFT"):
        Slos(ttft_s=math.nan)
    slos = Slos(ttft_s=0.5, e2e_s=10.0)
    assert slos.given() == [("ttft", 0.5), ("e2e", 10.0)]
    assert slos.describe(0.99) == "p99 TTFT <= 0.5 s, end-to-end <= 10 s"


def test_itl_is_decode_time_over_the_tokens_after_the_first() -> None:
    lat = RequestLatencies.of([0.0, 0.0, 0.0], [0.5, 0.2, math.nan], [2.5, 0.2, math.nan], [5, 1, 10])
    assert lat.itl_s[0] == pytest.approx(0.5)  # 2 s over 4 intervals
    assert math.isnan(lat.itl_s[1])  # one token: no interval
    assert math.isnan(lat.itl_s[2])  # never finished
    assert lat.within("itl", 0.4) == [False, True, False]  # the single-token one cannot miss; unfinished does
    assert lat.within("ttft", 0.3) == [False, True, False]


@pytest.mark.parametrize("seed", range(5))
def test_all_slo_attainment_is_at_most_each(seed: int) -> None:
    rng = random.Random(seed)
    n = 200
    first = [rng.uniform(0, 2) if rng.random() > 0.05 else math.nan for _ in range(n)]
    end = [f + rng.uniform(0, 20) for f in first]
    lat = RequestLatencies.of([0.0] * n, first, end, [rng.randint(1, 300) for _ in range(n)])
    got = attainment(lat, Slos(ttft_s=1.0, itl_s=0.05, e2e_s=10.0))
    assert got.ttft is not None and got.itl is not None and got.e2e is not None
    assert got.all <= min(got.ttft, got.itl, got.e2e)
    assert got.all >= got.ttft + got.itl + got.e2e - 2  # union bound
    assert got.ttft <= 0.95 + 0.05  # the unfinished ~5% miss everything
    assert attainment(lat, Slos(ttft_s=1.0)).all == got.ttft


def test_default_slos_are_twice_the_unloaded_p99_on_a_vllm_bucket() -> None:
    server = ServerConfig(H100_LLAMA_8B)
    trace = Trace("t", tuple(Request(float(i), 256 + 40 * i, 50) for i in range(101)))
    # Unloaded TTFT p99: (prompt - 256) / 40,000 tokens/s for the 99th request: 99 * 40 / 40,000 = 0.099 s.
    assert default_ttft_slo_s(trace, server) == 0.25  # 2 x 0.099 = 0.198 -> the 0.25 s bucket
    assert default_ttft_slo_s(trace, server) in TTFT_BUCKETS_S
    # Unloaded ITL: one batch-1 iteration, 6.76 ms; twice that is 13.5 ms -> the 25 ms bucket.
    assert default_itl_slo_s(trace, server) == 0.025 and 0.025 in ITL_BUCKETS_S
    slos = default_slos(trace, server)
    assert (slos.ttft_s, slos.itl_s, slos.e2e_s) == (0.25, 0.025, None)
