"""The server-state reader against a real HTTP /metrics page that changes between scrapes: the window's
TTFT buckets, and the first tokens of the last interval alone (the governor scales each interval from
the clock it came at)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from powercap.serverstate import ServerStateSource


def page(fast: int, slow: int) -> bytes:
    """A vLLM page with ``fast`` first tokens under 0.1 s and ``slow`` between 0.1 and 0.25 s."""
    name = "vllm:time_to_first_token_seconds"
    lines = [
        "vllm:num_requests_running 4",
        "vllm:num_requests_waiting 0",
        "vllm:kv_cache_usage_perc 0.2",
        f'{name}_bucket{{le="0.1"}} {fast}',
        f'{name}_bucket{{le="0.25"}} {fast + slow}',
        f'{name}_bucket{{le="+Inf"}} {fast + slow}',
        f"{name}_count {fast + slow}",
        f"{name}_sum 1.0",
    ]
    return ("\n".join(lines) + "\n").encode()


@contextmanager
def metrics_server(body: list[bytes]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body[0])))
            self.end_headers()
            self.wfile.write(body[0])

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_the_interval_buckets_are_the_first_tokens_since_the_previous_scrape() -> None:
    body = [page(10, 0)]
    with metrics_server(body) as url:
        source = ServerStateSource(url, "vllm", window_s=60.0, timeout_s=2.0)
        first = source.read(0.0)
        assert first.ttft_interval_buckets is None  # no previous scrape yet
        body[0] = page(30, 5)
        second = source.read(5.0)
        assert second.ttft_interval_buckets == ((0.1, 20.0), (0.25, 5.0), (float("inf"), 0.0))
        assert second.ttft_buckets == ((0.1, 20.0), (0.25, 5.0), (float("inf"), 0.0))
        body[0] = page(32, 5)
        third = source.read(10.0)
        assert third.ttft_interval_buckets == ((0.1, 2.0), (0.25, 0.0), (float("inf"), 0.0))
        assert third.ttft_buckets == ((0.1, 22.0), (0.25, 5.0), (float("inf"), 0.0))
        # No first token in an interval: nothing to record (None, never zeros as if measured).
        assert source.read(15.0).ttft_interval_buckets is None


@pytest.mark.parametrize("restart", [page(1, 0)])
def test_a_server_restart_starts_the_interval_over(restart: bytes) -> None:
    body = [page(30, 5)]
    with metrics_server(body) as url:
        source = ServerStateSource(url, "vllm", window_s=60.0, timeout_s=2.0)
        source.read(0.0)
        body[0] = restart  # counters went back: the server restarted
        assert source.read(5.0).ttft_interval_buckets is None
