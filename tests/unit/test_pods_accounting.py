"""Energy attribution, counter mirroring and expiry in the pure Accountant."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.pods.accounting import Accountant, Holding, PodKey, Tick, split_weights
from exporter.pods.appmetrics import AppReading, CounterSeries, HistogramReading
from exporter.pods.devices import BoardShare, Sharing

G0 = "GPU-00000000-0000-4000-8000-000000000000"
G1 = "GPU-11111111-1111-4111-8111-111111111111"
A = PodKey("ml", "a")
B = PodKey("ml", "b")
WL = {A: "wa", B: "wb"}


def hold(
    pod: PodKey, board: str, sharing: Sharing = Sharing.EXCLUSIVE, weight: float = 1.0, dev: str = ""
) -> Holding:
    return Holding(pod, "server", BoardShare(board, dev or board, sharing, weight))


def one(value: float | None) -> CounterSeries | None:
    """A reading of a counter with one series."""
    return None if value is None else {("c", ()): value}


def app(requests: float, prompt: float | None = None, gen: float | None = None) -> AppReading:
    return AppReading(one(requests), one(prompt), one(gen))


def views(acc: Accountant) -> dict[PodKey, object]:
    return {v.key: v for v in acc.pods()}


def energy(acc: Accountant) -> dict[PodKey, float]:
    return {v.key: v.gpu_energy_j for v in acc.pods()}


def test_single_holder_gets_the_boards_growth_and_jpr() -> None:
    acc = Accountant()
    acc.step(Tick(0, [hold(A, G0)], {G0: 1000.0}, {A: app(10)}, WL))
    assert energy(acc) == {A: 0.0}  # first sight of the board: baseline only
    acc.step(Tick(5, [hold(A, G0)], {G0: 3000.0}, {A: app(30)}, WL))
    (view,) = acc.pods()
    assert view.gpu_energy_j == 2000.0
    assert view.requests == 30
    assert view.joules_per_request == pytest.approx(100.0)
    acc.step(Tick(10, [hold(A, G0)], {G0: 3500.0}, {A: app(30)}, WL))
    assert acc.pods()[0].joules_per_request is None  # no request finished in the window


def test_time_sliced_gpu_splits_by_tokens_and_sums_to_the_board() -> None:
    acc = Accountant()
    h = [hold(A, G0, Sharing.TIME_SLICED, dev=f"{G0}::0"), hold(B, G0, Sharing.TIME_SLICED, dev=f"{G0}::1")]
    acc.step(Tick(0, h, {G0: 0.0}, {A: app(0, 0, 0), B: app(0, 0, 0)}, WL))
    acc.step(Tick(5, h, {G0: 1000.0}, {A: app(1, 100, 200), B: app(3, 300, 600)}, WL))
    e = energy(acc)
    assert e[A] == pytest.approx(250.0) and e[B] == pytest.approx(750.0)
    assert sum(e.values()) == pytest.approx(1000.0)


def test_shared_gpu_without_token_counts_splits_equally() -> None:
    acc = Accountant()
    h = [hold(A, G0, Sharing.TIME_SLICED), hold(B, G0, Sharing.TIME_SLICED)]
    acc.step(Tick(0, h, {G0: 0.0}, {A: app(0, 0, 0)}, WL))
    acc.step(Tick(5, h, {G0: 800.0}, {A: app(1, 100, 100)}, WL))  # B reports nothing: no token rule
    assert energy(acc) == {A: 400.0, B: 400.0}


def test_mig_instances_split_by_slices_and_count_toward_the_parent() -> None:
    acc = Accountant()
    h = [hold(A, G0, Sharing.MIG, 3.0, "MIG-a"), hold(B, G0, Sharing.MIG, 1.0, "MIG-b")]
    acc.step(Tick(0, h, {G0: 0.0, G1: 0.0}, {}, WL))
    acc.step(Tick(5, h, {G0: 400.0, G1: 999.0}, {}, WL))
    assert energy(acc) == {A: 300.0, B: 100.0}  # G1 is held by nobody: idle energy, not attributed


def test_gpu_reassigned_between_samples_follows_the_holder() -> None:
    acc = Accountant()
    acc.step(Tick(0, [hold(A, G0)], {G0: 0.0}, {}, WL))
    acc.step(Tick(5, [hold(A, G0)], {G0: 500.0}, {}, WL))
    acc.step(Tick(10, [hold(B, G0)], {G0: 800.0}, {}, WL))  # A deleted, B scheduled on G0
    acc.step(Tick(15, [hold(B, G0)], {G0: 1000.0}, {}, WL))
    e = energy(acc)
    assert e == {A: 500.0, B: 500.0}
    assert sum(e.values()) == 1000.0


def test_pod_moving_to_another_gpu_keeps_its_total() -> None:
    acc = Accountant()
    acc.step(Tick(0, [hold(A, G0)], {G0: 0.0, G1: 0.0}, {}, WL))
    acc.step(Tick(5, [hold(A, G0)], {G0: 100.0, G1: 0.0}, {}, WL))
    acc.step(Tick(10, [hold(A, G1)], {G0: 150.0, G1: 40.0}, {}, WL))
    assert energy(acc) == {A: 140.0}


def test_inference_server_restart_keeps_requests_monotonic() -> None:
    acc = Accountant()
    acc.step(Tick(0, [hold(A, G0)], {G0: 0.0}, {A: app(100, 1000, 2000)}, WL))
    acc.step(Tick(5, [hold(A, G0)], {G0: 500.0}, {A: app(110, 1100, 2200)}, WL))
    acc.step(Tick(10, [hold(A, G0)], {G0: 1000.0}, {A: app(4, 40, 80)}, WL))  # restarted: 4 since
    (view,) = acc.pods()
    assert (view.requests, view.prompt_tokens, view.generation_tokens) == (114, 1140, 2280)
    assert view.joules_per_request == pytest.approx(500 / 4)


def test_failed_read_omits_counters_and_widens_the_next_window() -> None:
    acc = Accountant()
    acc.step(Tick(0, [hold(A, G0)], {G0: 0.0}, {A: app(0, 0, 0)}, WL))
    acc.step(Tick(5, [hold(A, G0)], {G0: 500.0}, {A: None}, WL))
    (view,) = acc.pods()
    assert view.app_up is False and view.joules_per_request is None
    # Not read now: nothing mirrored is published (never the frozen value), energy still is.
    assert (view.requests, view.prompt_tokens, view.generation_tokens) == (None, None, None)
    assert view.gpu_energy_j == 500.0
    acc.step(Tick(10, [hold(A, G0)], {G0: 1000.0}, {A: app(10, 5, 5)}, WL))
    (view,) = acc.pods()
    assert view.app_up is True and view.joules_per_request == pytest.approx(100.0)
    assert (view.requests, view.prompt_tokens, view.generation_tokens) == (10, 5, 5)


def test_deleted_pod_stays_for_the_grace_period_then_goes() -> None:
    acc = Accountant(grace_s=60)
    acc.step(Tick(0, [hold(A, G0)], {G0: 0.0}, {}, WL))
    acc.step(Tick(5, [hold(A, G0)], {G0: 50.0}, {}, WL))
    acc.step(Tick(10, [], {G0: 60.0}, {}, WL))
    (view,) = acc.pods()
    assert view.gpu_energy_j == 50.0 and view.holdings == ()
    acc.step(Tick(65, [], {G0: 70.0}, {}, WL))
    assert len(acc.pods()) == 1
    acc.step(Tick(66, [], {G0: 80.0}, {}, WL))
    assert acc.pods() == []


def test_pod_without_known_workload_accumulates_but_is_not_published() -> None:
    acc = Accountant()
    acc.step(Tick(0, [hold(A, G0)], {G0: 0.0}))
    acc.step(Tick(5, [hold(A, G0)], {G0: 70.0}))
    assert acc.pods() == []
    acc.step(Tick(10, [hold(A, G0)], {G0: 100.0}, workloads=WL))
    assert energy(acc) == {A: 100.0}


def test_cpu_energy_split_by_cgroup_time() -> None:
    acc = Accountant()
    h = [hold(A, G0), hold(B, G1)]
    acc.step(Tick(0, h, {}, workloads=WL, cpu_energy_j=0.0, cpu_usage_s={A: 10.0, B: 0.0}, cpu_total_s=100.0))
    acc.step(
        Tick(5, h, {}, workloads=WL, cpu_energy_j=1000.0, cpu_usage_s={A: 15.0, B: 10.0}, cpu_total_s=140.0)
    )
    cpu = {v.key: v.cpu_energy_j for v in acc.pods()}
    assert cpu[A] == pytest.approx(1000 * 5 / 40) and cpu[B] == pytest.approx(1000 * 10 / 40)


def test_latency_histograms_are_mirrored() -> None:
    acc = Accountant()
    lat = HistogramReading(((1.0, 2), (math.inf, 3)), 4.0, 3)
    series = {("h", ()): lat}
    acc.step(Tick(0, [hold(A, G0)], {G0: 0.0}, {A: AppReading(one(3), latency=series, ttft=series)}, WL))
    (view,) = acc.pods()
    assert view.latency is not None and view.latency.buckets == lat.buckets and view.ttft is not None


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=6),
    st.lists(st.floats(min_value=0.1, max_value=7), min_size=6, max_size=6),
)
def test_split_weights_always_sum_to_one(tokens: list[float], static: list[float]) -> None:
    pods = [PodKey("n", str(i)) for i in range(len(tokens))]
    shares = split_weights(pods, dict(zip(pods, tokens, strict=True)), dict(zip(pods, static, strict=False)))
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(s >= 0 for s in shares.values())
