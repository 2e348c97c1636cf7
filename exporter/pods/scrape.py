"""Read inference servers' /metrics concurrently, every read within the sample's one deadline.

All reads of a sample start together on a thread pool and share one absolute deadline,
``timeout_s`` after the sample starts. Each read goes through ``common.http.BoundedHttpClient``: the
deadline covers connecting, the headers and the whole body (each socket read waits only for the time
left), so a server that trickles or hangs is cut off at the deadline and its worker is free again
for the next sample; a slow pod costs one worker for at most the deadline, never the other pods. A
read that waited for a worker past the deadline fails at once. Reads end by themselves at the
deadline, so none holds a worker into the next sample (the deadline is below the sample interval).

Bodies are capped at ``max_body_bytes`` after decompression (``--pod-metrics-max-bytes``, 4 MiB by
default) and streamed through ``LineFilter``: only the lines of the sample names the pod's profile
can use are kept and parsed (with prometheus_client's parser), so a large page costs one pass over
its bytes and a few kilobytes of memory, not a parse of all of it. Anything rejected (too big, too
slow, malformed wanted lines, no known server) counts as a failed read of that pod only.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from common.http import BoundedHttpClient, HttpError
from exporter.pods.accounting import PodKey
from exporter.pods.appmetrics import (
    SERVERS,
    SIGNATURES,
    AppReading,
    PodScrapeConfig,
    Sample,
    TooManySeries,
    extract,
    wanted_sample_names,
)
from exporter.pods.linefilter import LineFilter, TextRejected

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_WORKERS = 32
# How much longer than the deadline the sample waits for reads to report (thread hand-over only).
_REPORT_SLACK_S = 0.2


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
    """Reads every target of a sample concurrently, all within ``timeout_s`` of the sample's start."""

    def __init__(
        self,
        timeout_s: float = 1.0,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout_s = timeout_s
        self._max_body_bytes = max_body_bytes
        self._clock = clock
        # One small pool per pod address; connections that stopped mid-body are never reused.
        self._http = BoundedHttpClient(
            deadline_s=timeout_s, max_body_bytes=max_body_bytes, num_pools=256, pool_maxsize=2
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="eo-app")
        self._ports: dict[PodKey, int] = {}
        self._lock = threading.Lock()
        self._failing: set[PodKey] = set()

    def read_all(self, targets: Sequence[ScrapeTarget]) -> dict[PodKey, AppReading | None]:
        """Reading per target; ``None`` for a target that failed or missed the deadline."""
        end = self._clock() + self._timeout_s
        futures = {self._pool.submit(self._read, t, end): t for t in targets}
        done, _ = concurrent.futures.wait(futures, timeout=self._timeout_s + _REPORT_SLACK_S)
        results: dict[PodKey, AppReading | None] = {}
        for future, target in futures.items():
            reading: AppReading | None = None
            error: str | None = "no answer within the deadline"
            if future in done:
                try:
                    reading, error = future.result(), None
                except ReadFailed as exc:
                    error = str(exc)
                except Exception as exc:  # a bug must cost this pod's reading, not the sample
                    error = f"{type(exc).__name__}: {exc}"
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

    def _read(self, target: ScrapeTarget, end: float) -> AppReading:
        with self._lock:
            known = self._ports.get(target.key)
        ports = (known, *(p for p in target.ports if p != known)) if known else target.ports
        last_error = "no metrics port known (set the energy-orchestrator.io/metrics-port annotation)"
        for port in ports:
            try:
                reading = self._read_port(target, port, end)
            except ReadFailed as exc:
                last_error = f"port {port}: {exc}"
                continue
            with self._lock:
                self._ports[target.key] = port
            return reading
        raise ReadFailed(last_error)

    def _read_port(self, target: ScrapeTarget, port: int, end: float) -> AppReading:
        config = target.config
        url = f"http://{target.ip}:{port}{config.path or '/metrics'}"
        left = end - self._clock()
        if left <= 0:
            raise ReadFailed(f"{url}: no answer within the deadline")
        lines = LineFilter(wanted_sample_names(config), SIGNATURES)
        try:
            response = self._http.get(url, deadline_s=left, sink=lines.feed)
            if response.status != 200:
                raise ReadFailed(f"{url}: HTTP {response.status}")
            kept = lines.finish()
        except (HttpError, TextRejected) as exc:
            raise ReadFailed(f"{url}: {exc}") from exc
        samples = parse_metrics_text(b"\n".join(kept).decode("utf-8", errors="replace"))
        profile = config.profile(lines.detected)
        if profile is None:
            raise ReadFailed(f"{url}: no known inference-server metrics (set energy-orchestrator.io/server)")
        try:
            return extract(samples, profile)
        except TooManySeries as exc:
            raise ReadFailed(f"{url}: {exc}") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()


def candidate_ports(config: PodScrapeConfig, container_ports: Mapping[str, int]) -> tuple[int, ...]:
    """Ports to try: annotation, a port named ``metrics``, the annotated server's default, then every
    declared container port and the built-in servers' defaults (the first that answers is kept)."""
    first = config.first_port(container_ports)
    if config.port:
        return (config.port,)
    ordered = [first] if first else []
    ordered += list(container_ports.values()) + [s.port for s in SERVERS.values()]
    return tuple(dict.fromkeys(p for p in ordered if p))
