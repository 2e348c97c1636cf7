"""Redfish node power against a real HTTP server on 127.0.0.1 (port 0, in a thread)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.collector import ExporterCollector
from exporter.redfish import (
    RedfishClient,
    RedfishConfig,
    RedfishError,
    RedfishPoller,
    RedfishSource,
    legacy_power_watts,
)

CHASSIS = "/redfish/v1/Chassis/1U"


class Bmc:
    """Routes path -> (status, body); ``delay_s`` slows every answer; records Authorization headers."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str]] = {}
        self.delay_s = 0.0
        self.auth: list[str | None] = []

    def json(self, path: str, doc: Any, status: int = 200) -> None:
        self.routes[path] = (status, json.dumps(doc))


@pytest.fixture
def bmc() -> Iterator[tuple[Bmc, str]]:
    state = Bmc()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.auth.append(self.headers.get("Authorization"))
            time.sleep(state.delay_s)
            status, body = state.routes.get(self.path, (404, '{"error": "not found"}'))
            data = body.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.json("/redfish/v1/Chassis", {"Members": [{"@odata.id": CHASSIS}]})
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def modern(bmc: Bmc, watts: float) -> None:
    bmc.json(CHASSIS, {"EnvironmentMetrics": {"@odata.id": f"{CHASSIS}/EnvironmentMetrics"}})
    bmc.json(f"{CHASSIS}/EnvironmentMetrics", {"PowerWatts": {"Reading": watts, "DataSourceUri": "x"}})


def legacy(bmc: Bmc, watts: float) -> None:
    bmc.json(CHASSIS, {"Power": {"@odata.id": f"{CHASSIS}/Power"}})
    bmc.json(
        f"{CHASSIS}/Power", {"PowerControl": [{"PowerConsumedWatts": watts}, {"PowerConsumedWatts": 1.0}]}
    )


def client(url: str, **kw: Any) -> RedfishClient:
    return RedfishClient(RedfishConfig(url=url, timeout_s=kw.pop("timeout_s", 2.0), **kw))


def test_environment_metrics_is_preferred_and_credentials_are_sent(bmc: tuple[Bmc, str]) -> None:
    state, url = bmc
    modern(state, 812.5)
    state.routes[CHASSIS] = (
        200,
        json.dumps(
            {
                "EnvironmentMetrics": {"@odata.id": f"{CHASSIS}/EnvironmentMetrics"},
                "Power": {"@odata.id": f"{CHASSIS}/Power"},
            }
        ),
    )
    state.json(f"{CHASSIS}/Power", {"PowerControl": [{"PowerConsumedWatts": 999}]})
    c = client(url, username="admin", password="s3cret")
    assert c.read_power() == (812.5, "environment_metrics")
    assert state.auth[-1] is not None and state.auth[-1].startswith("Basic ")
    c.close()


def test_power_subsystem_sums_the_supplies(bmc: tuple[Bmc, str]) -> None:
    state, url = bmc
    state.json(CHASSIS, {"PowerSubsystem": {"@odata.id": f"{CHASSIS}/PowerSubsystem"}})
    state.json(
        f"{CHASSIS}/PowerSubsystem",
        {"PowerSupplies": {"@odata.id": f"{CHASSIS}/PowerSubsystem/PowerSupplies"}},
    )
    psus = [f"{CHASSIS}/PowerSubsystem/PowerSupplies/{i}" for i in (1, 2)]
    state.json(f"{CHASSIS}/PowerSubsystem/PowerSupplies", {"Members": [{"@odata.id": p} for p in psus]})
    for i, path in enumerate(psus):
        state.json(path, {"Metrics": {"@odata.id": f"{path}/Metrics"}})
        state.json(f"{path}/Metrics", {"InputPowerWatts": {"Reading": 400.0 + i}})
    assert client(url).read_power() == (801.0, "power_subsystem")


def test_legacy_power_control_fallback(bmc: tuple[Bmc, str]) -> None:
    state, url = bmc
    legacy(state, 640.0)
    assert client(url).read_power() == (640.0, "power")


def test_http_500_and_malformed_json_raise_redfish_errors(bmc: tuple[Bmc, str]) -> None:
    state, url = bmc
    state.routes[CHASSIS] = (500, "{}")
    with pytest.raises(RedfishError, match="HTTP 500"):
        client(url).read_power()
    state.routes[CHASSIS] = (200, "{not json")
    with pytest.raises(RedfishError, match="malformed JSON"):
        client(url).read_power()


def test_legacy_parser_skips_entries_without_a_number() -> None:
    assert (
        legacy_power_watts({"PowerControl": [{"PowerConsumedWatts": None}, {"PowerConsumedWatts": 5}]}) == 5.0
    )
    assert legacy_power_watts({"PowerControl": "nope"}) is None


def registry_for(poller: RedfishPoller, max_age_s: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ExporterCollector([RedfishSource(poller, "node-a", max_age_s)]))
    return registry


def test_published_with_source_and_age(bmc: tuple[Bmc, str]) -> None:
    state, url = bmc
    modern(state, 900.0)
    poller = RedfishPoller(client(url).read_power, interval_s=60.0)
    registry = registry_for(poller, max_age_s=60.0)
    assert registry.get_sample_value("eo_exporter_collector_up", {"collector": "redfish"}) == 0.0
    poller.poll_once()
    labels = {"node": "node-a", "source": "environment_metrics"}
    assert registry.get_sample_value("eo_node_power_watts", labels) == 900.0
    assert 0.0 <= registry.get_sample_value("eo_node_power_age_seconds", labels) < 5.0  # type: ignore[operator]
    assert registry.get_sample_value("eo_exporter_collector_up", {"collector": "redfish"}) == 1.0


def test_slow_bmc_never_slows_the_scrape_and_stale_values_are_dropped(bmc: tuple[Bmc, str]) -> None:
    state, url = bmc
    legacy(state, 700.0)
    poller = RedfishPoller(client(url, timeout_s=0.5).read_power, interval_s=0.5).start()
    registry = registry_for(poller, max_age_s=0.8)
    labels = {"node": "node-a", "source": "power"}
    try:
        deadline = time.monotonic() + 5
        while registry.get_sample_value("eo_node_power_watts", labels) is None:
            assert time.monotonic() < deadline, "first poll never published"
            time.sleep(0.05)
        state.delay_s = 1.0  # slower than the timeout: every poll fails from now on
        time.sleep(0.6)
        start = time.perf_counter()
        registry.get_sample_value("eo_exporter_collector_up", {"collector": "redfish"})
        assert time.perf_counter() - start < 0.2  # the scrape only reads the cache
        deadline = time.monotonic() + 5
        while registry.get_sample_value("eo_node_power_watts", labels) is not None:
            assert time.monotonic() < deadline, "stale value still published"
            time.sleep(0.05)
        assert registry.get_sample_value("eo_exporter_collector_up", {"collector": "redfish"}) == 0.0
    finally:
        state.delay_s = 0.0
        poller.stop()


def test_failed_poll_keeps_the_last_good_sample(bmc: tuple[Bmc, str]) -> None:
    state, url = bmc
    legacy(state, 650.0)
    poller = RedfishPoller(client(url).read_power, interval_s=60.0)
    poller.poll_once()
    state.routes[f"{CHASSIS}/Power"] = (500, "{}")
    poller.poll_once()
    sample = poller.latest()
    assert sample is not None and sample.watts == 650.0 and sample.source == "power"
