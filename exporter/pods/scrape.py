"""Read inference servers' /metrics concurrently, each within one bounded deadline.

All reads of a sample start together on a thread pool and the sample waits at most ``timeout_s`` for
them, so an unreachable or slow server costs one timeout per sample, not one per pod, and the other
pods' readings are kept. Text is parsed with prometheus_client's parser; anything it rejects counts as
a failed read for that pod only.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import urllib3
from prometheus_client.parser import text_string_to_metric_families

from exporter.pods.accounting import PodKey
from exporter.pods.appmetrics import SERVERS, AppReading, PodScrapeConfig, Sample, detect_server, extract

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ScrapeTarget:
    key: PodKey
    ip: str
    ports: tuple[int, ...]  # candidates in order; the first that answers is remembered
    config: PodScrapeConfig


class ReadFailed(Exception):
    pass


def parse_metrics_text(text: str) -> list[Sample]:
    """Prometheus text format to samples; ``ReadFailed`` when the text is malformed."""
    try:
        return [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except (ValueError, TypeError, IndexError) as exc:
        raise ReadFailed(f"malformed metrics text: {exc}") from exc


class AppReader:
    """Reads every target of a sample concurrently, each answer bounded by ``timeout_s``."""

    def __init__(self, timeout_s: float = 1.0, max_workers: int = 32) -> None:
        self._timeout_s = timeout_s
        timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._http = urllib3.PoolManager(num_pools=256, maxsize=1, retries=False, timeout=timeout)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="eo-app")
        self._ports: dict[PodKey, int] = {}
        self._lock = threading.Lock()
        self._failing: set[PodKey] = set()

    def read_all(self, targets: Sequence[ScrapeTarget]) -> dict[PodKey, AppReading | None]:
        """Reading per target; ``None`` for a target that failed or missed the deadline."""
        futures = {self._pool.submit(self._read, t): t for t in targets}
        done, _ = concurrent.futures.wait(futures, timeout=self._timeout_s)
        results: dict[PodKey, AppReading | None] = {}
        for future, target in futures.items():
            reading: AppReading | None = None
            error: str | None = "no answer within the deadline"
            if future in done:
                try:
                    reading, error = future.result(), None
                except ReadFailed as exc:
                    error = str(exc)
            else:
                future.cancel()
            results[target.key] = reading
            self._log_change(target, error)
        return results

    def _log_change(self, target: ScrapeTarget, error: str | None) -> None:
        # Log transitions only: a server down for an hour should not write a line every sample.
        with self._lock:
            if error is None and target.key in self._failing:
                self._failing.discard(target.key)
                log.info("inference server of %s/%s answers again", target.key.namespace, target.key.pod)
            elif error is not None and target.key not in self._failing:
                self._failing.add(target.key)
                log.warning(
                    "cannot read the inference server of %s/%s at %s: %s",
                    target.key.namespace,
                    target.key.pod,
                    target.ip,
                    error,
                )

    def _read(self, target: ScrapeTarget) -> AppReading:
        with self._lock:
            known = self._ports.get(target.key)
        ports = (known, *(p for p in target.ports if p != known)) if known else target.ports
        last_error = "no metrics port known (set the energy-orchestrator.io/metrics-port annotation)"
        for port in ports:
            try:
                reading = self._read_port(target, port)
            except ReadFailed as exc:
                last_error = f"port {port}: {exc}"
                continue
            with self._lock:
                self._ports[target.key] = port
            return reading
        raise ReadFailed(last_error)

    def _read_port(self, target: ScrapeTarget, port: int) -> AppReading:
        config = target.config
        url = f"http://{target.ip}:{port}{config.path or '/metrics'}"
        try:
            response = self._http.request("GET", url, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise ReadFailed(f"{url}: {exc.__class__.__name__}: {exc}") from exc
        try:
            if response.status != 200:
                raise ReadFailed(f"{url}: HTTP {response.status}")
            body = response.read(MAX_BODY_BYTES + 1)
        except urllib3.exceptions.HTTPError as exc:
            raise ReadFailed(f"{url}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            response.release_conn()
        if len(body) > MAX_BODY_BYTES:
            raise ReadFailed(f"{url}: metrics text larger than {MAX_BODY_BYTES} bytes")
        samples = parse_metrics_text(body.decode("utf-8", errors="replace"))
        profile = config.profile(detect_server(samples))
        if profile is None:
            raise ReadFailed(f"{url}: no known inference-server metrics (set energy-orchestrator.io/server)")
        return extract(samples, profile)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.clear()


def candidate_ports(config: PodScrapeConfig, container_ports: Mapping[str, int]) -> tuple[int, ...]:
    """Ports to try: annotation, a port named ``metrics``, the annotated server's default, then every
    declared container port and the built-in servers' defaults (the first that answers is kept)."""
    first = config.first_port(container_ports)
    if config.port:
        return (config.port,)
    ordered = [first] if first else []
    ordered += list(container_ports.values()) + [s.port for s in SERVERS.values()]
    return tuple(dict.fromkeys(p for p in ordered if p))
