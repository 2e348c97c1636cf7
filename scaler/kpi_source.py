"""Where observations come from: Prometheus behind a short-TTL, de-duplicating cache.

``KpiSource.observe(trigger)`` returns a policy ``Observation`` or raises ``KpiUnavailable`` /
``KpiQueryRejected``. ``PrometheusKpiSource`` sends the trigger's single combined query
(``scaler.queries``) through prometheus-api-client's ``PrometheusConnect`` with a bounded timeout and
no retries (KEDA's HPA path allows 3 s in all). ``CachedKpiSource`` makes sure that however many
ScaledObjects and KEDA operator replicas ask about the same workload, Prometheus sees one query per
TTL: entries are keyed by the whole query (and server, headers), concurrent misses wait on one
in-flight fetch (singleflight), entries past their TTL are served while one background refresh runs
(stale-while-revalidate, bounded at ``serve_stale_s``), and failures are cached briefly so a down
Prometheus is not hammered.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from scaler.metadata import TriggerConfig
from scaler.policy import Observation
from scaler.queries import KpiQueryRejected, KpiUnavailable, build_query, to_observation
from scaler.telemetry import ScalerMetrics

log = logging.getLogger(__name__)
_STATUS_RE = re.compile(r"HTTP Status Code (\d{3})")


@functools.lru_cache(maxsize=4096)
def _query_for(trigger: TriggerConfig) -> str:
    return build_query(trigger)


class KpiSource(Protocol):
    def observe(self, trigger: TriggerConfig) -> Observation: ...


@dataclass(frozen=True)
class PrometheusAuth:
    """How to reach the configured Prometheus (scaler-process settings, secrets read from files).

    Credentials are attached only to requests to ``url``: a ScaledObject naming another
    ``serverAddress`` in its metadata cannot make the scaler send them elsewhere.
    """

    url: str | None = None
    bearer_token_file: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None
    ca_file: Path | None = None
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 2.0
    restrict_server_address: bool = False


class PrometheusKpiSource:
    """Uncached: one combined instant query per ``observe``."""

    def __init__(self, auth: PrometheusAuth, metrics: ScalerMetrics | None = None) -> None:
        self.auth = auth
        self.metrics = metrics or ScalerMetrics()
        self._clients: dict[tuple[object, ...], PrometheusConnect] = {}
        self._sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()

    def server_for(self, trigger: TriggerConfig) -> str:
        url = trigger.server_address or self.auth.url
        if url is None:
            raise KpiQueryRejected("serverAddress is required (the scaler has no --prometheus-url default)")
        if self.auth.restrict_server_address and self.auth.url and url != self.auth.url.rstrip("/"):
            raise KpiQueryRejected(f"serverAddress {url!r} is not allowed (--restrict-server-address)")
        return url.rstrip("/")

    def _client(self, url: str, headers: dict[str, str], auth: tuple[str, str] | None) -> PrometheusConnect:
        """One PrometheusConnect per (server, headers, credentials); a rotated token makes a new one."""
        key = (url, tuple(sorted(headers.items())), auth)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                session = self._sessions.get(url)
                if session is None:
                    session = self._sessions[url] = requests.Session()
                    own = self.auth.url is not None and url == self.auth.url.rstrip("/")
                    if own and self.auth.ca_file is not None:
                        session.verify = str(self.auth.ca_file)
                # No retries: a retry would blow KEDA's 3 s budget; the cache absorbs blips instead.
                client = PrometheusConnect(
                    url=url, headers=headers, auth=auth, session=session, retry=Retry(total=0)
                )
                # PrometheusConnect mounts a 10-connection pool; misses may run on many gRPC threads.
                session.mount(url, HTTPAdapter(max_retries=Retry(total=0), pool_maxsize=64))
                if len(self._clients) > 1000:
                    self._clients.clear()
                self._clients[key] = client
            return client

    def _request_headers(
        self, url: str, trigger: TriggerConfig
    ) -> tuple[dict[str, str], tuple[str, str] | None]:
        headers = dict(trigger.custom_headers)
        auth: tuple[str, str] | None = None
        if self.auth.url is not None and url == self.auth.url.rstrip("/"):
            headers = {**dict(self.auth.headers), **headers}
            # Read on every fetch: projected tokens rotate (fetches are rare thanks to the cache).
            if self.auth.bearer_token_file is not None:
                headers["Authorization"] = "Bearer " + self.auth.bearer_token_file.read_text().strip()
            elif self.auth.basic_auth_user is not None and self.auth.basic_auth_password_file is not None:
                auth = (self.auth.basic_auth_user, self.auth.basic_auth_password_file.read_text().strip())
        return headers, auth

    def cache_key(self, trigger: TriggerConfig) -> tuple[object, ...]:
        return (self.server_for(trigger), trigger.custom_headers, _query_for(trigger), trigger.staleness_s)

    def observe(self, trigger: TriggerConfig) -> Observation:
        url = self.server_for(trigger)
        query = _query_for(trigger)
        try:
            headers, auth = self._request_headers(url, trigger)
        except OSError as exc:
            raise KpiUnavailable(f"cannot read Prometheus credentials: {exc}") from exc
        client = self._client(url, headers, auth)
        timeout = min(trigger.query_timeout_s or self.auth.timeout_s, self.auth.timeout_s)
        self.metrics.prometheus_queries.labels(trigger.namespace, trigger.workload).inc()
        start = time.perf_counter()
        try:
            result = client.custom_query(query, timeout=timeout)
        except requests.RequestException as exc:
            raise KpiUnavailable(f"Prometheus at {url} unreachable: {type(exc).__name__}") from exc
        except PrometheusApiClientException as exc:
            status = _STATUS_RE.search(str(exc))
            if status and status.group(1) in ("400", "422"):
                raise KpiQueryRejected(f"Prometheus rejected the query: {str(exc)[:300]}") from exc
            raise KpiUnavailable(f"Prometheus at {url} failed: {str(exc)[:200]}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise KpiUnavailable(
                f"Prometheus at {url} answered something that is not a query result"
            ) from exc
        finally:
            self.metrics.query_duration.observe(time.perf_counter() - start)
        if not isinstance(result, list):
            raise KpiUnavailable("Prometheus answered a non-vector result")
        return to_observation(trigger, result)


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
        refresh_workers: int = 4,
    ) -> None:
        self.inner = inner
        self.key = key
        self.ttl_s = ttl_s
        self.serve_stale_s = max(serve_stale_s, ttl_s)
        self.error_ttl_s = error_ttl_s
        self.metrics = metrics or ScalerMetrics()
        self.clock = clock
        self._entries: dict[object, _Entry] = {}
        self._inflight: dict[object, Future[Observation]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=refresh_workers, thread_name_prefix="eo-kpi-refresh")

    def _fetch(self, key: object, trigger: TriggerConfig, future: Future[Observation]) -> None:
        try:
            value = self.inner.observe(trigger)
        except Exception as exc:
            entry = _Entry(None, exc, self.clock())
            future.set_exception(exc)
        else:
            entry = _Entry(value, None, self.clock())
            future.set_result(value)
        with self._lock:
            self._entries[key] = entry
            self._inflight.pop(key, None)
            if len(self._entries) > 10000:
                self._prune(entry.fetched_at)

    def _prune(self, now: float) -> None:
        for stale_key in [k for k, e in self._entries.items() if now - e.fetched_at > self.serve_stale_s]:
            del self._entries[stale_key]

    def observe(self, trigger: TriggerConfig) -> Observation:
        key = self.key(trigger)
        now = self.clock()
        labels = (trigger.namespace, trigger.workload)
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
        return inflight.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
