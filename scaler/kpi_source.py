"""Where observations come from: Prometheus behind a short-TTL, de-duplicating cache.

``KpiSource.observe(trigger)`` returns a policy ``Observation`` or raises ``KpiUnavailable`` /
``KpiQueryRejected``. ``PrometheusKpiSource`` sends the trigger's combined query, and each custom part as
a query of its own (``scaler.queries``), through the project's one bounded client
(``common.prometheus.PrometheusClient`` over ``common.http.BoundedHttpClient``): one total deadline for
all of a poll's queries (connect, headers and body; KEDA's HPA path allows 3 s in all), answers capped
after decompression, no redirects, no retries, no peer text in messages. At most
``max_in_flight_per_server`` queries run against one server at a time, so a slow server holds a few
workers for at most its deadline and never the others.

``CachedKpiSource`` makes sure that however many ScaledObjects and KEDA operator replicas ask about the
same workload, Prometheus sees one query per TTL: entries are keyed by a digest of the whole query set
(and server, headers), concurrent misses wait on one in-flight fetch (singleflight) for at most
``wait_timeout_s``, entries past their TTL are served while one background refresh runs
(stale-while-revalidate, bounded at ``serve_stale_s``), failures are cached briefly so a down
Prometheus is not hammered, and the entries are bounded in number and age.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.http import BoundedHttpClient
from common.prometheus import (
    PrometheusClient,
    PrometheusCredentials,
    PrometheusRejected,
    PrometheusUnavailable,
    truncate,
)
from scaler.bounded import BoundedCache
from scaler.metadata import TriggerConfig, echo
from scaler.policy import Observation
from scaler.queries import (
    RENDERED_TRIGGERS,
    KpiQueryRejected,
    KpiUnavailable,
    build_query,
    custom_parts,
    custom_value,
    to_observation,
)
from scaler.telemetry import ScalerMetrics

log = logging.getLogger(__name__)

DEFAULT_MAX_ANSWER_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT_PER_SERVER = 8
MAX_CACHE_KEYS = 4096
# Built queries, by trigger: KEDA repeats the same metadata on every poll (as many as the rendered parts
# queries.py keeps).
_QUERIES: BoundedCache[TriggerConfig, tuple[str, tuple[tuple[str, str], ...]]] = BoundedCache(
    RENDERED_TRIGGERS, 600.0
)


def queries_for(trigger: TriggerConfig) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The combined query and the custom parts' own queries ``((name, expr), ...)`` of ``trigger``."""
    return _QUERIES.get_or_compute(
        trigger, lambda: (build_query(trigger), tuple(custom_parts(trigger).items()))
    )


class KpiSource(Protocol):
    def observe(self, trigger: TriggerConfig) -> Observation: ...


@dataclass(frozen=True)
class PrometheusAuth:
    """How to reach the configured Prometheus (scaler-process settings, secrets read from files).

    Credentials and ``headers`` are attached only to requests to ``url``. By default a trigger may not
    name another ``serverAddress`` at all (``restrict_server_address``); metadata headers are sent only
    when their name is in ``allowed_metadata_headers``, and the operator's headers always win.
    """

    url: str | None = None
    bearer_token_file: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None
    ca_file: Path | None = None
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 2.0
    restrict_server_address: bool = True
    allowed_metadata_headers: tuple[str, ...] = ()
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    max_in_flight_per_server: int = DEFAULT_MAX_IN_FLIGHT_PER_SERVER


