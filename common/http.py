"""Bounded HTTP reads: every outbound read has a total deadline and a cap on the bytes it keeps.

A peer can be slow (it trickles one byte at a time), huge (a legal but enormous body) or hostile (a
small gzip body that expands to gigabytes). ``BoundedHttpClient.request`` bounds all three:

- the **deadline** covers connecting, waiting for headers and reading the body; each socket read may
  block only for the time left, so a trickling peer is cut off at the deadline, not after it;
- the **size cap** counts the bytes after decompression, decompressing in bounded steps, so a gzip bomb
  fails after ``max_body_bytes`` bytes of output, not after it has filled memory;
- **redirects are never followed**: a 3xx is an answer like any other, so a target cannot send the
  caller (and its credentials) elsewhere.

Errors are ``HttpError`` subclasses whose messages never carry the peer's body text.

A caller that needs only part of a large body passes ``sink``: the decompressed body is handed to it
in bounded pieces as it arrives instead of being kept, so the caller holds only what it keeps.
"""

from __future__ import annotations

import json
import ssl
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import urllib3

_CHUNK_BYTES = 64 * 1024
# Most output one decompression step may produce: each step holds the GIL, so a highly compressed body
# is inflated (and handed to a sink) in slices rather than in one long call.
_STEP_BYTES = 256 * 1024
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class HttpError(Exception):
    """The read failed: unreachable, too slow, too big, undecodable or an unexpected status."""


class DeadlineExceeded(HttpError):
    """The whole exchange did not finish within its deadline."""


class BodyTooLarge(HttpError):
    """The (decompressed) body is larger than the cap."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ``HttpError`` when it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(f"answer is not JSON ({type(exc).__name__})") from exc

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object (what every API this project reads answers with); ``HttpError``
        when it is not JSON, or is JSON of another kind (a list, a string, a number)."""
        doc = self.json()
        if not isinstance(doc, dict):
            raise HttpError("answer is not a JSON object")
        return doc


class _Decoder:
    """Identity, gzip or deflate, with the output of each step bounded by what the cap still allows."""

    def __init__(self, encoding: str, limit: int, sink: Callable[[bytes], object] | None = None) -> None:
        encoding = encoding.strip().lower()
        self._limit = limit
        self._size = 0
        self._parts: list[bytes] = []
        self._sink = sink
        if encoding in ("", "identity"):
            self._zlib = None
        elif encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
        else:
            raise HttpError(f"unsupported Content-Encoding {encoding[:40]!r}")

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise BodyTooLarge(f"body larger than {self._limit} bytes")
        if self._sink is None:
            self._parts.append(data)
        elif data:
            self._sink(data)

    def feed(self, chunk: bytes) -> None:
        if self._zlib is None:
            self._keep(chunk)
            return
        data = chunk
        try:
            while True:
                # Never ask zlib for more than one byte past the cap: a bomb cannot inflate in one call.
                step = min(self._limit - self._size + 1, _STEP_BYTES)
                out = self._zlib.decompress(data, step)
                self._keep(out)
                data = self._zlib.unconsumed_tail
                if not data and len(out) < step:
                    break  # input used up and nothing held back by the step bound
        except zlib.error as exc:
            raise HttpError(f"corrupt compressed body ({exc})") from exc

    def finish(self) -> bytes:
        if self._zlib is not None:
            try:
                self._keep(self._zlib.flush(self._limit - self._size + 1))
            except zlib.error as exc:
                raise HttpError(f"corrupt compressed body ({exc})") from exc
        return b"".join(self._parts)


