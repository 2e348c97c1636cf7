"""Redfish reads against hostile BMCs on loopback: every request has a total deadline and a size cap,
no redirect or foreign link is followed, and one poll ends within its interval."""

from __future__ import annotations

import json
import resource
import time

import pytest

from exporter.redfish import MAX_BODY_BYTES, MAX_MEMBERS, RedfishClient, RedfishConfig, RedfishError
from tests.support.hostile_http import Behaviour, hostile_server

CHASSIS = "/redfish/v1/Chassis/1U"


def client(url: str, timeout_s: float = 0.5, interval_s: float = 30.0) -> RedfishClient:
    config = RedfishConfig(
        url=url, username="admin", password="s3cret", timeout_s=timeout_s, interval_s=interval_s
    )
    return RedfishClient(config)


def routes(docs: dict[str, object], delay_s: float = 0.0, default: object = None) -> Behaviour:
    def answer(path: str, _: bytes) -> tuple[int, str, bytes]:
        time.sleep(delay_s)
        doc = docs.get(path, default)
        return (200, "application/json", json.dumps(doc).encode()) if doc else (404, "text/plain", b"")

    return Behaviour(handler=answer)


def kib_grown(before: int) -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before


def test_trickling_bmc_is_cut_off_at_the_deadline() -> None:
    with hostile_server(Behaviour(mode="trickle", trickle_interval_s=0.05)) as (url, _):
        c = client(url, timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(RedfishError, match="within"):
            c.read_power()
        elapsed = time.monotonic() - start
        c.close()
    assert elapsed < 0.5 + 0.5  # one request's deadline, not one per trickled byte


def test_gzip_bomb_fails_at_the_cap_without_inflating() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bomb = Behaviour(mode="gzip_bomb", bomb_bytes=256 * 1024 * 1024)
    with hostile_server(bomb) as (url, _), pytest.raises(RedfishError, match="larger than"):
        client(url, timeout_s=10).read_power()
    assert kib_grown(before) < 64 * 1024  # the body expands to 256 MiB


def test_huge_body_fails_at_the_small_cap() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = Behaviour(mode="huge", huge_bytes=48 * 1024 * 1024)
    with hostile_server(huge) as (url, _), pytest.raises(RedfishError, match=f"larger than {MAX_BODY_BYTES}"):
        client(url, timeout_s=10).read_power()
    assert kib_grown(before) < 32 * 1024


def test_redirect_is_not_followed_and_credentials_stay_home() -> None:
    good = {"/redfish/v1/Chassis": {"Members": [{"@odata.id": CHASSIS}]}}
    with hostile_server(routes(good)) as (elsewhere, seen):
        redirect = Behaviour(mode="redirect", location=elsewhere + "/redfish/v1/Chassis")
        with hostile_server(redirect) as (url, _), pytest.raises(RedfishError, match="HTTP 302"):
            client(url).read_power()
    assert seen.requests == []


def test_links_to_another_host_are_not_followed() -> None:
    with hostile_server(routes({})) as (elsewhere, seen):
        docs = {
            "/redfish/v1/Chassis": {"Members": [{"@odata.id": CHASSIS}]},
            CHASSIS: {"EnvironmentMetrics": {"@odata.id": elsewhere + "/redfish/v1/steal"}},
        }
        with hostile_server(routes(docs)) as (url, _), pytest.raises(RedfishError, match="points away"):
            client(url).read_power()
    assert seen.requests == []


def test_one_poll_ends_within_its_interval_whatever_the_bmc_lists() -> None:
    supplies = f"{CHASSIS}/PowerSubsystem/PowerSupplies"
    docs: dict[str, object] = {
        "/redfish/v1/Chassis": {"Members": [{"@odata.id": CHASSIS}]},
        CHASSIS: {"PowerSubsystem": {"@odata.id": f"{CHASSIS}/PowerSubsystem"}},
        f"{CHASSIS}/PowerSubsystem": {"PowerSupplies": {"@odata.id": supplies}},
        supplies: {"Members": [{"@odata.id": f"{supplies}/{i}"} for i in range(10_000)]},
    }
    # Every supply answers (without a reading) after 50 ms: following all 10,000 would take 500 s.
    with hostile_server(routes(docs, delay_s=0.05, default={"Id": "psu"})) as (url, peer):
        c = client(url, timeout_s=0.5, interval_s=1.0)
        start = time.monotonic()
        with pytest.raises(RedfishError, match=r"within|ran out of time"):
            c.read_power()
        elapsed = time.monotonic() - start
        c.close()
    assert elapsed < 1.0 + 0.5  # the interval, plus at most one request's deadline
    assert len(peer.requests) <= 4 + MAX_MEMBERS
    assert all(h.get("Authorization", "").startswith("Basic ") for h in peer.headers_seen)
