"""The scrape-time collector: runs every source at scrape time and reports how each one did.

A source reads its hardware when Prometheus scrapes (no background loop, so a value is never older
than the scrape) and returns its metric families plus whether it is healthy. A source that raises or
reports itself unhealthy flips ``eo_exporter_collector_up{collector=...}`` to 0; its families are
omitted (or, for a partial failure such as one lost GPU out of eight, only the readable part is
published), and the scrape itself still succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceReading:
    families: Sequence[Metric]
    up: bool


class Source(Protocol):
    """One hardware reader published under ``collector=<name>``."""

    @property
    def name(self) -> str: ...

    def read(self) -> SourceReading: ...


class OnceLog:
    """Log a message the first time a key is seen (per process), so a broken reading does not flood."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[object] = set()
        self._lock = threading.Lock()

    def __call__(self, key: object, level: int, msg: str, *args: object) -> None:
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        self._logger.log(level, msg, *args)


class ExporterCollector(Collector):
    """Yields every source's families, then ``eo_exporter_collector_up`` and the collect durations."""

    def __init__(self, sources: Sequence[Source], timer: Callable[[], float] = time.perf_counter) -> None:
        self._sources = list(sources)
        self._timer = timer
        # Scrapes are serialised: sources keep counters that must see readings in order.
        self._lock = threading.Lock()
        self._was_up: dict[str, bool] = {}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families: list[Metric] = []
            up = GaugeMetricFamily(
                "eo_exporter_collector_up",
                "1 if the collector's last read succeeded completely, 0 if it failed or was partial.",
                labels=["collector"],
            )
            duration = GaugeMetricFamily(
                "eo_exporter_collect_duration_seconds",
                "Seconds the collector's last read took (wall clock, at scrape time).",
                labels=["collector"],
            )
            for source in self._sources:
                start = self._timer()
                try:
                    reading = source.read()
                except Exception:
                    if self._was_up.get(source.name, True):
                        log.exception("collector %s failed; its metrics are omitted", source.name)
                    reading = SourceReading((), False)
                elapsed = self._timer() - start
                if reading.up and not self._was_up.get(source.name, True):
                    log.info("collector %s is up again", source.name)
                self._was_up[source.name] = reading.up
                families.extend(reading.families)
                up.add_metric([source.name], 1.0 if reading.up else 0.0)
                duration.add_metric([source.name], elapsed)
            families.extend((up, duration))
        yield from families
