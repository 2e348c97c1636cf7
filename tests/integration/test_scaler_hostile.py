"""eo-scaler against hostile or broken peers on loopback: a Prometheus that trickles, sends huge or
gzip-bomb answers, redirects or answers odd shapes, and ScaledObject authors who send long values,
foreign server addresses and headers. A real gRPC server on port 0 in every test."""

from __future__ import annotations

import json
import re
import resource
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.settings import from_values
from scaler import externalscaler_pb2 as pb
from scaler import externalscaler_pb2_grpc as pb_grpc
from scaler.kpi_source import PrometheusAuth, PrometheusKpiSource
from scaler.metadata import parse_metadata
from scaler.queries import KpiUnavailable
from scaler.server import ScalerHandle, start_scaler
from scaler.settings import ScalerSettings, parse_settings
from tests.support.hostile_http import Behaviour, hostile_server

GOOD_PARTS = {
    "heartbeat_age": "1",
    "visible_pods": "2",
    "replicas": "2",
    "unwatched_nodes": "0",
    "load": "16",
    "peak": "16",
    "latency": "1.0",
    "recent_requests": "100",
    "rise_minutes": "60",  # a workload with an hour of history (no young-workload margin)
    "age": "1",  # asked by older versions of the combined query
}
_PART_RE = re.compile(r'"eo_part", "([a-z_]+)"')


def prometheus_answer(
    values: dict[str, str] | None = None, result: Any = None, result_type: str = "vector"
) -> Callable[[str, bytes], tuple[int, str, bytes]]:
    """A handler answering like Prometheus: every part the query asks for that ``values`` has."""
    chosen = {**GOOD_PARTS, **(values or {})}

    def handle(path: str, payload: bytes) -> tuple[int, str, bytes]:
        # POST form (the bounded client) or GET query string (older clients).
        form = urllib.parse.parse_qs(payload.decode()) or urllib.parse.parse_qs(
            urllib.parse.urlsplit(path).query
        )
        query = form.get("query", [""])[0]
        series = result
        if series is None:
            asked = _PART_RE.findall(query)
            series = [
                {"metric": {"eo_part": name}, "value": [time.time(), chosen[name]]}
                for name in asked
                if name in chosen
            ]
            if not asked:  # a custom part's own query
                series = [{"metric": {}, "value": [time.time(), "0.5"]}]
        doc = {"status": "success", "data": {"resultType": result_type, "result": series}}
        return 200, "application/json", json.dumps(doc).encode()

    return handle


META = {"workload": "llama", "latencySloSeconds": "2", "replicaCapacityRps": "10", "maxReplicas": "10"}


def _settings(url: str, **kw: Any) -> ScalerSettings:
    """Loopback ports, short caches, ``url`` as the Prometheus; ``kw`` are more (or other) fields."""
    values = {
        "listen_address": "127.0.0.1",
        "port": 0,
        "metrics_address": "127.0.0.1",
        "metrics_port": 0,
        "prometheus_url": url,
        "prometheus_timeout_s": 1.0,
        "cache_ttl_s": 0.05,
        "cache_serve_stale_s": 0.05,
        **kw,
    }
    return from_values(ScalerSettings, values, environ={})


def _call(
    handle: ScalerHandle, meta: dict[str, str], method: str = "GetMetrics"
) -> tuple[Any, float | None, str]:
    ref = pb.ScaledObjectRef(name="so", namespace="inference", scalerMetadata=meta)
    with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
        stub = pb_grpc.ExternalScalerStub(channel)
        try:
            if method == "GetMetrics":
                answer = stub.GetMetrics(pb.GetMetricsRequest(scaledObjectRef=ref), timeout=10)
                return grpc.StatusCode.OK, answer.metricValues[0].metricValueFloat, ""
            active = stub.IsActive(ref, timeout=10)
            return grpc.StatusCode.OK, float(active.result), ""
        except grpc.RpcError as exc:
            return exc.code(), None, exc.details() or ""


