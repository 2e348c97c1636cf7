"""The joint optimum (replicas and clocks) against the replica-only one, replayed in the simulator."""

from __future__ import annotations

import random

from gpumodel.model import H100_LLAMA_8B
from sim.scenario import Scenario, default_slos, joint_optimum, load_test_capacity, tuned_optimum
from sim.server import ServerConfig
from sim.trace import Request, Trace


def quiet_then_busy() -> Trace:
    """Poisson arrivals: 6 minutes at 2 req/s, then 6 at 14 req/s (conversation-like lengths)."""
    rng = random.Random(5)
    reqs, t = [], 0.0
    while t < 720:
        t += rng.expovariate(2.0 if t < 360 else 14.0)
        reqs.append(Request(t, rng.randint(200, 2000), rng.randint(20, 300)))
    return Trace("quiet then busy", tuple(reqs))


def test_joint_optimum_saves_with_clocks_and_holds_the_slos() -> None:
    server = ServerConfig(H100_LLAMA_8B)
    trace = quiet_then_busy()
    slos = default_slos(trace, server)
    capacity = load_test_capacity(trace, server, slos, duration_s=300.0)
    sc = Scenario(trace, server, slos, capacity, policy_slo_s=10.0)
    replica_only = tuned_optimum(sc)
    # Capacities at two lower clocks from the same load test (shortened for the unit test).
    caps = {1980.0: capacity}
    for clock in (1386.0, 990.0):
        caps[clock] = load_test_capacity(trace, server, slos, duration_s=300.0, clock_mhz=clock,
                                         at_most_rps=capacity)  # fmt: skip
    assert 0 < caps[990.0] <= caps[1386.0] <= capacity
    joint = joint_optimum(sc, replica_only, capacities=caps)
    assert sc.holds(replica_only) and sc.holds(joint)
    assert joint.policy == "optimum" and replica_only.policy == "optimum-replicas"
    assert joint.energy_j < 0.97 * replica_only.energy_j  # the quiet half runs at lower clocks
    assert min(joint.series["mean_clock_cap_mhz"]) < 1980.0
    assert max(replica_only.series["mean_clock_cap_mhz"]) == 1980.0
