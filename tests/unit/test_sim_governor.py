"""The clock governor in eo-sim: per-replica scrapes, the cold-start bridge, against the old loop."""

from __future__ import annotations

import random

import pytest

from gpumodel.model import H100_LLAMA_8B
from sim.engine import Policy, SimConfig, simulate
from sim.eo import EoCapController
from sim.governor import EoGovernorController, GovernorOptions
from sim.keda import HpaConfig
from sim.policies import CapReading, CapSetting, ReplicaScrape, StaticSchedule, ThresholdTrigger
from sim.scenario import Scenario, sidecar_quantile
from sim.server import ServerConfig
from sim.slo import Slos
from sim.trace import Request, Trace

SERVER = ServerConfig(H100_LLAMA_8B, cold_start_s=60.0)
OPTIONS = GovernorOptions(itl_target_s=0.025, ttft_target_s=0.25, quantile=0.99)


def poisson(rate_rps: float, start_s: float, end_s: float, rng: random.Random) -> list[Request]:
    out: list[Request] = []
    t = start_s
    while True:
        t += rng.expovariate(rate_rps)
        if t >= end_s:
            return out
        out.append(Request(t, 300, 120))


def step_trace() -> Trace:
    rng = random.Random(3)
    reqs = [Request(0.0, 300, 120), *poisson(2.0, 0.0, 300.0, rng), *poisson(16.0, 300.0, 600.0, rng)]
    return Trace("step", tuple(sorted(reqs, key=lambda r: r.arrival_s)))


class Recorder:
    """Wraps the governor and records what each control call saw and answered."""

    def __init__(self, inner: EoGovernorController) -> None:
        self.inner = inner
        self.name = inner.name
        self.interval_s = inner.interval_s
        self.window_s = inner.window_s
        self.quantile = inner.quantile
        self.calls: list[tuple[CapReading, CapSetting]] = []

    def start(self, replica_id: int, now_s: float) -> CapSetting:
        return self.inner.start(replica_id, now_s)

    def control(self, replica_id: int, reading: CapReading) -> CapSetting:
        setting = self.inner.control(replica_id, reading)
        self.calls.append((reading, setting))
        return setting


def test_governor_lowers_clocks_at_light_load_from_the_replicas_own_scrape() -> None:
    rng = random.Random(1)
    trace = Trace("light", tuple([Request(0.0, 300, 120), *poisson(2.0, 0.0, 400.0, rng)]))
    rec = Recorder(EoGovernorController(OPTIONS, SERVER.profile))
    simulate(trace, SERVER, Policy("gov", schedule=StaticSchedule(1), caps=rec), SimConfig())
    scrapes = [r.scrape for r, _ in rec.calls]
    assert all(s is not None for s in scrapes)
    assert max(s.running for s in scrapes if s is not None) >= 1
    late = [s.locked_clock_mhz for r, s in rec.calls if r.now_s > 200]
    assert late and all(c is not None and c < 1500 for c in late)
    assert rec.inner.reasons["feedforward"] > 0


def run_step(bridge: bool) -> Recorder:
    rec = Recorder(EoGovernorController(GovernorOptions(0.025, 0.25, bridge=bridge), SERVER.profile))
    policy = Policy(
        "eo-like",
        trigger=ThresholdTrigger(threshold_rps=6.0),
        caps=rec,
        hpa=HpaConfig(min_replicas=1, max_replicas=8),
        initial_replicas=1,
    )
    simulate(step_trace(), SERVER, policy, SimConfig())
    return rec


def test_bridge_holds_the_ceiling_while_new_replicas_start_and_releases_after() -> None:
    rec = run_step(bridge=True)
    up = [(r, s) for r, s in rec.calls if r.scaling_up]
    assert up, "the load step must start new replicas"
    assert all(s.locked_clock_mhz is None for _, s in up)  # unlocked: the ceiling
    assert rec.inner.reasons["scale_up_bridge"] > 0
    # Once every replica serves, clocks come down again.
    last_up = max(r.now_s for r, _ in up)
    after = [s.locked_clock_mhz for r, s in rec.calls if r.now_s > last_up + 120 and not r.scaling_up]
    assert any(c is not None for c in after)


def test_without_the_bridge_replicas_run_below_the_ceiling_while_scaling_up() -> None:
    rec = run_step(bridge=False)
    up = [(r, s) for r, s in rec.calls if r.scaling_up]
    assert up
    assert rec.inner.reasons["scale_up_bridge"] == 0
    assert any(s.locked_clock_mhz is not None for _, s in up)


