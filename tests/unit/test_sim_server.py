"""The server model against gpumodel: constant batch, cold start, queueing, routing."""

from __future__ import annotations

import pytest

from gpumodel.model import H100_LLAMA_8B, operating_point, prefill_point
from sim.observe import ITL_BUCKETS_S, itl_bucket_index
from sim.server import Cluster, ServerConfig
from sim.slo import RequestLatencies
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


@pytest.mark.parametrize("batch", [8, 128])
def test_itl_is_the_iteration_time_of_the_batch(batch: int) -> None:
    """Alone in decode (no prefill in flight), every token after the first takes one iteration at the
    batch: the per-request mean ITL and the ITL histogram both say ``t(b)``, and ITL grows with b."""
    out = 201
    reqs = tuple(Request(0.0, 0, out) for _ in range(batch))
    cluster = Cluster(ServerConfig(P, max_batch=batch, chunk_tokens=batch + 2048), reqs)
    cluster.scale_to(1, 0.0, warm=True)
    tokens = [0.0] * (len(ITL_BUCKETS_S) + 1)
    t = 0.0
    while t < 10.0:
        outcome = cluster.step(t, t + 0.25)
        if outcome.itl_tokens is not None:
            tokens = [a + b for a, b in zip(tokens, outcome.itl_tokens, strict=True)]
        t += 0.25
    log = cluster.log
    itl = RequestLatencies.of(log.arrival_s, log.first_token_s, log.end_s, [out] * batch).itl_s
    expected = operating_point(P, batch).iteration_time_s
    assert sum(itl) / batch == pytest.approx(expected, rel=0.01)
    assert sum(tokens) == pytest.approx(batch * (out - 1), rel=0.01)
    assert tokens[itl_bucket_index(expected)] == pytest.approx(sum(tokens), rel=0.02)


def test_prefill_in_flight_raises_the_itl_of_running_requests() -> None:
    """A long prompt arriving while others decode shares their iterations (chunked prefill)."""
    decoders = tuple(Request(0.0, 0, 101) for _ in range(8))
    results = []
    for extra in ((), (Request(0.5, 30_000, 2),)):
        reqs = decoders + extra
        cluster = Cluster(ServerConfig(P), reqs)
        cluster.scale_to(1, 0.0, warm=True)
        run(cluster, 10.0)
        log = cluster.log
        itl = RequestLatencies.of(
            log.arrival_s, log.first_token_s, log.end_s, [r.output_tokens for r in reqs]
        )
        results.append(max(itl.itl_s[:8]))
    alone, shared = results
    assert shared > 2 * alone


def test_ttft_includes_waiting_for_a_batch_slot() -> None:
    reqs = tuple(Request(0.0, 0, 401) for _ in range(3))
    cluster = Cluster(ServerConfig(P, max_batch=2, chunk_tokens=2048), reqs)
    cluster.scale_to(1, 0.0, warm=True)
    run(cluster, 10.0)
    ttft = [f - a for a, f in zip(cluster.log.arrival_s, cluster.log.first_token_s, strict=True)]
    assert ttft[2] > ttft[1] + 400 * operating_point(P, 2).iteration_time_s * 0.9  # queued behind both


def test_each_finished_request_observes_its_mean_itl_once() -> None:
    """The per-request histogram (vLLM's request_time_per_output_token_seconds): one observation per
    finished request, in the bucket of its mean ITL; a request of one token observes 0 s."""
    # Eight long decoders, then two short requests decoding while a long prompt's prefill shares their
    # iterations.
    decoders = tuple(Request(0.0, 0, 301) for _ in range(8))
    reqs = (*decoders, Request(0.5, 0, 3), Request(0.5, 0, 3), Request(0.505, 30_000, 3), Request(1.0, 0, 1))
    cluster = Cluster(ServerConfig(P), reqs)
    cluster.scale_to(1, 0.0, warm=True)
    observed: list[int] = []
    t = 0.0
    while t < 20.0:
        observed.extend(cluster.step(t, t + 0.25).request_itl_buckets)
        t += 0.25
    log = cluster.log
    itl = RequestLatencies.of(log.arrival_s, log.first_token_s, log.end_s, [r.output_tokens for r in reqs])
    expected = [itl_bucket_index(0.0 if x != x else x) for x in itl.itl_s]
    assert sorted(observed) == sorted(expected)  # each finished request once, at its own mean
    assert itl_bucket_index(0.0) in observed  # the single-token request
    # The short requests' means are well above the decoders': per request they show, per token they
    # are 4 intervals among 2,400.
    assert min(itl.itl_s[8:10]) > 2 * max(itl.itl_s[:8])
