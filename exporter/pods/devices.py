"""Device IDs from the kubelet's PodResources API, mapped to the board (GPU UUID) they run on.

The NVIDIA device plugin hands out IDs in these forms (all handled here, pure string work):

* ``GPU-<uuid>``                    a whole GPU                               -> exclusive
* ``GPU-<uuid>::<n>``               replica ``n`` of a time-sliced GPU        -> time_sliced
* ``MIG-<uuid>``                    a MIG instance (R470+ driver naming)      -> mig, parent via a mapping
* ``MIG-GPU-<uuid>/<gi>/<ci>``      a MIG instance (old naming), parent in it -> mig
* ``MIG-…::<n>``                    a time-sliced MIG instance                -> mig
* ``<index>`` (``--device-id-strategy=index``) -> the GPU at that index, when an index map is given

A MIG instance's energy belongs to its parent board: NVML reports power and energy per board only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

# MIG profiles name their compute share first: "nvidia.com/mig-3g.40gb" holds 3 of the board's 7 slices.
_MIG_PROFILE = re.compile(r"mig-(\d+)g\.")
_OLD_MIG = re.compile(r"^MIG-(GPU-[0-9A-Fa-f-]+)/(\d+)/(\d+)$")
_REPLICA = re.compile(r"^(.*)::(\d+)$")


class Sharing(StrEnum):
    """The ``sharing`` label of eo_gpu_pod_info."""

    EXCLUSIVE = "exclusive"
    TIME_SLICED = "time_sliced"
    MIG = "mig"


@dataclass(frozen=True)
class BoardShare:
    """One allocated device, resolved to the physical board whose energy counter it draws from."""

    board_uuid: str
    device_id: str
    sharing: Sharing
    # Static weight used when the interval gives no better rule: MIG compute slices, else 1.
    weight: float = 1.0


MigParent = Callable[[str], str | None]


def no_mig_parents(_mig_uuid: str) -> str | None:
    return None


def mig_weight(resource_name: str) -> float:
    """Compute slices of a MIG profile from its resource name (``mig-3g.40gb`` -> 3); 1 if unknown."""
    match = _MIG_PROFILE.search(resource_name)
    return float(match.group(1)) if match else 1.0


def parse_device_id(
    device_id: str,
    resource_name: str = "",
    mig_parent: MigParent = no_mig_parents,
    index_to_uuid: Mapping[str, str] | None = None,
) -> BoardShare | None:
    """Resolve one device ID; ``None`` when it is not a GPU we can place (logged by the caller)."""
    raw = device_id.strip()
    replica = _REPLICA.match(raw)
    base = replica.group(1) if replica else raw
    if base.startswith("MIG-"):
        old = _OLD_MIG.match(base)
        parent = old.group(1) if old else mig_parent(base)
        if parent is None:
            return None
        return BoardShare(parent, device_id, Sharing.MIG, mig_weight(resource_name))
    if base.startswith("GPU-"):
        sharing = Sharing.TIME_SLICED if replica else Sharing.EXCLUSIVE
        return BoardShare(base, device_id, sharing)
    if base.isdigit() and index_to_uuid is not None and base in index_to_uuid:
        sharing = Sharing.TIME_SLICED if replica else Sharing.EXCLUSIVE
        return BoardShare(index_to_uuid[base], device_id, sharing)
    return None


def is_gpu_resource(resource_name: str, prefixes: tuple[str, ...] = ("nvidia.com/",)) -> bool:
    """Resource names whose devices are GPUs or GPU slices (nvidia.com/gpu, .../gpu.shared, .../mig-*)."""
    return any(resource_name.startswith(p) for p in prefixes)


@dataclass(frozen=True)
class Allocation:
    """One device ID the kubelet reports for one container (PodResources ``List``), not yet resolved."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_id: str
