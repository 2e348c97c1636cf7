"""The pure counter rules: GPU energy never goes backwards, RAPL wraps once, power integrates."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.counters import PowerIntegrator, ResettableCounter, WrappingCounter
from exporter.simload import LoadPattern, parse_load_pattern


def test_resettable_counter_starts_at_raw_and_follows_growth() -> None:
    c = ResettableCounter()
    assert c.update(5_000) == 5_000
    assert c.update(7_500) == 7_500


def test_resettable_counter_treats_a_decrease_as_growth_since_the_reset() -> None:
    c = ResettableCounter()
    c.update(10_000)
    c.update(12_000)
    # Driver reloaded: NVML restarted at 0 and has counted 300 mJ since.
    assert c.update(300) == 12_300
    assert c.update(1_300) == 13_300


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=50))
def test_resettable_counter_is_monotonic_whatever_the_raw_readings(raws: list[int]) -> None:
    c = ResettableCounter()
    totals = [c.update(r) for r in raws]
    assert all(b >= a for a, b in itertools.pairwise(totals))


def test_resettable_counter_rejects_negative_readings() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        ResettableCounter().update(-1)


def test_wrapping_counter_adds_the_range_on_wraparound() -> None:
    c = WrappingCounter(max_range=1_000)
    assert c.update(900) == 900
    assert c.update(950) == 950
    # Wrapped: 950 -> 1000 (50) then 0 -> 20 (20).
    assert c.update(20) == 1_020


def test_power_integrator_uses_trapezoids_and_ignores_backward_time() -> None:
    p = PowerIntegrator()
    assert p.update(10.0, 100.0) == 0.0
    assert p.update(12.0, 300.0) == pytest.approx(400.0)  # (100 + 300) / 2 * 2 s
    assert p.update(11.0, 300.0) == pytest.approx(400.0)  # clock went backwards: skipped
    assert p.update(12.0, 300.0) == pytest.approx(700.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("idle", LoadPattern("idle")),
        ("constant:32", LoadPattern("constant", batch=32.0)),
        ("sine:60:128", LoadPattern("sine", batch=128.0, period_s=60.0)),
        ("square:10:64", LoadPattern("square", batch=64.0, period_s=10.0)),
    ],
)
def test_load_patterns_parse(text: str, expected: LoadPattern) -> None:
    assert parse_load_pattern(text) == expected


@pytest.mark.parametrize("text", ["busy", "constant", "constant:x", "sine:0:10", "sine:10", "constant:-1"])
def test_bad_load_patterns_are_rejected_with_the_pattern_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"pattern|BATCH|PERIOD_S"):
        parse_load_pattern(text)


def test_load_pattern_values() -> None:
    sine = parse_load_pattern("sine:100:80")
    assert sine.batch_at(0.0) == pytest.approx(0.0)
    assert sine.batch_at(50.0) == pytest.approx(80.0)
    assert sine.batch_at(0.0, phase=0.5) == pytest.approx(80.0)
    square = parse_load_pattern("square:10:64")
    assert (square.batch_at(2.0), square.batch_at(7.0)) == (64.0, 0.0)
    assert parse_load_pattern("idle").batch_at(3.0) == 0.0
