"""CPU time of pods from cgroup v2 (``cpu.stat`` ``usage_usec``), for the CPU energy share.

Pods live under the kubepods hierarchy, named after their UID: ``kubepods.slice/kubepods-<qos>.slice/
kubepods-<qos>-pod<uid with _>.slice`` (systemd driver) or ``kubepods/<qos>/pod<uid>`` (cgroupfs
driver). The node's total CPU time is the root cgroup's ``cpu.stat``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")


def read_usage_s(cpu_stat: Path) -> float | None:
    try:
        for line in cpu_stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        return None
    return None


class CgroupCpu:
    def __init__(self, root: Path = DEFAULT_CGROUP_ROOT) -> None:
        self._root = root

    def available(self) -> bool:
        return (self._root / "cpu.stat").is_file() and self._kubepods() is not None

    def _kubepods(self) -> Path | None:
        for name in ("kubepods.slice", "kubepods"):
            if (self._root / name).is_dir():
                return self._root / name
        return None

    def node_usage_s(self) -> float | None:
        return read_usage_s(self._root / "cpu.stat")

    def pod_usage_s(self, uids: Mapping[str, str]) -> dict[str, float]:
        """CPU seconds per pod UID for the given UIDs (missing cgroups are left out)."""
        top = self._kubepods()
        if top is None or not uids:
            return {}
        wanted = {uid.replace("-", "_"): uid for uid in uids} | {uid: uid for uid in uids}
        found: dict[str, float] = {}
        # Guaranteed pods sit right under kubepods, the others one level down (burstable, besteffort).
        for dirpath, dirnames, _ in os.walk(top):
            at_top = Path(dirpath) == top
            descend = []
            for name in dirnames:
                stem = name.removesuffix(".slice")
                marker = stem.rfind("pod")
                uid = wanted.get(stem[marker + 3 :]) if marker >= 0 else None
                if uid is not None:
                    usage = read_usage_s(Path(dirpath) / name / "cpu.stat")
                    if usage is not None:
                        found[uid] = usage
                elif at_top:
                    descend.append(name)
            dirnames[:] = descend
        return found