def test_controller_reads_a_scrape_window() -> None:
    ctl = EoGovernorController(OPTIONS, SERVER.profile)
    ctl.start(0, 0.0)
    zeros_t = (0.0,) * 23
    zeros_i = (0.0,) * 20
    first = ReplicaScrape(4, 0, zeros_t, zeros_i, 0.0, None)
    ctl.control(0, CapReading(5.0, None, 1.0, first, False))
    ttft = list(zeros_t)
    ttft[3] = 20.0  # 20 first tokens under 20 ms
    itl = list(zeros_i)
    itl[0] = 400.0
    # 20 prompts of 500 tokens over the 5 s interval, 15 ms each to the first token.
    second = ReplicaScrape(4, 0, tuple(ttft), tuple(itl), 400 * 0.008, None, 20 * 0.015, 20 * 500.0)
    setting = ctl.control(0, CapReading(10.0, None, 1.0, second, False))
    assert setting.locked_clock_mhz is not None and setting.locked_clock_mhz < 1980
    # A queue raises at once.
    queued = ReplicaScrape(256, 9, tuple(ttft), tuple(itl), 400 * 0.008, None, 20 * 0.015, 20 * 500.0)
    assert ctl.control(0, CapReading(15.0, None, 1.0, queued, False)).locked_clock_mhz is None


def test_first_tokens_without_prompt_tokens_read_as_a_frozen_counter() -> None:
    ctl = EoGovernorController(OPTIONS, SERVER.profile)
    ctl.start(0, 0.0)
    zeros_t, zeros_i = (0.0,) * 23, (0.0,) * 20
    ctl.control(0, CapReading(5.0, None, 1.0, ReplicaScrape(4, 0, zeros_t, zeros_i, 0.0, None), False))
    ttft = list(zeros_t)
    ttft[3] = 20.0
    itl = list(zeros_i)
    itl[0] = 400.0
    frozen = ReplicaScrape(4, 0, tuple(ttft), tuple(itl), 400 * 0.008, None, 20 * 0.015, 0.0)
    assert ctl.control(0, CapReading(10.0, None, 1.0, frozen, False)).locked_clock_mhz is None
    assert ctl.reasons["prompt_counter_frozen"] == 1


# -- what eo-sim's eo and caps-only runs hold ----------------------------------------------------------
def _scenario(slos: Slos, actuator: str = "clocks") -> Scenario:
    server = ServerConfig(H100_LLAMA_8B)
    trace = Trace("t", (Request(0.0, 100, 10),))
    return Scenario(trace, server, slos, capacity_rps=5.0, policy_slo_s=10.0, cap_actuator=actuator)


def test_eo_and_caps_only_run_the_sidecars_default_the_governor_with_the_bridge() -> None:
    sc = _scenario(Slos(ttft_s=0.25, itl_s=0.025))
    eo = sc.eo_policy("eo", sidecar=True)
    assert isinstance(eo.caps, EoGovernorController) and eo.caps.options.bridge
    assert eo.trigger is not None  # the scaler too
    ablation = sc.eo_policy("eo", sidecar=True, bridge=False)
    assert isinstance(ablation.caps, EoGovernorController) and not ablation.caps.options.bridge
    alone = sc.sidecar_alone(3)
    assert isinstance(alone.caps, EoGovernorController) and alone.schedule is not None
    assert alone.schedule.replicas_at(0.0) == 3 and alone.name == "caps-only"
    assert sc.eo_policy("eo-replicas").caps is None


def test_beside_the_scaler_the_governor_spends_half_the_error_budget_alone_all_of_it() -> None:
    assert sidecar_quantile(0.99) == pytest.approx(0.995)
    assert sidecar_quantile(0.9) == pytest.approx(0.95)
    sc = _scenario(Slos(ttft_s=0.25, itl_s=0.025))  # the scenario's quantile: 0.99
    eo = sc.eo_policy("eo", sidecar=True)
    assert isinstance(eo.caps, EoGovernorController)
    assert eo.caps.options.quantile == pytest.approx(0.995)
    alone = sc.sidecar_alone(3)
    assert isinstance(alone.caps, EoGovernorController)
    assert alone.caps.options.quantile == pytest.approx(0.99)


def test_without_a_ttft_or_itl_slo_or_with_the_power_actuator_the_sidecar_runs_its_loop() -> None:
    for sc in (_scenario(Slos(e2e_s=10.0)), _scenario(Slos(ttft_s=0.25, itl_s=0.025), "power")):
        assert isinstance(sc.eo_policy("eo", sidecar=True).caps, EoCapController)
        assert isinstance(sc.sidecar_alone(2).caps, EoCapController)
