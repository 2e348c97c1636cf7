"""CachedKpiSource: one fetch per TTL however many callers, singleflight, stale-while-revalidate."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from scaler.bounded import BoundedCache
from scaler.kpi_source import CachedKpiSource
from scaler.metadata import TriggerConfig, parse_metadata
from scaler.policy import Observation
from scaler.queries import KpiUnavailable

TRIGGER = parse_metadata({"workload": "w", "latencySloSeconds": "1"}, "ns")


class CountingSource:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self.fail = fail
        self.lock = threading.Lock()

    def observe(self, trigger: TriggerConfig) -> Observation:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay_s)
        if self.fail:
            raise KpiUnavailable("prometheus down")
        return Observation(current_replicas=n, load_rps=1.0, peak_load_rps=1.0, latency_s=None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_misses_share_one_fetch() -> None:
    inner = CountingSource(delay_s=0.2)
    cache = CachedKpiSource(inner, key=lambda t: (t.namespace, t.workload), ttl_s=10)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: cache.observe(TRIGGER), range(64)))
    assert inner.calls == 1
    assert {r.current_replicas for r in results} == {1}
    cache.close()


def test_ttl_then_stale_while_revalidate_then_hard_expiry() -> None:
    inner, clock = CountingSource(), Clock()
    cache = CachedKpiSource(inner, key=lambda t: t.workload, ttl_s=10, serve_stale_s=30, clock=clock)
    assert cache.observe(TRIGGER).current_replicas == 1
    clock.now += 9
    assert cache.observe(TRIGGER).current_replicas == 1 and inner.calls == 1
    clock.now += 2  # past TTL: the old answer is served at once and one refresh runs in the background
    assert cache.observe(TRIGGER).current_replicas == 1
    deadline = time.monotonic() + 5
    while inner.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert inner.calls == 2 and cache.observe(TRIGGER).current_replicas == 2
    clock.now += 31  # beyond serve_stale: callers wait for a fresh answer
    assert cache.observe(TRIGGER).current_replicas == 3
    cache.close()


def test_errors_are_cached_briefly_and_raised() -> None:
    inner, clock = CountingSource(fail=True), Clock()
    cache = CachedKpiSource(inner, key=lambda t: t.workload, ttl_s=10, error_ttl_s=2, clock=clock)
    for _ in range(5):
        with pytest.raises(KpiUnavailable):
            cache.observe(TRIGGER)
    assert inner.calls == 1
    clock.now += 3
    with pytest.raises(KpiUnavailable):
        cache.observe(TRIGGER)
    assert inner.calls == 2
    cache.close()


def test_waiters_give_up_after_the_wait_timeout() -> None:
    """A fetch that hangs holds its owner; the others wait at most ``wait_timeout_s`` (old: forever)."""
    release = threading.Event()

    class Hanging:
        def observe(self, trigger: TriggerConfig) -> Observation:
            release.wait(10)
            raise KpiUnavailable("too slow")

    cache = CachedKpiSource(Hanging(), key=lambda t: t.workload, ttl_s=10, wait_timeout_s=0.3)
    owner = ThreadPoolExecutor(1).submit(cache.observe, TRIGGER)
    time.sleep(0.05)
    start = time.monotonic()
    with pytest.raises(KpiUnavailable, match="still pending"):
        cache.observe(TRIGGER)
    assert time.monotonic() - start < 2.0
    release.set()
    with pytest.raises(KpiUnavailable):
        owner.result(timeout=5)
    cache.close()


def test_entries_are_bounded_by_count_and_age() -> None:
    inner, clock = CountingSource(), Clock()
    cache = CachedKpiSource(
        inner, key=lambda t: t.workload, ttl_s=10, serve_stale_s=30, clock=clock, max_entries=50
    )
    for i in range(500):
        cache.observe(parse_metadata({"workload": f"w{i}", "latencySloSeconds": "1"}, "ns"))
    assert len(cache) == 50
    clock.now += 31
    cache.observe(TRIGGER)
    assert len(cache) == 1  # everything older than serve_stale is gone
    cache.close()


def test_bounded_cache_keeps_by_count_and_age() -> None:
    clock = Clock()
    kept: BoundedCache[int, int] = BoundedCache(3, 60.0, clock=clock)
    calls: list[int] = []

    def compute(i: int) -> int:
        calls.append(i)
        return i * 10

    for i in (1, 2, 3, 1, 4):
        assert kept.get_or_compute(i, lambda i=i: compute(i)) == i * 10  # type: ignore[misc]
    assert calls == [1, 2, 3, 4] and len(kept) == 3  # 1 was reused; 2, the least recent, evicted
    clock.now += 61
    kept.get_or_compute(9, lambda: 90)
    assert len(kept) == 1
    with pytest.raises(ValueError):
        kept.get_or_compute(7, lambda: int("x"))
    assert len(kept) == 1  # errors are not kept
