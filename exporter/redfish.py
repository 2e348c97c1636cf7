"""Node power from the BMC through Redfish, polled in a background thread.

BMCs answer in hundreds of milliseconds to seconds, and some hang: the poller runs at its own
interval and keeps the last good sample; a scrape only reads that cache, so it never waits on the BMC.
A sample older than ``max_age_s`` is not published (the ``redfish`` collector reports down instead),
so a dead BMC never shows a frozen value as current.

Every request goes through ``common.http.BoundedHttpClient``: a total deadline of ``timeout_s``
(connect, headers and body; a trickling BMC is cut off at it), at most ``MAX_BODY_BYTES`` of body after
decompression, and no redirect is followed (a 3xx is a failed read, so the BMC's credentials never go
elsewhere). One poll follows at most ``MAX_MEMBERS`` chassis or power supplies and ends within the
poll interval whatever the BMC lists.

Where the reading comes from, in order of preference (the ``source`` label says which):

1. ``environment_metrics``: ``Chassis/{id}/EnvironmentMetrics`` ``PowerWatts.Reading`` (Redfish 2020.4+).
2. ``power_subsystem``: ``Chassis/{id}/PowerSubsystem/PowerSupplies/*/Metrics`` ``InputPowerWatts.Reading``,
   summed over the supplies.
3. ``power``: the deprecated ``Chassis/{id}/Power`` ``PowerControl[].PowerConsumedWatts`` (the first
   entry with a value; further entries are usually parts of the first, so they are not summed).
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from prometheus_client.metrics_core import GaugeMetricFamily

from common.http import BoundedHttpClient, HttpError
from exporter.collector import SourceReading

log = logging.getLogger(__name__)

# Redfish documents are a few kilobytes; a megabyte is already far more than any BMC answers.
MAX_BODY_BYTES = 1024 * 1024
# Chassis or power supplies followed per poll (real servers have a handful).
MAX_MEMBERS = 64


class RedfishError(Exception):
    """The BMC answered something we cannot use (HTTP error, bad JSON, no power reading)."""


@dataclass(frozen=True)
class RedfishConfig:
    url: str
    username: str | None = None
    password: str | None = None
    verify: bool | str = True
    """True (system CAs), a CA bundle path, or False (only with --redfish-insecure-skip-verify)."""
    timeout_s: float = 5.0
    interval_s: float = 30.0
    max_age_s: float = 120.0
    chassis_id: str | None = None


@dataclass(frozen=True)
class PowerSample:
    watts: float
    source: str
    taken_at_s: float
    """``time.monotonic()`` when the answer arrived."""


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _link(doc: Mapping[str, Any], key: str) -> str | None:
    ref = doc.get(key)
    if isinstance(ref, Mapping) and isinstance(ref.get("@odata.id"), str):
        return str(ref["@odata.id"])
    return None


def environment_metrics_watts(doc: Mapping[str, Any]) -> float | None:
    power = doc.get("PowerWatts")
    return _number(power.get("Reading")) if isinstance(power, Mapping) else None


def supply_metrics_watts(doc: Mapping[str, Any]) -> float | None:
    power = doc.get("InputPowerWatts")
    return _number(power.get("Reading")) if isinstance(power, Mapping) else None


def legacy_power_watts(doc: Mapping[str, Any]) -> float | None:
    controls = doc.get("PowerControl")
    if not isinstance(controls, list):
        return None
    for control in controls:
        if isinstance(control, Mapping) and (watts := _number(control.get("PowerConsumedWatts"))) is not None:
            return watts
    return None


def read_secret(path: Path | None) -> str | None:
    """A credential from a file (a mounted Secret), without its trailing newline."""
    return None if path is None else path.read_text().rstrip("\r\n")


def _members(doc: Mapping[str, Any]) -> list[str]:
    """The ``@odata.id`` of a collection's members (the first ``MAX_MEMBERS``)."""
    members = doc.get("Members")
    if not isinstance(members, list):
        return []
    links = [m.get("@odata.id") for m in members if isinstance(m, Mapping)]
    return [link for link in links if isinstance(link, str)][:MAX_MEMBERS]