def _scrape(handle: ScalerHandle) -> str:
    url = f"http://127.0.0.1:{handle.metrics_port}/metrics"
    return urllib.request.urlopen(url, timeout=10).read().decode()


@pytest.fixture
def good() -> Iterator[tuple[str, Behaviour]]:
    with hostile_server(Behaviour(handler=prometheus_answer())) as peer:
        yield peer


@pytest.fixture
def scaler(good: tuple[str, Behaviour], tmp_path: Path) -> Iterator[ScalerHandle]:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    handle = start_scaler(
        _settings(
            good[0],
            restrict_server_address=False,
            allowed_metadata_headers=("X-Scope-OrgID", "X-Team"),
            prometheus_headers=(("X-Scope-OrgID", "team-a"),),
            prometheus_bearer_token_file=token,
        )
    )
    yield handle
    handle.stop(0.5)


def test_a_trickling_prometheus_costs_its_deadline_and_others_still_answer(scaler: ScalerHandle) -> None:
    with hostile_server(Behaviour(mode="trickle", trickle_interval_s=0.2)) as (slow_url, slow):
        slow_meta = [{**META, "workload": f"slow-{i}", "serverAddress": slow_url} for i in range(70)]
        slow_meta += [{**META, "workload": "slow-0", "serverAddress": slow_url}] * 30  # waiters on one key
        with ThreadPoolExecutor(100) as pool:
            started = time.monotonic()
            slow_calls = [pool.submit(_call, scaler, m) for m in slow_meta]
            time.sleep(0.2)
            healthy = []
            for _ in range(5):
                t0 = time.monotonic()
                code, value, _ = _call(scaler, META)
                healthy.append((code, value, time.monotonic() - t0))
            slow_results = [f.result() for f in slow_calls]
            slow_elapsed = time.monotonic() - started
    assert all(code == grpc.StatusCode.OK and value == 2.0 for code, value, _ in healthy), healthy
    # Generous safety bound (not a performance target): the old code blocked for as long as the peer
    # trickled, and callers waiting on the same fetch had no timeout at all.
    assert max(elapsed for *_, elapsed in healthy) < 3.0, healthy
    assert {code for code, _, _ in slow_results} == {grpc.StatusCode.UNAVAILABLE}
    assert slow_elapsed < 8.0
    assert len(slow.requests) <= 70  # one query per workload at most, never one per waiting poll


@pytest.mark.parametrize("mode", ["huge", "gzip_bomb"])
def test_huge_and_gzip_bomb_answers_are_unavailable_within_the_cap(mode: str) -> None:
    behaviour = Behaviour(mode=mode, huge_bytes=85 * 1024 * 1024, content_type="application/json")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with hostile_server(behaviour) as (url, _):
        source = PrometheusKpiSource(PrometheusAuth(url=url, timeout_s=2.5))
        trigger = parse_metadata(META, "inference")
        with pytest.raises(KpiUnavailable, match=r"unreachable|did not answer"):
            source.observe(trigger)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 50, f"peak RSS grew {grown_mib:.0f} MiB (the answer cap is 8 MiB)"


def test_redirects_are_not_followed_and_no_page_text_reaches_the_status(
    scaler: ScalerHandle, good: tuple[str, Behaviour]
) -> None:
    with hostile_server(Behaviour(mode="redirect", location=good[0] + "/api/v1/query")) as (url, _):
        code, _, details = _call(scaler, {**META, "workload": "redirected", "serverAddress": url})
    assert code == grpc.StatusCode.UNAVAILABLE and "302" in details
    page = Behaviour(mode="status", status=500, body=b"<html>internal page SECRET-TEXT " + b"x" * 500)
    with hostile_server(page) as (url, _):
        code, _, details = _call(scaler, {**META, "workload": "errorpage", "serverAddress": url})
    assert code == grpc.StatusCode.UNAVAILABLE and "SECRET" not in details and "xxxx" not in details


