"""A real HTTP peer on loopback that misbehaves on purpose: trickles, hangs, sends huge or gzip-bomb
bodies, redirects, or answers whatever a test sets. Used by the hardening tests of every client."""

from __future__ import annotations

import http.server
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Behaviour:
    """What the peer answers. ``mode``: ``ok``, ``trickle``, ``hang``, ``huge``, ``gzip_bomb``,
    ``redirect`` or ``status``."""

    mode: str = "ok"
    body: bytes = b"ok\n"
    status: int = 200
    content_type: str = "text/plain; version=0.0.4"
    trickle_interval_s: float = 0.5
    huge_bytes: int = 64 * 1024 * 1024
    bomb_bytes: int = 512 * 1024 * 1024
    location: str = "http://127.0.0.1:9/"
    requests: list[str] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    handler: Callable[[str, bytes], tuple[int, str, bytes]] | None = None


_BOMB_CACHE: dict[int, bytes] = {}


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (512 MiB compress to about 500 KiB)."""
    if size not in _BOMB_CACHE:
        block = b"\0" * (1024 * 1024)
        z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        parts = [z.compress(block) for _ in range(size // len(block))]
        parts.append(z.flush())
        _BOMB_CACHE[size] = b"".join(parts)
    return _BOMB_CACHE[size]


class _Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet in tests
        pass

    def _serve(self) -> None:
        b = self.server.behaviour  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else b""
        b.requests.append(self.path)
        b.headers_seen.append({k: v for k, v in self.headers.items()})
        try:
            if b.handler is not None:
                status, ctype, body = b.handler(self.path, payload)
                self._send(status, ctype, body)
            elif b.mode == "ok" or b.mode == "status":
                self._send(b.status, b.content_type, b.body)
            elif b.mode == "redirect":
                self.send_response(302)
                self.send_header("Location", b.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif b.mode == "hang":
                time.sleep(3600)
            elif b.mode == "trickle":
                self.send_response(200)
                self.send_header("Content-Type", b.content_type)
                self.send_header("Content-Length", str(10_000))
                self.end_headers()
                for _ in range(10_000):
                    self.wfile.write(b"#")
                    self.wfile.flush()
                    time.sleep(b.trickle_interval_s)
            elif b.mode == "huge":
                self.send_response(200)
                self.send_header("Content-Type", b.content_type)
                self.end_headers()  # no length: the client must stop on its own
                line = b"# " + b"x" * 1022 + b"\n"
                for _ in range(b.huge_bytes // len(line)):
                    self.wfile.write(line)
            elif b.mode == "gzip_bomb":
                data = gzip_bomb(b.bomb_bytes)
                self.send_response(200)
                self.send_header("Content-Type", b.content_type)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _serve
    do_POST = _serve


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def hostile_server(behaviour: Behaviour | None = None) -> Iterator[tuple[str, Behaviour]]:
    """``(base_url, behaviour)`` of a running peer; change ``behaviour`` fields to change its answers."""
    b = behaviour or Behaviour()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.behaviour = b  # type: ignore[attr-defined]
    # A short poll interval: leaving the context (shutdown) takes milliseconds, not up to 0.5 s.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", b
    finally:
        server.shutdown()
        server.server_close()
