"""The server model against gpumodel: constant batch, cold start, queueing, routing."""

from __future__ import annotations

import pytest

from gpumodel.model import H100_LLAMA_8B, operating_point, prefill_point
from sim.server import Cluster, ServerConfig
from sim.trace import Request

P = H100_LLAMA_8B


def run(cluster: Cluster, until_s: float, step_s: float = 0.25) -> None:
    t = 0.0
    while t < until_s:
        cluster.step(t, t + step_s)
        t += step_s


@pytest.mark.parametrize("batch", [8, 64, 256])
def test_constant_batch_reproduces_calibrated_throughput_and_power(batch: int) -> None:
    out = 1001  # one token from prefill, 1000 decode iterations at a constant batch
    reqs = tuple(Request(0.0, 0, out) for _ in range(batch))
    cluster = Cluster(ServerConfig(P, max_batch=batch, chunk_tokens=batch + 2048), reqs)
    cluster.scale_to(1, 0.0, warm=True)
    op = operating_point(P, batch)
    run(cluster, 1000 * op.iteration_time_s + 1.0)
    ends, firsts = cluster.log.end_s, cluster.log.first_token_s
    assert max(ends) - min(ends) < 0.01  # all finish together (their 1-token prefills are FIFO)
    decode_s = sum(e - f for e, f in zip(ends, firsts, strict=True)) / batch
    assert batch * 1000 / decode_s == pytest.approx(op.tokens_per_s, rel=0.01)
    busy_energy = cluster.energy_j - cluster.idle_energy_j
    assert busy_energy / max(ends) == pytest.approx(op.power_w, rel=0.02)


def test_cap_slows_decode_and_lowers_power() -> None:
    reqs = tuple(Request(0.0, 0, 501) for _ in range(128))
    results = []
    for cap in (None, 400.0):
        cluster = Cluster(ServerConfig(P, max_batch=128), reqs)
        cluster.scale_to(1, 0.0, warm=True)
        cluster.replicas[0].power_cap_w = cap
        run(cluster, 20.0)
        results.append((cluster.log.end_s[0], cluster.energy_j - cluster.idle_energy_j))
    (t_full, e_full), (t_cap, e_cap) = results
    assert t_cap > t_full
    assert e_cap < e_full
    assert (e_cap / t_cap) == pytest.approx(operating_point(P, 128, power_cap_w=400.0).power_w, rel=0.03)


def test_cold_start_draws_idle_power_and_serves_nothing() -> None:
    cluster = Cluster(ServerConfig(P), (Request(1.0, 0, 10),))
    cluster.scale_to(1, 0.0)  # cold: ready at 60 s
    run(cluster, 59.0)
    assert cluster.energy_j == pytest.approx(59.0 * P.idle_power_w)
    assert cluster.idle_energy_j == cluster.energy_j
    run_from = 59.0
    while run_from < 70.0:
        cluster.step(run_from, run_from + 0.25)
        run_from += 0.25
    ttft = cluster.log.first_token_s[0] - 1.0
    assert 59.0 <= ttft < 59.5


def test_queueing_increases_ttft() -> None:
    # Prefill-heavy requests arriving together are prefilled FIFO: each waits for those before it.
    reqs = tuple(Request(0.0, 8256, 2) for _ in range(10))
    cluster = Cluster(ServerConfig(P), reqs)
    cluster.scale_to(1, 0.0, warm=True)
    run(cluster, 10.0)
    ttft = cluster.log.first_token_s
    one = 8000 / prefill_point(P).tokens_per_s
    assert ttft == sorted(ttft)
    assert ttft[0] == pytest.approx(one, rel=0.05)
    assert ttft[-1] == pytest.approx(10 * one, rel=0.05)


def test_max_batch_queues_the_rest() -> None:
    reqs = tuple(Request(0.0, 0, 101) for _ in range(4))
    cluster = Cluster(ServerConfig(P, max_batch=2, chunk_tokens=2048), reqs)
    cluster.scale_to(1, 0.0, warm=True)
    run(cluster, 10.0)
    ends = cluster.log.end_s
    assert ends[2] > ends[1] + 0.5  # the second pair starts when the first finishes


def test_router_picks_least_loaded_and_scale_down_drains() -> None:
    reqs = tuple(Request(0.0, 0, 200) for _ in range(4))
    cluster = Cluster(ServerConfig(P), reqs)
    cluster.scale_to(2, 0.0, warm=True)
    cluster.step(0.0, 0.25)
    assert [r.load for r in cluster.replicas] == [2, 2]
    cluster.scale_to(1, 0.25)
    assert sum(r.draining for r in cluster.replicas) == 1
    run(cluster, 10.0)
    assert len(cluster.replicas) == 1  # the drained one left once empty
    assert all(e == e for e in cluster.log.end_s)  # every request finished
