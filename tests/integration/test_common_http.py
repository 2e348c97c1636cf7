"""The shared bounded HTTP client against real misbehaving peers on loopback."""

from __future__ import annotations

import resource
import time

import pytest

from common.http import BodyTooLarge, BoundedHttpClient, DeadlineExceeded, HttpError
from common.prometheus import PrometheusClient, PrometheusRejected, PrometheusUnavailable
from tests.support.hostile_http import Behaviour, hostile_server


def test_reads_a_normal_answer() -> None:
    with hostile_server(Behaviour(body=b"hello\n")) as (url, _):
        response = BoundedHttpClient(deadline_s=2).get(url + "/metrics")
    assert (response.status, response.body) == (200, b"hello\n")


def test_trickling_peer_is_cut_off_at_the_deadline() -> None:
    with hostile_server(Behaviour(mode="trickle", trickle_interval_s=0.05)) as (url, _):
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            BoundedHttpClient(deadline_s=0.6).get(url)
        elapsed = time.monotonic() - start
    assert elapsed < 0.6 + 0.3


def test_hanging_peer_is_cut_off_at_the_deadline() -> None:
    with hostile_server(Behaviour(mode="hang")) as (url, _):
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            BoundedHttpClient(deadline_s=0.5).get(url)
    assert time.monotonic() - start < 0.5 + 0.3


def test_huge_body_without_length_fails_at_the_cap() -> None:
    peer = Behaviour(mode="huge", huge_bytes=8 * 1024 * 1024)
    with hostile_server(peer) as (url, _), pytest.raises(BodyTooLarge):
        BoundedHttpClient(deadline_s=5, max_body_bytes=1024 * 1024).get(url)


def test_declared_length_over_the_cap_is_refused_before_reading() -> None:
    with hostile_server(Behaviour(body=b"x" * 2048)) as (url, _), pytest.raises(BodyTooLarge):
        BoundedHttpClient(max_body_bytes=1024).get(url)


def test_gzip_bomb_fails_at_the_cap_without_inflating() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peer = Behaviour(mode="gzip_bomb", bomb_bytes=512 * 1024 * 1024)
    with hostile_server(peer) as (url, _), pytest.raises(BodyTooLarge):
        BoundedHttpClient(deadline_s=10, max_body_bytes=4 * 1024 * 1024).get(url)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 100 * 1024  # far below the 512 MiB the body expands to


def test_gzip_body_within_the_cap_is_decompressed() -> None:
    with hostile_server(Behaviour(mode="gzip_bomb", bomb_bytes=1024 * 1024)) as (url, _):
        response = BoundedHttpClient(max_body_bytes=4 * 1024 * 1024).get(url)
    assert response.body == b"\0" * (1024 * 1024)


def test_redirect_is_not_followed() -> None:
    with hostile_server(Behaviour(mode="redirect", location="http://127.0.0.1:9/secret")) as (url, b):
        response = BoundedHttpClient().get(url)
    assert response.status == 302
    assert b.requests == ["/"]


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b'{"kind": "Pod"}', None),
        (b"[1, 2]", "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b"{", "not JSON"),
    ],
)
def test_a_json_object_answer_is_the_only_one_json_object_takes(body: bytes, refused: str | None) -> None:
    def answer(path: str, _: bytes) -> tuple[int, str, bytes]:
        return 200, "application/json", body

    with hostile_server(Behaviour(handler=answer)) as (url, _):
        response = BoundedHttpClient().get(url + "/doc")
    if refused is None:
        assert response.json_object() == {"kind": "Pod"}
    else:
        with pytest.raises(HttpError, match=refused):
            response.json_object()


def test_unreachable_peer_is_an_http_error() -> None:
    with pytest.raises(HttpError):
        BoundedHttpClient(deadline_s=0.5).get("http://127.0.0.1:9/")


def test_header_that_is_not_latin1_is_an_http_error() -> None:
    with hostile_server() as (url, _), pytest.raises(HttpError):
        BoundedHttpClient().get(url, headers={"X-Scope-OrgID": "équipe-ü-\u20ac"})


def _prom_answer(doc: str, status: int = 200) -> Behaviour:
    return Behaviour(body=doc.encode(), status=status, content_type="application/json")


def test_prometheus_vector_answer() -> None:
    doc = '{"status":"success","data":{"resultType":"vector","result":[]}}'
    with hostile_server(_prom_answer(doc)) as (url, b):
        assert PrometheusClient(BoundedHttpClient()).query(url, "up") == ("vector", [])
    assert b.requests == ["/api/v1/query"]


@pytest.mark.parametrize(
    "doc",
    [
        "<html>oops</html>",
        '{"status":"success"}',
        '{"status":"success","data":{"resultType":"weird","result":[]}}',
        '["not", "an", "object"]',
    ],
)
def test_prometheus_shapeless_answers_are_unavailable(doc: str) -> None:
    with hostile_server(_prom_answer(doc)) as (url, _), pytest.raises(PrometheusUnavailable) as err:
        PrometheusClient(BoundedHttpClient()).query(url, "up")
    assert "oops" not in str(err.value)


def test_prometheus_bad_query_is_rejected_with_its_error() -> None:
    doc = '{"status":"error","errorType":"bad_data","error":"parse error at char 3"}'
    with hostile_server(_prom_answer(doc, status=400)) as (url, _), pytest.raises(PrometheusRejected) as err:
        PrometheusClient(BoundedHttpClient()).query(url, "up(")
    assert "parse error" in str(err.value)


def test_prometheus_error_page_text_never_reaches_the_message() -> None:
    page = "<html>" + "secret internal page " * 50 + "</html>"
    with (
        hostile_server(_prom_answer(page, status=500)) as (url, _),
        pytest.raises(PrometheusUnavailable) as err,
    ):
        PrometheusClient(BoundedHttpClient()).query(url, "up")
    assert "secret" not in str(err.value)
