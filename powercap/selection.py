"""Which GPUs the sidecar acts on: its pod's, named by UUID, and never a neighbour's."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from devices.base import GpuDevice
from powercap.settings import StartupRefused

# How NVML names a whole GPU and a MIG instance; an index names a different GPU in every container.
UUID_PREFIXES = ("GPU-", "MIG-")


def visible_uuids(explicit: str, environ: dict[str, str]) -> list[str] | None:
    """UUIDs to control, or None for every device the backend lists. Raises StartupRefused when none are."""
    if explicit.strip():
        return [u.strip() for u in explicit.split(",") if u.strip()]
    for var in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        value = environ.get(var)
        if value is None:
            continue
        value = value.strip()
        if value.lower() in ("", "none", "void", "-1"):
            raise StartupRefused(f"{var}={value!r}: no GPU is visible to this container")
        uuids = [v.strip() for v in value.split(",") if v.strip().startswith(UUID_PREFIXES)]
        # Indices (or "all") are already applied by the container runtime: NVML lists just those GPUs.
        return uuids or None
    return None


def read_uuids_file(
    path: Path, wait_s: float, stop: threading.Event | None = None, poll_s: float = 0.5
) -> str:
    """The UUID list another container hands over in ``path``, once it is there and not empty.

    Only GPU/MIG UUIDs are accepted: an index ("0") or "all" names different GPUs inside that container
    than here, and acting on a neighbour's GPU is the one mistake this sidecar must never make.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            break
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            raise StartupRefused(f"--gpu-uuids-file {path}: still missing or empty after {wait_s:g}s")
        time.sleep(poll_s)
    entries = [e.strip() for e in text.split(",") if e.strip()]
    wrong = [e for e in entries if not e.startswith(UUID_PREFIXES)]
    if wrong:
        raise StartupRefused(
            f"--gpu-uuids-file {path} holds {text!r}, not GPU UUIDs (e.g. the device plugin's index "
            "strategy); set --gpu-uuids, or configure the device plugin for UUIDs"
        )
    return ",".join(entries)


def select_devices(devices: Sequence[GpuDevice], wanted: list[str] | None) -> list[GpuDevice]:
    if wanted is None:
        return list(devices)
    by_uuid = {d.uuid: d for d in devices}
    missing = [u for u in wanted if u not in by_uuid]
    if missing:
        raise StartupRefused(
            f"GPU(s) {', '.join(missing)} not visible (visible: {', '.join(by_uuid) or 'none'}); the sidecar "
            "acts only on its pod's GPUs"
        )
    return [by_uuid[u] for u in wanted]
