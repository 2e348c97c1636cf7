"""Pod reads against real misbehaving servers on loopback: trickling, hanging, huge and gzip-bomb
/metrics never hide the other pods of the node, never hold a worker past the sample's deadline, and
a pod that cannot be read has its mirrored series omitted (``eo_pod_metrics_up`` 0), not frozen."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.pods.scrape import DEFAULT_MAX_BODY_BYTES, AppReader
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.pods import RIG_G0 as G0
from tests.support.pods import RIG_G1 as G1
from tests.support.pods import PodRig, padding_families, pod_rig

TIMEOUT_S = 0.3


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PodRig]:
    # Four workers: few enough that reads left running by earlier samples would starve the good pod.
    with pod_rig(tmp_path, AppReader(timeout_s=TIMEOUT_S, max_workers=4)) as r:
        yield r


def test_trickling_pods_do_not_hide_the_other_pods(rig: PodRig) -> None:
    with contextlib.ExitStack() as stack:
        for i in range(3):
            # A byte every 50 ms: never idle long enough for a per-socket-read timeout to fire.
            url, _ = stack.enter_context(hostile_server(Behaviour(mode="trickle", trickle_interval_s=0.05)))
            rig.add_pod(f"slow-{i}", [f"{G1}::{i}"], port=int(url.rsplit(":", 1)[1]))
        rig.add_pod("good", [G0])
        for n in range(1, 9):
            rig.servers["good"].finish(1)
            took = rig.sample()
            assert took < TIMEOUT_S + 1.0  # a safety bound: one deadline per sample, not a pile-up
            assert rig.value("eo_pod_metrics_up", "good") == 1, f"good pod hidden at sample {n}"
            assert rig.value("eo_pod_requests_total", "good") == n
            for i in range(3):
                assert rig.value("eo_pod_metrics_up", f"slow-{i}") == 0
                assert rig.value("eo_pod_requests_total", f"slow-{i}") is None
            assert rig.collector_up() == 1  # the pods collector itself works


def test_bad_pod_mix_costs_each_bad_pod_only_its_own_reading(rig: PodRig) -> None:
    behaviours = {
        "hang": Behaviour(mode="hang"),
        "huge": Behaviour(mode="huge", huge_bytes=64 * 1024 * 1024),
        "bomb": Behaviour(mode="gzip_bomb", bomb_bytes=512 * 1024 * 1024),
        "redirect": Behaviour(mode="redirect"),
    }
    with contextlib.ExitStack() as stack:
        for i, (name, behaviour) in enumerate(behaviours.items()):
            url, _ = stack.enter_context(hostile_server(behaviour))
            rig.add_pod(name, [f"{G1}::{i}"], port=int(url.rsplit(":", 1)[1]))
        rig.add_pod("good", [G0])
        for n in range(1, 5):
            rig.servers["good"].finish(2, prompt=10, generation=20)
            rig.energy[G1] += 400.0
            assert rig.sample() < TIMEOUT_S + 1.0
            assert rig.value("eo_pod_requests_total", "good") == 2 * n
            assert rig.value("eo_pod_metrics_up", "good") == 1
            for name in behaviours:
                assert rig.value("eo_pod_metrics_up", name) == 0, name
                assert rig.value("eo_pod_requests_total", name) is None, name
                assert rig.value("eo_pod_request_latency_seconds_count", name) is None, name
            assert rig.collector_up() == 1
        # Energy comes from the GPU, not the server: still attributed (equal split, no token rule).
        assert rig.value("eo_pod_energy_joules_total", "hang", source="gpu") == pytest.approx(300.0)


def test_page_over_the_cap_is_a_failed_read_and_the_cap_is_configurable(tmp_path: Path) -> None:
    page_bytes = DEFAULT_MAX_BODY_BYTES + 1024 * 1024  # legal text, larger than the default cap
    padding = padding_families(page_bytes)
    for n, (cap, readable) in enumerate(((DEFAULT_MAX_BODY_BYTES, False), (2 * page_bytes, True))):
        (tmp_path / str(n)).mkdir()
        with pod_rig(tmp_path / str(n), AppReader(timeout_s=2.0, max_body_bytes=cap)) as rig:
            rig.add_pod("big", [G0])
            rig.servers["big"].transform = lambda text: text + padding
            rig.servers["big"].finish(7)
            rig.sample()
            assert rig.value("eo_pod_metrics_up", "big") == (1 if readable else 0)
            assert rig.value("eo_pod_requests_total", "big") == (7 if readable else None)


def test_large_legal_page_is_read_without_holding_it(rig: PodRig) -> None:
    padding = padding_families(3 * 1024 * 1024)  # 3 MiB, ~30,000 series no profile reads
    rig.add_pod("big", [G0])
    rig.servers["big"].transform = lambda text: text + padding
    rig.servers["big"].finish(5, prompt=50, generation=70, latency_s=0.8)
    reader = AppReader(timeout_s=5.0)
    rig.sampler._reader = reader  # a generous deadline: tracemalloc slows the read down
    tracemalloc.start()
    try:
        rig.sample()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        reader.close()
    assert rig.value("eo_pod_requests_total", "big") == 5
    assert rig.value("eo_pod_tokens_total", "big", kind="generation") == 70
    assert rig.value("eo_pod_request_latency_seconds_bucket", "big", le="1.0") == 5
    # Parsing the whole page would take about 30 times its size; the filter holds one piece of it.
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while reading a 3 MiB page"
