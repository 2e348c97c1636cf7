"""The simulator drives the real scaler decide() and powercap step() through its adapters."""

from __future__ import annotations

import pytest

from gpumodel.model import H100_LLAMA_8B, H100X4_LLAMA_70B
from powercap.controller import REASON_SLO_BREACH
from powercap.settings import Settings
from scaler.policy import decide
from scaler.signals import LEARNED_CAPACITY_MAX_EXTRAPOLATION as MOST
from sim.eo import CapOptions, EoCapController, EoTrigger, controller_config
from sim.observe import N_ITL_BUCKETS, SimPrometheus, bucket_index, itl_bucket_index, ttft_bucket_index
from sim.policies import CapReading

TOKENS_PER_REQUEST = 500


def busy_prometheus(
    latency_s: float, rps: int = 10, replicas: int = 2, seconds: int = 600, waiting: int = 0
) -> SimPrometheus:
    prom = SimPrometheus(step_s=1.0)
    for _ in range(seconds):
        prom.record_slot([bucket_index(latency_s)] * rps, arrivals=rps, ready_replicas=replicas,
                         tokens=rps * TOKENS_PER_REQUEST, waiting=waiting, running=rps)  # fmt: skip
    return prom


def test_observation_is_built_like_the_live_queries() -> None:
    trigger = EoTrigger({"latencySloSeconds": "10", "latencyQuantile": "0.99"})
    prom = busy_prometheus(latency_s=4.0)
    obs = trigger.observe(prom, 600.0)
    assert obs.current_replicas == 2
    assert obs.load_rps == pytest.approx(10.0)
    assert obs.peak_load_rps == pytest.approx(10.0)
    assert obs.latency_s is not None and 2.5 < obs.latency_s <= 5.0
    assert obs.idle_for_s == 0.0
    assert obs.demand_rps == pytest.approx(10.0)
    # tokens / replicas while the SLO held, extrapolated along the SLO headroom (bounded)
    assert obs.load_tps == pytest.approx(10.0 * TOKENS_PER_REQUEST)
    assert obs.learned_capacity_tps is not None
    assert obs.learned_capacity_tps == pytest.approx(
        5.0 * TOKENS_PER_REQUEST * MOST  # no request above the 10 s bucket bound: no budget used
    )
    assert obs.settled_replicas == 2
    assert (obs.waiting_requests, obs.running_requests, obs.kv_usage_ratio) == (0.0, 10.0, None)
    assert obs.burst_rise is None  # fewer than ten minutes of rises: no headroom from history yet
    later = trigger.observe(busy_prometheus(latency_s=4.0, seconds=900), 900.0)
    assert later.burst_rise == pytest.approx(1.0)  # a constant rate never rose
    assert obs.forecast_rps == pytest.approx(10.0)  # the trend of a constant rate is that rate
    answer = trigger.answer(prom, 600.0)
    assert answer.value == decide(obs, trigger.config).replicas
    assert answer.target == 1.0


def test_breach_scales_up_and_capacity_is_not_learned_while_breached() -> None:
    trigger = EoTrigger({"latencySloSeconds": "10", "latencyQuantile": "0.99", "replicaCapacityRps": "20"})
    prom = busy_prometheus(latency_s=30.0)
    assert trigger.observe(prom, 600.0).learned_capacity_tps is None
    answer = trigger.answer(prom, 600.0)
    assert answer.value > 2
    assert answer.reason == "slo_breach"


def test_settled_replicas_is_the_fewest_serving_over_the_settle_window() -> None:
    trigger = EoTrigger({"latencySloSeconds": "10", "breachSettleSeconds": "60"})
    prom = SimPrometheus(step_s=1.0)
    for second in range(300):
        replicas = 2 if second < 200 else 5  # three replicas became ready at 200 s
        prom.record_slot([bucket_index(20.0)] * 10, arrivals=10, ready_replicas=replicas)
    assert trigger.observe(prom, 230.0).settled_replicas == 2  # the breach answer is still settling
    assert trigger.observe(prom, 300.0).settled_replicas == 5  # a minute later it counts
    # A breach seen while the answer settles asks for no more than the first answer did.
    assert trigger.answer(prom, 230.0).value == trigger.answer(prom, 215.0).value


def test_learned_capacity_rises_with_latency_headroom() -> None:
    """At 5 rps per replica with latency far under the SLO the capacity learned is above 5 rps, so
    the policy can consolidate (the first low observation no longer sticks)."""
    trigger = EoTrigger({"latencySloSeconds": "10", "latencyQuantile": "0.99"})
    prom = busy_prometheus(latency_s=2.0, rps=20, replicas=4, seconds=900)
    obs = trigger.observe(prom, 900.0)
    assert obs.learned_capacity_tps == pytest.approx(
        5 * TOKENS_PER_REQUEST * MOST
    )  # 5 rps x min(10 / ~2, 1.5)
    # Once ten minutes of history exist (a young workload holds: scaler.policy, step 7).
    assert obs.history_minutes is not None and obs.history_minutes >= 10
    assert trigger.answer(prom, 900.0).value < 4
    assert trigger.answer(prom, 400.0).value == 4
    # A sustained queue: those minutes teach nothing, and the queue scales up before latency breaks.
    queued = busy_prometheus(latency_s=2.0, rps=20, replicas=4, waiting=8)
    assert trigger.observe(queued, 600.0).learned_capacity_tps is None
    assert trigger.answer(queued, 600.0).reason == "queue_forming"