def test_server_address_is_restricted_by_default(good: tuple[str, Behaviour]) -> None:
    assert parse_settings([], env={}).prometheus.restrict_server_address is True
    assert (
        parse_settings(["--allow-any-server-address", "true"], env={}).prometheus.restrict_server_address
        is False
    )
    assert (
        parse_settings(["--restrict-server-address", "false"], env={}).prometheus.restrict_server_address
        is False
    )
    env = {"EO_ALLOW_ANY_SERVER_ADDRESS": "true"}
    assert parse_settings([], env=env).prometheus.restrict_server_address is False
    handle = start_scaler(_settings(good[0]))
    try:
        with hostile_server(Behaviour(handler=prometheus_answer())) as (other, seen):
            code, _, details = _call(handle, {**META, "serverAddress": other})
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "--allow-any-server-address" in details
            assert seen.requests == []
        assert _call(handle, {**META, "serverAddress": good[0]})[:2] == (grpc.StatusCode.OK, 2.0)
    finally:
        handle.stop(0.5)


def test_operator_headers_win_and_metadata_headers_need_the_allow_list(
    scaler: ScalerHandle, good: tuple[str, Behaviour]
) -> None:
    _, seen = good
    code, _, _ = _call(
        scaler, {**META, "workload": "h1", "customHeaders": "x-scope-orgid=team-b,X-Team=blue"}
    )
    assert code == grpc.StatusCode.OK
    sent = {k.lower(): v for k, v in seen.headers_seen[-1].items()}
    assert sent["x-scope-orgid"] == "team-a"  # the operator's tenant, not the trigger's
    assert sent["x-team"] == "blue" and sent["authorization"] == "Bearer s3cret"
    for headers in (
        "Cookie=a=b",
        "X-Forwarded-User=admin",
        "Proxy-Authorization=Basic eA==",
        "Transfer-Encoding=chunked",
        "Host=evil",
        "X-Other=1",  # not on the operator's allow-list
        "X-Team=caf\u00e9\u2603",  # not Latin-1
    ):
        before = len(seen.requests)
        code, _, details = _call(scaler, {**META, "workload": "h2", "customHeaders": headers})
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (headers, code, details)
        assert "customHeaders" in details
        assert len(seen.requests) == before, f"{headers} reached Prometheus"


def test_allow_list_cannot_allow_credentials() -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--allowed-metadata-headers", "X-Scope-OrgID,Authorization"], env={})
    ok = parse_settings(["--allowed-metadata-headers", "X-Scope-OrgID"], env={})
    assert ok.prometheus.allowed_metadata_headers == ("X-Scope-OrgID",)


def _values(**parts: str) -> dict[str, str]:
    return parts


@pytest.mark.parametrize(
    ("handler", "extra"),
    [
        (prometheus_answer(result_type="scalar", result=[1, "1"]), {}),
        (prometheus_answer(result=["a", "b"]), {}),
        (prometheus_answer(result=[{"metric": [1, 2], "value": [1, "1"]}]), {}),
        (prometheus_answer(result=[{"metric": {"eo_part": "replicas"}, "value": "1"}]), {}),
        (prometheus_answer(result={"eo_part": "replicas"}), {}),
        (prometheus_answer(_values(replicas="1e19", visible_pods="1e19")), {"mode": "advisory"}),
        (prometheus_answer(_values(replicas="-3", visible_pods="0")), {"mode": "advisory"}),
        (prometheus_answer(_values(replicas="2.5")), {}),
        (prometheus_answer(_values(load="-5")), {}),
        (prometheus_answer(_values(load="+Inf")), {}),
        (prometheus_answer(_values(heartbeat_age="-30")), {}),  # a heartbeat from the future
    ],
)
def test_odd_answers_are_unavailable_never_unknown(
    handler: Callable[[str, bytes], tuple[int, str, bytes]], extra: dict[str, str]
) -> None:
    meta = {**META, **extra}
    with hostile_server(Behaviour(handler=handler)) as (url, _):
        handle = start_scaler(_settings(url))
        try:
            for method in ("GetMetrics", "IsActive"):
                code, value, details = _call(handle, meta, method)
                assert code == grpc.StatusCode.UNAVAILABLE, (method, code, value, details)
        finally:
            handle.stop(0.5)


