"""The live sidecar's prompt-rate feedforward over a real HTTP vLLM /metrics page
(``vllm:prompt_tokens_total`` with the TTFT histogram): a step in the prompt rate raises the clock in
the next tick, and a missing or frozen prompt counter puts the ceiling back with its reason. The
reader's rates themselves are checked against the page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.simulated import SimulatedGpu
from powercap.serverstate import ServerStateSource
from powercap.sidecar import PowercapHandle, start_powercap
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.powercap import FakeClock, ScriptedSource, VllmStateFeed, settings

MAX_MHZ = 1980.0
INTERVAL_S = 5.0
LAST_RATE: dict[int, float] = {}
"""Per feed, the prompt tokens per second it served over the previous tick."""


@pytest.fixture
def feed() -> Iterator[tuple[str, VllmStateFeed]]:
    state = VllmStateFeed()
    # 20 prompts of 2000 tokens per 5 s scrape: 8,000 prompt tokens/s, a fifth of the prior's prefill.
    state.prompt_each = 2000.0
    with hostile_server(Behaviour(handler=state)) as (url, _):
        yield url + "/metrics", state


def start(handles: list[PowercapHandle], tmp_path: Path, url: str, clock: FakeClock) -> PowercapHandle:
    """The sidecar on one simulated GPU; ``ticks`` makes the page's TTFT follow the clock it locks."""
    values: dict[str, Any] = {
        "actuator": "clocks",
        "ttft_target_s": 0.5,
        "itl_target_s": 0.05,
        "metrics_url": url,
    }
    h = start_powercap(
        settings(tmp_path, **values),
        [SimulatedGpu(0, clock=clock)],
        ScriptedSource(latency_s=0.2),
        clock=clock,
        run_loop=False,
    )
    handles.append(h)
    return h


def ticks(h: PowercapHandle, clock: FakeClock, state: VllmStateFeed, n: int) -> list[tuple[float, str]]:
    out = []
    for _ in range(n):
        state.kv += 0.001  # KV use moves a little between scrapes, as a live server's does: not frozen
        # Prefill is compute-bound: the first tokens take longer as the clock lowers, and longer with
        # more prompts queued (M/M/1 at the prior's 40,000 tokens/s at the top clock).
        gpu = h.sidecar.gpus[0].device
        assert isinstance(gpu, SimulatedGpu)
        locked = gpu.locked_sm_clock_mhz or MAX_MHZ
        per_token = 1.0 / (40_000.0 * locked / MAX_MHZ)
        # The queue of the interval before: a load step shows in the first tokens an interval late.
        rho = min(0.95, LAST_RATE.get(id(state), 0.0) * per_token)
        LAST_RATE[id(state)] = state.per_scrape * state.prompt_each / INTERVAL_S
        state.ttft_s = state.prompt_each * per_token / (1.0 - rho)
        clock.advance(INTERVAL_S)
        d = h.sidecar.tick()
        out.append((d.setpoint, d.reason))
    return out


def test_a_prompt_rate_step_raises_the_clock_in_the_next_tick(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle]
) -> None:
    url, state = feed
    clock = FakeClock()
    h = start(handles, tmp_path, url, clock)
    steps = ticks(h, clock, state, 45)
    before, reason = steps[-1]
    assert before < MAX_MHZ and reason in ("feedforward", "feedforward_hold"), steps
    # 1.5x the requests (same prompt sizes) from now on: the next scrape counts them and the clock rises.
    state.per_scrape *= 1.5
    (after, reason), *_ = ticks(h, clock, state, 1)
    assert after > before and reason == "feedforward"
    gs = h.sidecar.governor_state
    assert gs is not None and gs.prompt is not None and gs.prompt.tokens_per_s == pytest.approx(12_000.0)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("prompt_missing", "prompt_rate_unusable"), ("prompt_frozen", "prompt_counter_frozen")],
)
def test_a_missing_or_frozen_prompt_counter_puts_the_ceiling_back(
    tmp_path: Path, feed: tuple[str, VllmStateFeed], handles: list[PowercapHandle], fault: str, reason: str
) -> None:
    url, state = feed
    clock = FakeClock()
    h = start(handles, tmp_path, url, clock)
    ticks(h, clock, state, 25)
    assert h.sidecar.state.setpoint < MAX_MHZ
    registry = h.sidecar.metrics.registry
    before = registry.get_sample_value("eo_powercap_decisions_total", {"reason": reason}) or 0.0
    setattr(state, fault, True)
    assert ticks(h, clock, state, 2) == [(MAX_MHZ, reason)] * 2
    assert registry.get_sample_value("eo_powercap_decisions_total", {"reason": reason}) == before + 2


def test_the_reader_gives_the_prompt_rate_first_tokens_and_their_mean_ttft(
    feed: tuple[str, VllmStateFeed],
) -> None:
    url, state = feed
    source = ServerStateSource(url, "vllm", window_s=60.0)
    first = source.read(0.0)
    assert first.prompt is not None and first.prompt.tokens_per_s is None  # no rate from one scrape
    second = source.read(5.0)
    third = source.read(10.0)
    for sample in (second, third):
        p = sample.prompt
        assert p is not None and p.usable() and not p.frozen()
        assert p.tokens_per_s == pytest.approx(20 * 2000.0 / 5.0)
        assert p.first_tokens == pytest.approx(20.0)
        assert p.ttft_mean_s == pytest.approx(state.ttft_s)
        assert p.window_mean_tokens == pytest.approx(2000.0)
        assert sample.interval_s == pytest.approx(5.0)
    assert third.prompt is not None and third.prompt.window_tokens_per_s == pytest.approx(8000.0)
    state.prompt_missing = True
    missing = source.read(15.0)
    assert missing.prompt is not None and missing.prompt.tokens_per_s is None and not missing.prompt.usable()
