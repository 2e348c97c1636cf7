"""The live sidecar running the clock governor: a real vLLM-format /metrics peer with the batch, queue
and KV gauges, a real Prometheus API peer for the cold-start bridge, the simulated GPU.

Each test ticks the sidecar on a fake clock (``run_loop=False``), so what it decides is exact; the
reads are real HTTP on loopback.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.simulated import SimulatedGpu
from powercap.latency import LatencySourceError
from powercap.persist import StateStore
from powercap.scaleup import ScaleUpSource
from powercap.settings import StartupRefused
from powercap.sidecar import PowercapHandle, start_powercap
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.powercap import FakeClock, ScriptedSource, VllmStateFeed, settings

MAX_MHZ = 1980.0


class Scaling:
    """A Prometheus API peer answering the scale-up query: ``value`` (a string) as one series, or no
    series when None; ``status`` other than 200 is a refusal."""

    def __init__(self, value: str | None = "0") -> None:
        self.value = value
        self.status = 200
        self.queries: list[str] = []

    def __call__(self, path: str, payload: bytes) -> tuple[int, str, bytes]:
        self.queries.append(payload.decode())
        result = [] if self.value is None else [{"metric": {}, "value": [time.time(), self.value]}]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return self.status, "application/json", json.dumps(body).encode()


@pytest.fixture
def feed() -> Iterator[tuple[str, VllmStateFeed]]:
    state = VllmStateFeed()
    with hostile_server(Behaviour(handler=state)) as (url, _):
        yield url + "/metrics", state


def start(
    handles: list[PowercapHandle],
    tmp_path: Path,
    url: str,
    clock: FakeClock,
    gpu: SimulatedGpu | None = None,
    scale_up: ScaleUpSource | None = None,
    source: Any = None,
    **overrides: Any,
) -> tuple[PowercapHandle, SimulatedGpu]:
    gpu = gpu or SimulatedGpu(0, clock=clock)
    values: dict[str, Any] = {
        "actuator": "clocks",
        "ttft_target_s": 0.5,
        "itl_target_s": 0.05,
        "metrics_url": url,
        "max_step_mhz": 90.0,
        **overrides,
    }
    h = start_powercap(
        settings(tmp_path, **values),
        [gpu],
        source or ScriptedSource(latency_s=0.2),
        clock=clock,
        run_loop=False,
        scale_up=scale_up,
    )
    handles.append(h)
    return h, gpu


def ticks(h: PowercapHandle, clock: FakeClock, n: int) -> list[tuple[float, str]]:
    out = []
    for _ in range(n):
        clock.advance(5)
        d = h.sidecar.tick()
        out.append((d.setpoint, d.reason))
    return out


def decisions(h: PowercapHandle, reason: str) -> float:
    value = h.sidecar.metrics.registry.get_sample_value("eo_powercap_decisions_total", {"reason": reason})
    return value or 0.0


def test_a_small_batch_lowers_the_clock_in_bounded_steps_and_a_queue_raises_it_at_once(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle]
) -> None:
    url, state = feed
    clock = FakeClock()
    h, gpu = start(handles, tmp_path, url, clock)
    assert h.sidecar.governor is not None
    steps = ticks(h, clock, 8)
    clocks = [MAX_MHZ] + [c for c, _ in steps]
    assert clocks[-1] < MAX_MHZ, steps
    assert all(b >= a - 90.0 for a, b in itertools.pairwise(clocks)), "bounded steps down"
    assert "feedforward" in {r for _, r in steps}
    assert gpu.locked_sm_clock_mhz is not None and gpu.locked_sm_clock_mhz <= clocks[-1]
    assert decisions(h, "feedforward") >= 1
    # A queue forms: the ceiling in the very next interval, clocks unlocked.
    state.waiting = 3
    (setpoint, reason), *_ = ticks(h, clock, 1)
    assert (setpoint, reason) == (MAX_MHZ, "queue_forming")
    assert gpu.locked_sm_clock_mhz is None
    assert decisions(h, "queue_forming") == 1


@pytest.mark.parametrize("bad", ["nan", "garbage"])
def test_a_gauge_that_is_not_a_number_or_an_unparsable_page_puts_the_ceiling_back(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle], bad: str
) -> None:
    url, state = feed
    clock = FakeClock()
    h, gpu = start(handles, tmp_path, url, clock)
    ticks(h, clock, 6)
    assert gpu.locked_sm_clock_mhz is not None
    setattr(state, bad, True)
    (setpoint, reason), *_ = ticks(h, clock, 1)
    assert (setpoint, reason) == (MAX_MHZ, "state_unusable")
    assert gpu.locked_sm_clock_mhz is None
    # It stays there while the state is unusable: never a lower clock on bad input.
    assert all(c == MAX_MHZ for c, _ in ticks(h, clock, 3))


def test_frozen_gauges_while_requests_run_put_the_ceiling_back(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle]
) -> None:
    url, _ = feed
    clock = FakeClock()
    h, gpu = start(handles, tmp_path, url, clock)
    # Same gauges for over a minute (the counters still move, so the data is fresh): frozen.
    reasons = [r for _, r in ticks(h, clock, 15)]
    assert reasons[-1] == "state_frozen"
    assert gpu.locked_sm_clock_mhz is None


def test_the_cold_start_bridge_holds_the_ceiling_while_the_workload_scales_up(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle]
) -> None:
    url, _ = feed
    answer = Scaling("0")
    with hostile_server(Behaviour(handler=answer)) as (prom, _):
        clock = FakeClock()
        h, gpu = start(
            handles, tmp_path, url, clock, workload="llama-chat", pod_namespace="inference",
            prometheus_url=prom,
        )  # fmt: skip
        ticks(h, clock, 6)
        lowered = gpu.locked_sm_clock_mhz
        assert lowered is not None
        answer.value = "2"  # desired 2 above current: new replicas are cold-starting
        steps = ticks(h, clock, 3)
        assert steps == [(MAX_MHZ, "scale_up_bridge")] + [(MAX_MHZ, "scale_up_bridge")] * 2
        assert gpu.locked_sm_clock_mhz is None
        registry = h.sidecar.metrics.registry
        assert registry.get_sample_value("eo_powercap_workload_scaling_up") == 1.0
        assert decisions(h, "scale_up_bridge") == 3
        # The query is eo-scaler's decision for this workload, only while its trigger enforces.
        sent = answer.queries[-1]
        assert "eo_scaler_desired_replicas" in sent and "llama-chat" in sent and "enforce" in sent
        answer.value = "0"  # the new replicas serve: back to the feedforward
        assert ticks(h, clock, 1)[0][1] in ("feedforward", "feedforward_hold")


@pytest.mark.parametrize("trouble", ["no-series", "nan", "refused", "unreachable"])
def test_an_unanswered_bridge_query_neither_bridges_nor_blocks_the_feedforward(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle], trouble: str
) -> None:
    url, _ = feed
    answer = Scaling("NaN" if trouble == "nan" else None if trouble == "no-series" else "3")
    if trouble == "refused":
        answer.status = 503
    with hostile_server(Behaviour(handler=answer)) as (prom, _):
        target = "http://127.0.0.1:9" if trouble == "unreachable" else prom
        clock = FakeClock()
        h, gpu = start(
            handles, tmp_path, url, clock, workload="llama-chat", pod_namespace="inference",
            prometheus_url=target,
        )  # fmt: skip
        steps = ticks(h, clock, 6)
    assert "scale_up_bridge" not in {r for _, r in steps}
    assert gpu.locked_sm_clock_mhz is not None, "unknown is no reason to hold the ceiling either"
    value = h.sidecar.metrics.registry.get_sample_value("eo_powercap_workload_scaling_up")
    assert value is not None and math.isnan(value)


def test_a_hanging_state_reader_costs_at_most_the_interval_and_holds_the_ceiling(
    tmp_path: Path, handles: list[PowercapHandle]
) -> None:
    with hostile_server(Behaviour(mode="hang")) as (url, _):
        clock = FakeClock()
        h, gpu = start(handles, tmp_path, url + "/metrics", clock, interval_s=1.0, scrape_timeout_s=0.5)
        clock.advance(5)
        began = time.monotonic()
        d = h.sidecar.tick()
        took = time.monotonic() - began
    assert took < 1.0 + 0.5, "one tick's reads together stay within one interval"
    assert (d.setpoint, d.reason) == (MAX_MHZ, "state_unusable")
    assert gpu.locked_sm_clock_mhz is None


def test_no_usable_data_still_restores_after_stale_after(
    tmp_path: Path, handles: list[PowercapHandle]
) -> None:
    feed = VllmStateFeed()
    feed.frozen = True  # no first token, no output token: no latency in any window

    class Failing:
        def read(self, now_s: float) -> Any:
            raise LatencySourceError("down")

    with hostile_server(Behaviour(handler=feed)) as (url, _):
        clock = FakeClock()
        h, gpu = start(handles, tmp_path, url + "/metrics", clock, source=Failing())
        reasons = [r for _, r in ticks(h, clock, 7)]
    assert reasons[-1] == "stale_metrics"
    assert h.sidecar.state.mode == "restored"
    assert gpu.locked_sm_clock_mhz is None


def test_the_budget_guard_holds_a_power_limit_beside_the_clocks_and_both_are_restored(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle]
) -> None:
    url, state = feed
    clock = FakeClock()
    h, gpu = start(handles, tmp_path, url, clock, power_budget_w=450.0)
    ticks(h, clock, 6)
    assert gpu.power_limit_mw() == 450_000
    assert gpu.locked_sm_clock_mhz is not None
    record = StateStore(tmp_path / "state").load(gpu.uuid)
    assert record is not None and record.status == "controlling"
    assert record.original_power_limit_mw == 700_000 and record.actuator == "clocks"
    registry = h.sidecar.metrics.registry
    assert registry.get_sample_value("eo_powercap_target_watts", {"uuid": gpu.uuid}) == 450.0
    # A queue raises the clocks to the ceiling; the budget stays: it is the operator's, not latency's.
    state.waiting = 5
    ticks(h, clock, 1)
    assert gpu.locked_sm_clock_mhz is None and gpu.power_limit_mw() == 450_000
    # Stop restores both actuators and says so in the state file.
    assert h.stop()
    assert gpu.power_limit_mw() == 700_000 and gpu.locked_sm_clock_mhz is None
    record = StateStore(tmp_path / "state").load(gpu.uuid)
    assert record is not None and record.status == "restored"


def test_through_the_agent_both_actuators_are_requested_and_nothing_is_set(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle]
) -> None:
    url, _ = feed
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock, privileged=False)
    h, _ = start(handles, tmp_path, url, clock, gpu=gpu, apply_via="agent", power_budget_w=450.0)
    steps = ticks(h, clock, 6)
    registry = h.sidecar.metrics.registry
    clock_hz = registry.get_sample_value("eo_powercap_requested_sm_clock_hertz", {"uuid": gpu.uuid})
    watts = registry.get_sample_value("eo_powercap_requested_watts", {"uuid": gpu.uuid})
    assert clock_hz == steps[-1][0] * 1e6 and clock_hz < MAX_MHZ * 1e6
    assert watts == 450.0
    assert gpu.set_calls == []
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").glob("*.json"))


def test_dry_run_governs_publishes_and_sets_nothing(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle]
) -> None:
    url, _ = feed
    clock = FakeClock()
    h, gpu = start(handles, tmp_path, url, clock, dry_run=True, power_budget_w=450.0)
    steps = ticks(h, clock, 6)
    assert steps[-1][0] < MAX_MHZ and gpu.set_calls == []
    registry = h.sidecar.metrics.registry
    assert registry.get_sample_value("eo_powercap_target_sm_clock_hertz", {"uuid": gpu.uuid}) == (
        steps[-1][0] * 1e6
    )
    assert registry.get_sample_value("eo_powercap_requested_sm_clock_hertz", {"uuid": gpu.uuid}) is None


def test_without_a_target_it_is_the_feedback_loop_as_before(
    tmp_path: Path, handles: list[PowercapHandle]
) -> None:
    clock = FakeClock()
    h, _ = start(
        handles, tmp_path, "http://127.0.0.1:9/metrics", clock, ttft_target_s=None, itl_target_s=None
    )
    assert h.sidecar.governor is None
    # The server is unreachable but the feedback loop never reads it: latency comes from its source.
    assert {r for _, r in ticks(h, clock, 3)} <= {"headroom", "settling", "deadband"}


def test_the_governor_refuses_the_power_actuator_naming_the_flags(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--actuator clocks"):
        settings(tmp_path, ttft_target_s=0.5)
    with pytest.raises(ValueError, match="--control governor needs"):
        settings(tmp_path, control="governor", actuator="clocks")
    with pytest.raises(ValueError, match="--power-budget-watts"):
        settings(tmp_path, power_budget_w=400.0)
    with pytest.raises(ValueError, match="--workload"):
        settings(tmp_path, workload='x"} or vector(1) #', actuator="clocks")
    assert StartupRefused  # the CLI turns these into exit 2 with the flags named


def test_ttft_and_itl_windows_keep_the_data_fresh_without_an_end_to_end_latency(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle]
) -> None:
    url, _ = feed
    clock = FakeClock()
    # No request finished end to end (long generations), but first tokens and output tokens flow.
    h, gpu = start(handles, tmp_path, url, clock, source=ScriptedSource(latency_s=None))
    reasons = [r for _, r in ticks(h, clock, 10)]  # 50 s, past stale-after (30 s)
    assert "stale_metrics" not in reasons
    assert h.sidecar.state.mode == "controlling" and gpu.locked_sm_clock_mhz is not None
