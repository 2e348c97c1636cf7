"""Kubernetes Events posted by a background queue to a real HTTP server answering recorded API replies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devices.simulated import SimulatedGpu
from powercap.events import CapEvent, KubernetesEventSink, PodRef
from powercap.sidecar import start_powercap
from tests.support.hostile_http import Behaviour, hostile_server
from tests.support.powercap import FakeClock, ScriptedSource, settings

CREATED = (Path(__file__).parent / "fixtures" / "powercap_event_created.json").read_text()
POD = PodRef("vllm-0", "inference", "5f0e9d3c-1b2a-4c8d-9e7f-6a5b4c3d2e1f", "gpu-node-1")


class FakeApiServer:
    """Records POSTs; answers 201 with the recorded Event, or hangs/fails when told to."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any], str]] = []
        self.hang = threading.Event()
        self.release = threading.Event()
        self.status = 201
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append((self.path, body, self.headers.get("Authorization", "")))
                if outer.hang.is_set():
                    outer.release.wait(5)
                data = CREATED.encode() if outer.status == 201 else b'{"kind":"Status","code":403}'
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    s = FakeApiServer()
    yield s
    s.stop()


def wait_for(cond: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_each_change_is_posted_with_the_pod_as_involved_object(api: FakeApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    sink = KubernetesEventSink(api.url, POD, token_file=token, ca_file=None)
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock)
    h = start_powercap(
        settings(tmp_path), [gpu], ScriptedSource(latency_s=0.1), clock=clock, events=sink, run_loop=False
    )
    for _ in range(2):
        clock.advance(5.0)
        h.sidecar.tick()
    h.stop()  # restores: a third change
    assert sink.posted == 3 and sink.dropped == 0
    path, body, auth = api.posts[0]
    assert path == "/api/v1/namespaces/inference/events"
    assert auth == "Bearer sa-token"
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "vllm-0",
        "namespace": "inference",
        "uid": POD.uid,
    }
    assert body["reason"] == "PowerCapLowered" and body["type"] == "Normal"
    assert "700 -> 675 W (headroom)" in body["message"]
    assert body["source"] == {"component": "eo-powercap", "host": "gpu-node-1"}
    assert [b["reason"] for _, b, _ in api.posts] == [
        "PowerCapLowered",
        "PowerCapLowered",
        "PowerCapRestored",
    ]
    assert "(shutdown)" in api.posts[2][1]["message"]


def test_a_hanging_api_server_never_blocks_control(api: FakeApiServer, tmp_path: Path) -> None:
    api.hang.set()
    sink = KubernetesEventSink(api.url, POD, token_file=None, ca_file=None, timeout_s=0.3, max_queue=2)
    clock = FakeClock()
    gpu = SimulatedGpu(0, clock=clock)
    h = start_powercap(
        settings(tmp_path), [gpu], ScriptedSource(latency_s=0.1), clock=clock, events=sink, run_loop=False
    )
    started = time.monotonic()
    for _ in range(6):
        clock.advance(5.0)
        h.sidecar.tick()
    elapsed = time.monotonic() - started
    # Six changes went in while the first post was still hanging; queue overflow was dropped.
    assert gpu.power_limit_mw() == 700_000 - 6 * 25_000
    assert elapsed < 0.3, f"ticks waited on the API server ({elapsed:.2f}s)"
    assert sink.dropped >= 3
    api.release.set()
    h.stop()


def test_rejected_post_is_logged_and_dropped(api: FakeApiServer, caplog: pytest.LogCaptureFixture) -> None:
    api.status = 403
    sink = KubernetesEventSink(api.url, POD, token_file=None, ca_file=None)
    sink.emit(CapEvent("PowerCapLowered", "x"))
    wait_for(lambda: sink.dropped == 1)
    sink.close()
    assert "could not post Kubernetes Event PowerCapLowered" in caplog.text
    assert "HTTP 403" in caplog.text and "Status" not in caplog.text, "the status, never the peer's body"


def test_a_trickling_api_server_costs_one_post_its_deadline_and_close_stays_bounded() -> None:
    with hostile_server(Behaviour(mode="trickle", trickle_interval_s=0.1)) as (url, _):
        sink = KubernetesEventSink(url, POD, token_file=None, ca_file=None, timeout_s=0.5)
        sink.emit(CapEvent("PowerCapLowered", "x"))
        wait_for(lambda: sink.dropped == 1, timeout_s=3.0)
        sink.emit(CapEvent("PowerCapRestored", "y"))
        started = time.monotonic()
        sink.close(timeout_s=1.0)
        assert time.monotonic() - started < 1.0 + 0.5


def test_a_refusal_is_logged_with_the_api_reason_and_a_short_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    status = {
        "kind": "Status",
        "code": 403,
        "reason": "Forbidden",
        "message": 'events is forbidden: User "system:serviceaccount:inference:vllm" cannot create '
        + "x" * 5000,
    }
    refused = Behaviour(mode="status", status=403, body=json.dumps(status).encode())
    with hostile_server(refused) as (url, _):
        sink = KubernetesEventSink(url, POD, token_file=None, ca_file=None)
        sink.emit(CapEvent("PowerCapLowered", "x"))
        wait_for(lambda: sink.dropped == 1)
        sink.close()
    assert "HTTP 403 Forbidden: events is forbidden" in caplog.text
    assert "x" * 300 not in caplog.text, "a short message, never the whole body"


def test_an_unreadable_ca_costs_the_events_not_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not a certificate\n")
    sink = KubernetesEventSink("https://127.0.0.1:9", POD, token_file=None, ca_file=ca)
    sink.emit(CapEvent("PowerCapLowered", "x"))
    wait_for(lambda: sink.dropped == 1)
    sink.close()
    assert "cannot load its TLS certificates" in caplog.text


def test_the_token_is_re_read_when_it_rotates(api: FakeApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    sink = KubernetesEventSink(api.url, POD, token_file=token, ca_file=None)
    sink.emit(CapEvent("PowerCapLowered", "x"))
    wait_for(lambda: sink.posted == 1)
    replacement = tmp_path / "token.new"
    replacement.write_text("second\n")
    replacement.replace(token)  # as the kubelet swaps a projected token
    sink.emit(CapEvent("PowerCapRestored", "y"))
    wait_for(lambda: sink.posted == 2)
    sink.close()
    assert [auth for _, _, auth in api.posts] == ["Bearer first", "Bearer second"]
