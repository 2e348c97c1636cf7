"""RAPL against powercap sysfs trees built in tmp_path (Intel with the MMIO duplicate, AMD)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.collector import ExporterCollector
from exporter.rapl import RaplSource, discover_zones, read_sysfs


def zone(path: Path, name: str, energy_uj: int, max_range_uj: int = 262_143_328_850) -> Path:
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return path


@pytest.fixture
def intel(tmp_path: Path) -> Path:
    """Two packages with core and dram, the MMIO duplicate of package 0, psys, and top-level links."""
    root = tmp_path / "powercap"
    root.mkdir()
    for pkg in (0, 1):
        top = zone(root / f"intel-rapl:{pkg}", f"package-{pkg}", 100_000_000 + pkg)
        zone(top / f"intel-rapl:{pkg}:0", "core", 40_000_000)
        zone(top / f"intel-rapl:{pkg}:1", "dram", 10_000_000)
        # The kernel also lists every sub-zone at the top level.
        for sub in (0, 1):
            (root / f"intel-rapl:{pkg}:{sub}").symlink_to(top / f"intel-rapl:{pkg}:{sub}")
    zone(root / "intel-rapl-mmio:0", "package-0", 100_000_000)
    zone(root / "intel-rapl:2", "psys", 500_000_000)
    return root


@pytest.fixture
def amd(tmp_path: Path) -> Path:
    root = tmp_path / "amd"
    root.mkdir()
    top = zone(root / "amd-rapl:0", "package-0", 7_000_000, max_range_uj=4_294_967_295)
    zone(top / "amd-rapl:0:0", "core", 3_000_000, max_range_uj=4_294_967_295)
    return root


def registry_for(root: Path, read_text=read_sysfs) -> CollectorRegistry:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    registry.register(ExporterCollector([RaplSource(discover_zones(root), "node-a", read_text)]))
    return registry


def cpu(registry: CollectorRegistry, package: str, domain: str) -> float | None:
    return registry.get_sample_value(
        "eo_cpu_energy_joules_total", {"node": "node-a", "package": package, "domain": domain}
    )


def test_intel_zones_each_once_without_mmio_or_psys(intel: Path) -> None:
    zones = discover_zones(intel)
    assert [(z.package, z.domain) for z in zones] == [
        ("0", "package"),
        ("0", "core"),
        ("0", "dram"),
        ("1", "package"),
        ("1", "core"),
        ("1", "dram"),
    ]
    registry = registry_for(intel)
    assert cpu(registry, "0", "package") == 100.0
    assert cpu(registry, "1", "package") == 100.000001
    assert cpu(registry, "0", "core") == 40.0
    assert cpu(registry, "1", "dram") == 10.0
    assert cpu(registry, "0", "psys") is None
    assert registry.get_sample_value("eo_exporter_collector_up", {"collector": "cpu"}) == 1.0
    samples = [s for m in registry.collect() if m.name == "eo_cpu_energy_joules" for s in m.samples]
    assert len([s for s in samples if s.name.endswith("_total")]) == 6


def test_amd_layout(amd: Path) -> None:
    registry = registry_for(amd)
    assert cpu(registry, "0", "package") == 7.0
    assert cpu(registry, "0", "core") == 3.0


def test_wraparound_keeps_the_counter_growing(amd: Path) -> None:
    registry = registry_for(amd)
    energy = amd / "amd-rapl:0" / "energy_uj"
    energy.write_text("4294000000\n")
    assert cpu(registry, "0", "package") == pytest.approx(4294.0)
    energy.write_text("1000000\n")  # wrapped at 4294967295 uJ
    assert cpu(registry, "0", "package") == pytest.approx(
        4294.0 + (4_294_967_295 - 4_294_000_000 + 1_000_000) / 1e6
    )


def test_permission_denied_logs_once_and_marks_cpu_down(
    intel: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # chmod 000 does not stop root: refuse at the edge, as the kernel does for non-root since CVE-2020-8694.
    def root_only(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return read_sysfs(path)

    registry = registry_for(intel, root_only)
    with caplog.at_level(logging.ERROR, logger="exporter.rapl"):
        for _ in range(3):
            assert registry.get_sample_value("eo_exporter_collector_up", {"collector": "cpu"}) == 0.0
    assert cpu(registry, "0", "package") is None
    messages = [r.getMessage() for r in caplog.records if "CVE-2020-8694" in r.getMessage()]
    assert len(messages) == 1
    assert "root" in messages[0]


def test_unreadable_zone_is_omitted_and_marks_cpu_down(intel: Path) -> None:
    registry = registry_for(intel)
    (intel / "intel-rapl:1" / "energy_uj").write_text("garbage\n")
    assert cpu(registry, "1", "package") is None
    assert cpu(registry, "0", "package") == 100.0
    assert registry.get_sample_value("eo_exporter_collector_up", {"collector": "cpu"}) == 0.0


def test_missing_root_has_no_zones(tmp_path: Path) -> None:
    assert discover_zones(tmp_path / "nope") == []
