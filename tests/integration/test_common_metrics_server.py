"""The one /metrics server, over real HTTP on port 0."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from common.metrics_server import registry_renderer, serve_metrics


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_metrics_health_and_not_found() -> None:
    registry = CollectorRegistry()
    Counter("eo_test_things", "Things.", registry=registry).inc(3)
    healthy = {"ok": True}
    handle = serve_metrics(
        registry_renderer(registry),
        lambda: (healthy["ok"], {"status": "ok" if healthy["ok"] else "stalled"}),
        address="127.0.0.1",
    )
    try:
        status, ctype, body = _get(handle.url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain") and "eo_test_things_total 3.0" in body
        assert _get(handle.url + "/healthz")[0] == 200
        healthy["ok"] = False
        status, ctype, body = _get(handle.url + "/healthz")
        assert (status, ctype) == (503, "application/json") and "stalled" in body
        assert _get(handle.url + "/nope")[0] == 404
    finally:
        handle.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(handle.url + "/metrics", timeout=1)


def test_text_health_body() -> None:
    handle = serve_metrics(lambda: b"", lambda: (False, "control loop stalled\n"), address="127.0.0.1")
    try:
        status, ctype, body = _get(handle.url + "/healthz")
    finally:
        handle.stop()
    assert (status, body) == (503, "control loop stalled\n") and ctype.startswith("text/plain")
