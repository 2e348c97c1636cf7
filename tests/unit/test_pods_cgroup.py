"""Pod CPU time from a cgroup v2 fixture tree (systemd and cgroupfs driver layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.pods.cgroup import CgroupCpu

UID_A = "5b1f7e9a-0c1d-4e2f-8a3b-1c2d3e4f5a6b"
UID_B = "6c2a8f0b-1d2e-4f3a-9b4c-2d3e4f5a6b7c"


def stat(path: Path, usage_usec: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n")


@pytest.mark.parametrize("layout", ["systemd", "cgroupfs"])
def test_pod_and_node_cpu_seconds(tmp_path: Path, layout: str) -> None:
    stat(tmp_path, 900_000_000)
    if layout == "systemd":
        top = tmp_path / "kubepods.slice"
        stat(top / f"kubepods-pod{UID_A.replace('-', '_')}.slice", 12_500_000)  # guaranteed QoS
        qos = top / "kubepods-burstable.slice"
        stat(qos / f"kubepods-burstable-pod{UID_B.replace('-', '_')}.slice", 3_000_000)
        stat(qos / f"kubepods-burstable-pod{UID_B.replace('-', '_')}.slice" / "cri-containerd-abc.scope", 1)
    else:
        top = tmp_path / "kubepods"
        stat(top / f"pod{UID_A}", 12_500_000)
        stat(top / "burstable" / f"pod{UID_B}", 3_000_000)
    cgroup = CgroupCpu(tmp_path)
    assert cgroup.available()
    assert cgroup.node_usage_s() == 900.0
    assert cgroup.pod_usage_s({UID_A: UID_A, UID_B: UID_B}) == {UID_A: 12.5, UID_B: 3.0}
    assert cgroup.pod_usage_s({"0000": "0000"}) == {}


def test_no_kubepods_means_unavailable(tmp_path: Path) -> None:
    stat(tmp_path, 1)
    assert not CgroupCpu(tmp_path).available()
    assert CgroupCpu(tmp_path).pod_usage_s({UID_A: UID_A}) == {}