def test_llm_native_slos_read_the_ttft_and_itl_histograms() -> None:
    trigger = EoTrigger({"ttftSloSeconds": "0.25", "itlSloSeconds": "0.025", "replicaCapacityRps": "20"})
    prom = SimPrometheus(step_s=1.0)
    itl = [0.0] * N_ITL_BUCKETS
    itl[itl_bucket_index(0.04)] = 100.0  # every token 40 ms apart: the ITL SLO breaks
    for _ in range(120):
        prom.record_slot([], arrivals=4, ready_replicas=2, ttft_buckets=[ttft_bucket_index(0.1)] * 4,
                         itl_tokens=itl, tokens=2000.0,
                         request_itl_buckets=[itl_bucket_index(0.04)] * 4)  # fmt: skip
    obs = trigger.observe(prom, 120.0)
    assert obs.latency_s is None and obs.ttft_s is not None and obs.ttft_s <= 0.1
    assert obs.itl_s is not None and 0.025 < obs.itl_s <= 0.05
    answer = trigger.answer(prom, 120.0)
    assert answer.reason == "slo_breach" and answer.value == 3


def test_the_itl_slo_reads_each_requests_mean_not_the_tokens() -> None:
    """Every token within 25 ms, but one request in four (few tokens beside a long prefill) at a 40-ms
    mean: the per-request histogram shows the breach the token histogram cannot."""
    trigger = EoTrigger({"ttftSloSeconds": "0.25", "itlSloSeconds": "0.025", "itlQuantile": "0.99",
                         "replicaCapacityRps": "20"})  # fmt: skip
    prom = SimPrometheus(step_s=1.0)
    itl = [0.0] * N_ITL_BUCKETS
    itl[itl_bucket_index(0.02)] = 1000.0
    for _ in range(120):
        prom.record_slot([], arrivals=4, ready_replicas=2, ttft_buckets=[ttft_bucket_index(0.1)] * 4,
                         itl_tokens=itl, tokens=2000.0,
                         request_itl_buckets=[itl_bucket_index(0.02)] * 3 + [itl_bucket_index(0.04)])  # fmt: skip
    obs = trigger.observe(prom, 120.0)
    assert obs.itl_s is not None and 0.025 < obs.itl_s <= 0.05
    assert obs.itl_ratio == pytest.approx(0.25 / 0.01)
    assert trigger.answer(prom, 120.0).reason == "slo_breach"


def test_idle_workload_goes_to_zero() -> None:
    trigger = EoTrigger({"latencySloSeconds": "10", "minReplicas": "0"})
    prom = SimPrometheus(step_s=1.0)
    for _ in range(400):
        prom.record_slot([], arrivals=0, ready_replicas=1)
    answer = trigger.answer(prom, 400.0)
    assert (answer.value, answer.active) == (0.0, False)


def test_cap_config_follows_the_sidecar_settings() -> None:
    config, original = controller_config(CapOptions(latency_target_s=8.0), H100_LLAMA_8B)
    defaults = Settings(latency_target_s=8.0)
    assert (config.floor, config.ceiling, original) == (200.0, 700.0, 700.0)
    assert config.max_step_down == defaults.max_step_w
    assert config.settle_s == defaults.settle_s
    per_gpu, _ = controller_config(CapOptions(latency_target_s=8.0), H100X4_LLAMA_70B)
    assert per_gpu.ceiling == 700.0  # the sidecar sets each GPU's limit
    clocks, original_mhz = controller_config(CapOptions(8.0, actuator="clocks"), H100_LLAMA_8B)
    assert (clocks.floor, clocks.ceiling, original_mhz) == (345.0, 1980.0, 1980.0)


def test_cap_controller_lowers_with_headroom_and_jumps_back_on_breach() -> None:
    caps = EoCapController(CapOptions(latency_target_s=10.0), H100X4_LLAMA_70B)
    assert caps.start(7, 0.0).power_cap_w == 4 * 700.0
    setting = caps.start(7, 0.0)
    for t in range(5, 400, 5):
        setting = caps.control(7, CapReading(float(t), latency_s=2.0, load_rps=5.0))
    assert setting.power_cap_w is not None and setting.power_cap_w < 4 * 700.0
    back = caps.control(7, CapReading(405.0, latency_s=20.0, load_rps=5.0))
    assert back.power_cap_w == 4 * 700.0
    assert REASON_SLO_BREACH == "slo_breach"