def test_nan_latency_needs_measured_requests_to_be_an_error() -> None:
    """NaN default latency with no measured requests is "no latency" (idle), not an error."""
    handler = prometheus_answer(_values(latency="NaN", latency_rate="0"))
    with hostile_server(Behaviour(handler=handler)) as (url, _):
        handle = start_scaler(_settings(url))
        try:
            assert _call(handle, META)[0] == grpc.StatusCode.OK
        finally:
            handle.stop(0.5)
    handler = prometheus_answer(_values(latency="NaN", latency_rate="3"))
    with hostile_server(Behaviour(handler=handler)) as (url, _):
        handle = start_scaler(_settings(url))
        try:
            assert _call(handle, META)[0] == grpc.StatusCode.UNAVAILABLE
        finally:
            handle.stop(0.5)


def test_long_invalid_values_are_short_invalid_arguments_and_never_labels(scaler: ScalerHandle) -> None:
    for i in range(50):
        evil = f"Invalid_{i}_" + "x" * 100_000
        code, _, details = _call(scaler, {**META, "workload": evil})
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "workload" in details, code
        assert len(details) < 1000
    code, _, details = _call(scaler, {**META, "customHeaders": "X-Team=" + "v" * 60_000})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "customHeaders" in details and len(details) < 1000
    code, _, details = _call(scaler, {**META, **{f"k{i}": "1" for i in range(100)}})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 1000
    text = _scrape(scaler)
    assert "Invalid_" not in text and "xxxxxxxx" not in text
    assert 'eo_scaler_errors_total{code="INVALID_ARGUMENT",namespace="inference",workload="so"}' in text
    assert len(text) < 100_000


def test_distinct_valid_values_keep_the_caches_and_labels_bounded(scaler: ScalerHandle) -> None:
    """Each distinct serverAddress or workload is a new cache key and label set: both stay bounded."""

    def poll(i: int) -> None:
        _call(scaler, {**META, "workload": f"w{i}", "serverAddress": f"http://127.0.0.1:{1 + i % 50}"})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(poll, range(300)))
    source = scaler.kpi_source
    assert len(source) <= source.max_entries  # type: ignore[attr-defined, arg-type]
    text = _scrape(scaler)
    assert len(text) < 1_000_000


def test_waiters_on_one_slow_fetch_time_out(good: tuple[str, Behaviour]) -> None:
    """Many polls of one workload while its only fetch hangs: each waits at most the query deadline."""
    with hostile_server(Behaviour(mode="hang")) as (url, seen):
        handle = start_scaler(_settings(url, prometheus_timeout_s=0.5))
        try:
            with ThreadPoolExecutor(20) as pool:
                t0 = time.monotonic()
                results = list(pool.map(lambda _: _call(handle, META), range(20)))
                elapsed = time.monotonic() - t0
        finally:
            handle.stop(0.5)
    assert {code for code, *_ in results} == {grpc.StatusCode.UNAVAILABLE}
    assert elapsed < 4.0
    assert len(seen.requests) <= 3


def test_concurrent_polls_do_not_break_the_answer(scaler: ScalerHandle) -> None:
    errors: list[Any] = []

    def poll() -> None:
        code, value, _ = _call(scaler, META)
        if (code, value) != (grpc.StatusCode.OK, 2.0):
            errors.append((code, value))

    threads = [threading.Thread(target=poll) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