class BoundedHttpClient:
    """One connection pool; every request bounded by a total deadline and a body-size cap.

    ``ca_file`` verifies TLS peers against that bundle; ``verify=False`` turns verification off (only
    where the operator asked for it, e.g. a BMC with a self-signed certificate). ``ssl_context``, when
    given, replaces both: the caller built it (a CA given as data, a client certificate).
    """

    def __init__(
        self,
        *,
        deadline_s: float = 2.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        ca_file: str | None = None,
        verify: bool = True,
        pool_maxsize: int = 16,
        num_pools: int = 32,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if deadline_s <= 0:
            raise ValueError("deadline_s must be > 0")
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be > 0")
        self.deadline_s = deadline_s
        self.max_body_bytes = max_body_bytes
        tls: dict[str, Any]
        if ssl_context is not None:
            tls = {"ssl_context": ssl_context}
        else:
            tls = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
            if ca_file is not None:
                tls["ca_certs"] = ca_file
        self._pool = urllib3.PoolManager(
            num_pools=num_pools, maxsize=pool_maxsize, block=False, retries=False, **tls
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        deadline_s: float | None = None,
        max_body_bytes: int | None = None,
        sink: Callable[[bytes], object] | None = None,
        on_headers: Callable[[int, Mapping[str, str]], object] | None = None,
    ) -> HttpResponse:
        """Send one request and read the whole answer within the deadline; ``HttpError`` otherwise.

        With ``sink``, the decompressed body goes to ``sink`` piece by piece (the answer's ``body`` is
        then empty); the cap and the deadline apply the same. An exception ``sink`` raises ends the
        read and propagates unchanged. ``on_headers(status, headers)`` is called once the headers are
        in, before the first byte of the body (a sink can tell an error answer from a stream)."""
        deadline_s = self.deadline_s if deadline_s is None else min(deadline_s, self.deadline_s)
        limit = self.max_body_bytes if max_body_bytes is None else max_body_bytes
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        sent = {"Accept-Encoding": "gzip, identity", **(headers or {})}
        start = time.monotonic()
        end = start + deadline_s
        try:
            response = self._pool.request(
                method,
                url,
                body=body,
                headers=sent,
                preload_content=False,
                decode_content=False,
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(total=deadline_s),
            )
        except urllib3.exceptions.NewConnectionError as exc:
            # Before TimeoutError: urllib3 2 makes a refused connection a subclass of ConnectTimeoutError.
            raise HttpError(f"cannot connect: {_reason(exc)}") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise DeadlineExceeded(f"no answer within {deadline_s:g}s") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise HttpError(f"{type(exc).__name__}: {_reason(exc)}") from exc
        except (UnicodeError, ValueError) as exc:  # a header value that is not Latin-1, a bad URL
            raise HttpError(f"cannot send the request ({type(exc).__name__})") from exc
        headers_in = {k.lower(): v for k, v in response.headers.items()}
        try:
            if on_headers is not None:
                on_headers(response.status, headers_in)
            payload = self._read_body(response, end, limit, deadline_s, sink)
        except BaseException:
            # The connection stopped mid-body: it must not go back to the pool.
            response.close()
            raise
        response.release_conn()
        return HttpResponse(response.status, headers_in, payload)

    def get(self, url: str, **kwargs: Any) -> HttpResponse:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> HttpResponse:
        return self.request("POST", url, **kwargs)

    @staticmethod
    def _read_body(
        response: urllib3.BaseHTTPResponse,
        end: float,
        limit: int,
        deadline_s: float,
        sink: Callable[[bytes], object] | None = None,
    ) -> bytes:
        decoder = _Decoder(response.headers.get("Content-Encoding", ""), limit, sink)
        declared = response.headers.get("Content-Length")
        plain = not response.headers.get("Content-Encoding")
        if plain and declared and declared.isdigit() and int(declared) > limit:
            # Refused before a byte of it is read.
            raise BodyTooLarge(f"body of {declared} bytes is larger than {limit} bytes")
        sock = getattr(getattr(response, "connection", None), "sock", None)
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(f"body not read within {deadline_s:g}s")
                if sock is not None:
                    # Each read may block only for what is left of the deadline.
                    sock.settimeout(left)
                chunk = response.read1(_CHUNK_BYTES)
                if not chunk:
                    return decoder.finish()
                decoder.feed(chunk)
        except (TimeoutError, urllib3.exceptions.TimeoutError) as exc:
            raise DeadlineExceeded(f"body not read within {deadline_s:g}s") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise HttpError(f"reading the body: {type(exc).__name__}") from exc

    def close(self) -> None:
        self._pool.clear()


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)[:200]