class _ServerSlots:
    """At most ``per_server`` concurrent queries per server; the map holds only servers in use."""

    def __init__(self, per_server: int) -> None:
        self.per_server = per_server
        self._busy: dict[str, int] = {}
        self._cond = threading.Condition()

    def acquire(self, server: str, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        with self._cond:
            while self._busy.get(server, 0) >= self.per_server:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._busy[server] = self._busy.get(server, 0) + 1
            return True

    def release(self, server: str) -> None:
        with self._cond:
            left = self._busy[server] - 1
            if left:
                self._busy[server] = left
            else:
                del self._busy[server]
            self._cond.notify_all()


class PrometheusKpiSource:
    """Uncached: the trigger's queries on every ``observe``, within one deadline."""

    def __init__(self, auth: PrometheusAuth, metrics: ScalerMetrics | None = None) -> None:
        self.auth = auth
        self.metrics = metrics or ScalerMetrics()
        self._own_url = auth.url.rstrip("/") if auth.url else None
        ca = str(auth.ca_file) if auth.ca_file is not None else None
        deadline_s, cap = max(auth.timeout_s, 0.001), auth.max_answer_bytes
        # The operator's Prometheus (its CA bundle) and any other server (system CAs) in separate pools;
        # a pool holds as many connections as queries may be in flight to one server.
        per_server = auth.max_in_flight_per_server
        self._own = PrometheusClient(
            BoundedHttpClient(
                deadline_s=deadline_s, max_body_bytes=cap, ca_file=ca, pool_maxsize=per_server, num_pools=2
            )
        )
        self._other = PrometheusClient(
            BoundedHttpClient(
                deadline_s=deadline_s, max_body_bytes=cap, pool_maxsize=per_server, num_pools=16
            )
        )
        self._credentials = PrometheusCredentials(
            bearer_token_file=auth.bearer_token_file,
            basic_auth_user=auth.basic_auth_user,
            basic_auth_password_file=auth.basic_auth_password_file,
            headers=auth.headers,
        )
        self._allowed_headers = frozenset(name.lower() for name in auth.allowed_metadata_headers)
        self._slots = _ServerSlots(auth.max_in_flight_per_server)
        # As many as the parsed triggers (scaler.service.MAX_TRIGGERS): a poll that misses renders the
        # trigger's whole query set again.
        self._keys: BoundedCache[TriggerConfig, bytes] = BoundedCache(MAX_CACHE_KEYS, 600.0)

    def server_for(self, trigger: TriggerConfig) -> str:
        url = (trigger.server_address or self._own_url or "").rstrip("/")
        if not url:
            raise KpiQueryRejected("serverAddress is required (the scaler has no --prometheus-url default)")
        if self.auth.restrict_server_address and url != self._own_url:
            raise KpiQueryRejected(
                f"serverAddress {echo(url)} is not the scaler's --prometheus-url "
                "(the operator can allow others with --allow-any-server-address)"
            )
        return url

    def _metadata_headers(self, trigger: TriggerConfig) -> dict[str, str]:
        for name, _ in trigger.custom_headers:
            if name.lower() not in self._allowed_headers:
                raise KpiQueryRejected(
                    f"metadata key 'customHeaders': header {echo(name)} is not allowed by the operator "
                    "(--allowed-metadata-headers)"
                )
        return dict(trigger.custom_headers)

    def _request_headers(self, url: str, trigger: TriggerConfig) -> dict[str, str]:
        headers = self._metadata_headers(trigger)
        if url != self._own_url:
            return headers
        # Read on every fetch: projected tokens rotate (fetches are rare thanks to the cache).
        operator = self._credentials.request_headers()
        # The operator's headers always win, whatever the case of the trigger's names.
        lowered = {name.lower() for name in operator}
        return {**{k: v for k, v in headers.items() if k.lower() not in lowered}, **operator}

    def cache_key(self, trigger: TriggerConfig) -> bytes:
        """A digest of everything the answer depends on; computed once per trigger (KEDA repeats the
        same metadata on every poll, and hashing the whole query set was a fifth of a cache hit's time).
        A trigger the operator's settings refuse raises here on every poll (refusals are not kept)."""
        return self._keys.get_or_compute(trigger, lambda: self._digest(trigger))

    def _digest(self, trigger: TriggerConfig) -> bytes:
        server = self.server_for(trigger)
        self._metadata_headers(trigger)
        combined, custom = queries_for(trigger)
        digest = hashlib.sha256()
        for part in (server, repr(trigger.custom_headers), combined, repr(custom)):
            digest.update(part.encode("utf-8", errors="surrogatepass"))
            digest.update(b"\0")
        return digest.digest()

    def _query(
        self, server: str, expr: str, headers: dict[str, str], end: float, trigger: TriggerConfig
    ) -> tuple[str, object]:
        client = self._own if server == self._own_url else self._other
        left = end - time.monotonic()
        if left <= 0:
            raise KpiUnavailable(f"Prometheus at {truncate(server, 100)}: no time left for the next query")
        self.metrics.prometheus_queries.labels(*self.metrics.workload_labels(trigger)).inc()
        start = time.perf_counter()
        try:
            return client.query(server, expr, headers=headers, deadline_s=left)
        except PrometheusRejected as exc:
            self.metrics.prometheus_failures.labels("rejected").inc()
            raise KpiQueryRejected(truncate(str(exc), 300)) from exc
        except PrometheusUnavailable as exc:
            self.metrics.prometheus_failures.labels("unavailable").inc()
            raise KpiUnavailable(truncate(str(exc), 300)) from exc
        finally:
            self.metrics.query_duration.observe(time.perf_counter() - start)

    def observe(self, trigger: TriggerConfig) -> Observation:
        server = self.server_for(trigger)
        try:
            headers = self._request_headers(server, trigger)
        except OSError as exc:
            raise KpiUnavailable(f"cannot read Prometheus credentials: {type(exc).__name__}") from exc
        combined, custom = queries_for(trigger)
        deadline = min(trigger.query_timeout_s or self.auth.timeout_s, self.auth.timeout_s)
        end = time.monotonic() + deadline
        if not self._slots.acquire(server, deadline):
            self.metrics.prometheus_failures.labels("busy").inc()
            raise KpiUnavailable(
                f"Prometheus at {truncate(server, 100)} is slow: {self.auth.max_in_flight_per_server} "
                f"queries still in flight after {deadline:g}s"
            )
        try:
            result_type, result = self._query(server, combined, headers, end, trigger)
            if result_type != "vector":
                raise KpiUnavailable(f"Prometheus answered a {result_type}, not a vector")
            if not custom:
                return to_observation(trigger, result)
            # Custom PromQL only once the pipeline's own evidence holds (a dead one is UNAVAILABLE).
            to_observation(trigger, result)
            values = {
                name: custom_value(name, *self._query(server, expr, headers, end, trigger))
                for name, expr in custom
            }
        finally:
            self._slots.release(server)
        return to_observation(trigger, result, values)


def _detached(exc: Exception) -> Exception:
    """The error to keep for ``error_ttl_s``: its message without its traceback, whose frames would keep
    every local of the failed fetch (trigger, headers, query text, answer) alive while it is cached."""
    for kind in (KpiQueryRejected, KpiUnavailable):
        if isinstance(exc, kind):
            return kind(str(exc))
    return exc.with_traceback(None)


@dataclass
class _Entry:
    value: Observation | None
    error: Exception | None
    fetched_at: float


class CachedKpiSource:
    """Short-TTL cache with singleflight and stale-while-revalidate in front of another source."""

    def __init__(
        self,
        inner: KpiSource,
        *,
        key: Callable[[TriggerConfig], object],
        ttl_s: float = 10.0,
        serve_stale_s: float = 30.0,
        error_ttl_s: float = 2.0,
        metrics: ScalerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_workers: int = 8,
        wait_timeout_s: float = 2.5,
        max_entries: int = 4096,
    ) -> None:
        self.inner = inner
        self.key = key
        self.ttl_s = ttl_s
        self.serve_stale_s = max(serve_stale_s, ttl_s)
        self.error_ttl_s = error_ttl_s
        self.metrics = metrics or ScalerMetrics()
        self.clock = clock
        self.wait_timeout_s = wait_timeout_s
        self.max_entries = max_entries
        # Oldest fetch first: every store moves its key to the end.
        self._entries: OrderedDict[object, _Entry] = OrderedDict()
        self._inflight: dict[object, Future[Observation]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=refresh_workers, thread_name_prefix="eo-kpi-refresh")

    def _fetch(self, key: object, trigger: TriggerConfig, future: Future[Observation]) -> None:
        try:
            value = self.inner.observe(trigger)
        except Exception as exc:
            error = _detached(exc)
            entry = _Entry(None, error, self.clock())
            future.set_exception(error)
        else:
            entry = _Entry(value, None, self.clock())
            future.set_result(value)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._inflight.pop(key, None)
            self._prune(entry.fetched_at)

    def _prune(self, now: float) -> None:
        """Drop entries too old to serve, then the oldest beyond ``max_entries`` (caller holds the lock)."""
        keep_s = max(self.serve_stale_s, self.error_ttl_s)
        while self._entries:
            oldest_key, oldest = next(iter(self._entries.items()))
            if now - oldest.fetched_at <= keep_s and len(self._entries) <= self.max_entries:
                break
            del self._entries[oldest_key]

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, trigger: TriggerConfig) -> Observation:
        key = self.key(trigger)
        now = self.clock()
        labels = self.metrics.workload_labels(trigger)
        with self._lock:
            entry = self._entries.get(key)
            inflight = self._inflight.get(key)
            if entry is not None:
                age = now - entry.fetched_at
                if entry.error is not None and age < self.error_ttl_s:
                    self.metrics.cache_hits.labels(*labels).inc()
                    raise entry.error
                if entry.value is not None and age < self.serve_stale_s:
                    if age >= self.ttl_s and inflight is None:
                        fut: Future[Observation] = Future()
                        self._inflight[key] = fut
                        self._pool.submit(self._fetch, key, trigger, fut)
                    self.metrics.cache_hits.labels(*labels).inc()
                    return entry.value
            self.metrics.cache_misses.labels(*labels).inc()
            owner = inflight is None
            if owner:
                inflight = Future()
                self._inflight[key] = inflight
        assert inflight is not None
        if owner:
            self._fetch(key, trigger, inflight)
        try:
            # A waiter never waits longer than one query may take: a slow fetch costs it that, no more.
            return inflight.result(timeout=self.wait_timeout_s)
        except FutureTimeout:
            raise KpiUnavailable(
                f"the Prometheus answer for {trigger.namespace}/{trigger.workload} is still pending after "
                f"{self.wait_timeout_s:g}s"
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
