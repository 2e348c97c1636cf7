"""CPU energy from RAPL through the powercap sysfs tree (``/sys/class/powercap``).

Zones and what is published (each zone once, never summed):

* ``intel-rapl:N`` (and ``amd-rapl:N``, same layout) named ``package-N``: ``domain="package"``.
* Its sub-zones ``intel-rapl:N:M`` named ``core``, ``uncore`` or ``dram``: ``domain=<name>``. Core and
  uncore energy is already inside the package's; dram usually is not. Sub-domains are published with
  their own label and never added to the package series; sum ``domain="package"`` for CPU energy.
* ``intel-rapl-mmio:N`` is the same package zone read through MMIO: skipped, it would count twice.
* ``psys`` (platform, laptops) covers the package and more: skipped for the same reason.

The kernel lists sub-zones both nested (``intel-rapl:0/intel-rapl:0:0``) and as top-level links
(``intel-rapl:0:0``); zones are de-duplicated by that id. Counters wrap at ``max_energy_range_uj``.
``energy_uj`` is readable by root only since CVE-2020-8694: a PermissionError is logged once and the
``cpu`` collector reports down.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily

from exporter.collector import OnceLog, SourceReading
from exporter.counters import WrappingCounter

log = logging.getLogger(__name__)

DEFAULT_RAPL_ROOT = Path("/sys/class/powercap")
_ZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+)(?::(\d+))?$")
_SUB_DOMAINS = {"core", "uncore", "dram"}

ReadText = Callable[[Path], str]


def read_sysfs(path: Path) -> str:
    with path.open() as f:
        return f.read()


@dataclass
class RaplZone:
    path: Path
    package: str
    domain: str
    max_range_uj: int
    counter: WrappingCounter = field(init=False)

    def __post_init__(self) -> None:
        self.counter = WrappingCounter(self.max_range_uj)


def discover_zones(root: Path, read_text: ReadText = read_sysfs) -> list[RaplZone]:
    """Every package and sub-domain zone under ``root``, each once, sorted by package and domain."""
    if not root.is_dir():
        return []
    found: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        match = _ZONE.match(entry.name)
        if match is None:
            continue  # intel-rapl-mmio:*, other powercap drivers
        found.setdefault(entry.name, entry)
        if match.group(3) is None:
            for sub in sorted(entry.iterdir()):
                if _ZONE.match(sub.name) and sub.is_dir():
                    found.setdefault(sub.name, sub)
    zones: list[RaplZone] = []
    packages: dict[str, str] = {}  # "intel-rapl:0" -> "0"
    for zone_id, path in sorted(found.items(), key=lambda kv: kv[0].count(":")):
        try:
            name = read_text(path / "name").strip()
            max_range = int(read_text(path / "max_energy_range_uj").strip())
        except (OSError, ValueError) as err:
            log.warning("RAPL zone %s skipped: %s", path, err)
            continue
        match = _ZONE.match(zone_id)
        assert match is not None
        if match.group(3) is None:
            if not name.startswith("package-"):
                log.info("RAPL zone %s (%s) skipped: it overlaps the package zones", zone_id, name)
                continue
            package = name.removeprefix("package-")
            packages[zone_id] = package
            zones.append(RaplZone(path, package, "package", max_range))
        else:
            parent = f"{match.group(1)}:{match.group(2)}"
            if parent not in packages or name not in _SUB_DOMAINS:
                log.info("RAPL zone %s (%s) skipped", zone_id, name)
                continue
            zones.append(RaplZone(path, packages[parent], name, max_range))
    zones.sort(key=lambda z: (z.package, z.domain != "package", z.domain))
    return zones


class RaplSource:
    """The ``cpu`` collector: ``eo_cpu_energy_joules_total{package,domain}`` from RAPL zones."""

    name = "cpu"

    def __init__(self, zones: list[RaplZone], node: str, read_text: ReadText = read_sysfs) -> None:
        self._zones = zones
        self._node = node
        self._read_text = read_text
        self._once = OnceLog(log)

    def read(self) -> SourceReading:
        family = CounterMetricFamily(
            "eo_cpu_energy_joules",
            "CPU energy in joules from RAPL (wraparound handled). Sub-domains (core, uncore, dram) are "
            "separate series, never included in domain=package twice: sum domain=package for CPU energy.",
            labels=["node", "package", "domain"],
        )
        up = True
        for zone in self._zones:
            try:
                raw_uj = int(self._read_text(zone.path / "energy_uj").strip())
            except PermissionError:
                self._once(
                    "rapl-permission",
                    logging.ERROR,
                    "cannot read %s: RAPL energy_uj is readable by root only (CVE-2020-8694); run the "
                    "exporter as root with /sys/class/powercap mounted read-only to publish CPU energy. "
                    "CPU collector marked down.",
                    zone.path / "energy_uj",
                )
                return SourceReading((), False)
            except (OSError, ValueError) as err:
                key = ("rapl-read", zone.path)
                self._once(key, logging.WARNING, "RAPL zone %s unreadable: %s", zone.path, err)
                up = False
                continue
            joules = zone.counter.update(raw_uj) / 1e6
            family.add_metric([self._node, zone.package, zone.domain], joules)
        return SourceReading([family], up)