class RedfishClient:
    """Finds the chassis and reads its power; one connection pool, every request bounded (above)."""

    def __init__(self, config: RedfishConfig) -> None:
        self._config = config
        self._base = config.url.rstrip("/")
        self._origin = urlsplit(self._base)._replace(path="", query="", fragment="").geturl()
        verify = config.verify is not False
        ca_file = config.verify if isinstance(config.verify, str) else None
        self._http = BoundedHttpClient(
            deadline_s=config.timeout_s, max_body_bytes=MAX_BODY_BYTES, ca_file=ca_file, verify=verify
        )
        self._headers = {"Accept": "application/json"}
        if config.username is not None:
            token = f"{config.username}:{config.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        self._chassis: str | None = None
        self._poll_end: float | None = None

    def close(self) -> None:
        self._http.close()

    def _url(self, path: str) -> str:
        """A BMC link as a URL on the configured BMC: links to other hosts are refused (the
        credentials go only to the BMC the operator named)."""
        url = urljoin(self._base + "/", path)
        if urlsplit(url)._replace(path="", query="", fragment="").geturl() != self._origin:
            raise RedfishError(f"link {path[:100]!r} points away from the BMC")
        return url

    def _get(self, path: str) -> Mapping[str, Any]:
        url = self._url(path)
        deadline_s = self._config.timeout_s
        if self._poll_end is not None:
            deadline_s = min(deadline_s, self._poll_end - time.monotonic())
            if deadline_s <= 0:
                raise RedfishError("the poll ran out of time (the BMC answers too slowly)")
        try:
            resp = self._http.get(url, headers=self._headers, deadline_s=deadline_s)
        except HttpError as err:
            raise RedfishError(f"GET {url}: {err}") from err
        if resp.status != 200:
            raise RedfishError(f"GET {url}: HTTP {resp.status}")
        try:
            return resp.json_object()
        except HttpError as err:
            raise RedfishError(f"GET {url}: malformed JSON ({err})") from err

    def _chassis_paths(self) -> list[str]:
        if self._config.chassis_id:
            return [f"/redfish/v1/Chassis/{self._config.chassis_id}"]
        paths = _members(self._get("/redfish/v1/Chassis"))
        if not paths:
            raise RedfishError("no chassis listed under /redfish/v1/Chassis")
        return paths

    def _chassis_power(self, chassis: str) -> tuple[float, str] | None:
        doc = self._get(chassis)
        if (link := _link(doc, "EnvironmentMetrics")) and (
            watts := environment_metrics_watts(self._get(link))
        ) is not None:
            return watts, "environment_metrics"
        if link := _link(doc, "PowerSubsystem"):
            supplies_link = _link(self._get(link), "PowerSupplies")
            readings = []
            for member in _members(self._get(supplies_link)) if supplies_link else []:
                supply = self._get(member)
                if (metrics := _link(supply, "Metrics")) and (w := supply_metrics_watts(self._get(metrics))):
                    readings.append(w)
            if readings:
                return sum(readings), "power_subsystem"
        if (link := _link(doc, "Power")) and (watts := legacy_power_watts(self._get(link))) is not None:
            return watts, "power"
        return None

    def read_power(self) -> tuple[float, str]:
        """Node power in watts and the resource it came from, within one poll interval (each request
        within ``timeout_s``). Raises RedfishError."""
        self._poll_end = time.monotonic() + self._config.interval_s
        try:
            paths = [self._chassis] if self._chassis else self._chassis_paths()
            for chassis in paths:
                found = self._chassis_power(chassis)
                if found is not None:
                    self._chassis = chassis
                    return found
            self._chassis = None
            raise RedfishError(f"no power reading in {len(paths)} chassis ({', '.join(paths[:3])[:200]})")
        finally:
            self._poll_end = None


class RedfishPoller:
    """Polls ``read_power`` every ``interval_s`` in a daemon thread and caches the last good sample."""

    def __init__(
        self,
        read_power: Callable[[], tuple[float, str]],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_power = read_power
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sample: PowerSample | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redfish-poller", daemon=True)
        self._failing = False

    def start(self) -> RedfishPoller:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def latest(self) -> PowerSample | None:
        with self._lock:
            return self._sample

    def poll_once(self) -> None:
        try:
            watts, source = self._read_power()
        except (RedfishError, OSError) as err:
            if not self._failing:
                log.warning("Redfish power read failed (logged again only after a success): %s", err)
            self._failing = True
            return
        if self._failing:
            log.info("Redfish power read works again (%s)", source)
        self._failing = False
        with self._lock:
            self._sample = PowerSample(watts, source, self._clock())

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self._clock()
            self.poll_once()
            self._stop.wait(max(self._interval_s - (self._clock() - started), 0.0))


class RedfishSource:
    """The ``redfish`` collector: the cached node power, if it is fresh enough, and its age."""

    name = "redfish"

    def __init__(
        self,
        poller: RedfishPoller,
        node: str,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._poller = poller
        self._node = node
        self._max_age_s = max_age_s
        self._clock = clock

    def read(self) -> SourceReading:
        sample = self._poller.latest()
        if sample is None:
            return SourceReading((), False)
        age_s = self._clock() - sample.taken_at_s
        if age_s > self._max_age_s:
            return SourceReading((), False)
        power = GaugeMetricFamily(
            "eo_node_power_watts",
            "Node power in watts from the BMC over Redfish (last poll; age in eo_node_power_age_seconds).",
            labels=["node", "source"],
        )
        power.add_metric([self._node, sample.source], sample.watts)
        age = GaugeMetricFamily(
            "eo_node_power_age_seconds",
            "Seconds since the published Redfish node power reading was taken.",
            labels=["node", "source"],
        )
        age.add_metric([self._node, sample.source], age_s)
        return SourceReading([power, age], True)
