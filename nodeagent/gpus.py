"""The node's GPUs as the agent writes them: one ``powercap.gpu.ControlledGpu`` session per GPU under
control, so the agent and a direct-mode sidecar keep the same rules in the same files.

* **Persisted first.** A session records the GPU's original in ``<state dir>/<uuid>.json`` with status
  ``controlling`` before the first value reaches the GPU (the sidecar's format and directory: a
  direct-mode sidecar that comes later restores what a killed agent left, and the other way round).
* **Locked while controlling.** A session takes the GPU's advisory lock, released with the restore; a GPU
  whose lock another writer holds (a direct-mode sidecar) is refused (``GpuBusy``), never written.
* **Recovered at start.** ``recover`` restores every GPU whose state file says ``controlling`` (a previous
  agent or sidecar killed before it could restore), then proves the privilege with a no-op write.
* **Foreign writes.** A management limit that is not what the session left means another writer: the
  session stops (status ``released``) and never restores over it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.base import GpuDevice, GpuError, GpuNoPermission
from nodeagent.decide import GpuFacts
from nodeagent.settings import StartupRefused
from powercap.gpu import ControlledGpu
from powercap.persist import GpuLock, GpuLockHeld, StateFileError, StateStore
from powercap.settings import StartupRefused as SessionRefused

log = logging.getLogger(__name__)


class GpuBusy(Exception):
    """Another writer holds or wrote this GPU; the agent leaves it alone."""

    def __init__(self, message: str, foreign_write: bool = False) -> None:
        super().__init__(message)
        self.foreign_write = foreign_write
        """True when another writer changed the limit under a session of ours."""


@dataclass(frozen=True)
class Recovered:
    uuid: str
    pod: str
    """``namespace/name`` of the pod the previous writer worked for, "" when unknown."""
    original_w: float


class NodeGpus:
    def __init__(self, devices: Sequence[GpuDevice], state_dir: Path, lock_dir: Path) -> None:
        self.devices = {d.uuid: d for d in devices}
        self._store = StateStore(state_dir)
        self._lock_dir = lock_dir
        self._sessions: dict[str, ControlledGpu] = {}

    def recover(self) -> list[Recovered]:
        """At start: restore what a killed predecessor left in force, prove the privilege. A GPU another
        live writer holds is skipped (it restores its own). Raises ``StartupRefused``."""
        recovered: list[Recovered] = []
        for uuid, device in self.devices.items():
            try:
                lock = GpuLock(self._lock_dir, uuid)
            except GpuLockHeld as exc:
                log.warning("GPU %s: %s; left to that writer", uuid, exc)
                continue
            try:
                previous = self._store.load(uuid)
                gpu = ControlledGpu(device, "power", self._store, "", False, lock)
                gpu.check_permission()
            except (SessionRefused, StateFileError) as exc:
                lock.release()
                raise StartupRefused(_agent_wording(str(exc))) from exc
            except GpuNoPermission as exc:
                lock.release()
                raise StartupRefused(
                    f"GPU {uuid}: no permission to set power limits or clocks ({exc}). The node agent needs "
                    "root with CAP_SYS_ADMIN (securityContext.capabilities.add: [SYS_ADMIN])"
                ) from exc
            except GpuError as exc:
                lock.release()
                raise StartupRefused(f"GPU {uuid}: {exc}") from exc
            gpu.unlock()
            if gpu.recovered and previous is not None:
                recovered.append(Recovered(uuid, previous.pod, previous.original_power_limit_mw / 1000))
        return recovered

    def facts(self) -> dict[str, GpuFacts]:
        """Each GPU's range and original (the recorded one while under control); a GPU that cannot be
        read is left out (a request for it is then refused)."""
        out: dict[str, GpuFacts] = {}
        for uuid, device in self.devices.items():
            session = self._sessions.get(uuid)
            try:
                low_mw, high_mw = device.power_limit_constraints_mw()
                original_w = (
                    session.original_w if session is not None else device.power_management_limit_mw() / 1000
                )
                clocks = tuple(sorted(device.supported_sm_clocks_mhz()))
                max_clock = float(device.max_sm_clock_mhz())
            except GpuError as exc:
                log.warning("GPU %s: cannot read its range (%s); requests for it are refused", uuid, exc)
                continue
            out[uuid] = GpuFacts(uuid, low_mw / 1000, high_mw / 1000, original_w, clocks, max_clock)
        return out

    def under_control(self) -> set[str]:
        return set(self._sessions)

    def apply(
        self, uuid: str, actuator: str, setpoint: float, pod: str, budget_w: float | None = None
    ) -> float:
        """Put ``setpoint`` (W or MHz) in force for ``pod``, and with clocks the power limit ``budget_w``
        beside it (None: the original limit); returns the setpoint in force. Raises ``GpuBusy`` (another
        writer), ``GpuError``."""
        session = self._sessions.get(uuid)
        if session is not None and session.actuator != actuator:
            self.restore(uuid)
            session = None
        if session is None:
            session = self._open(uuid, actuator, pod)
        foreign = session.foreign_write(session.device.power_management_limit_mw())
        if foreign is not None:
            session.release(foreign)
            session.unlock()
            del self._sessions[uuid]
            raise GpuBusy(f"GPU {uuid}: power limit set to {foreign / 1000:.0f} W by another writer", True)
        if actuator == "power":
            ceiling = session.original_w
            return session.apply(setpoint, session.limit_range_w[0], min(ceiling, session.limit_range_w[1]))
        in_force = session.apply(setpoint, session.clock_range_mhz[0], session.clock_range_mhz[1])
        session.apply_budget(budget_w)
        return in_force

    def _open(self, uuid: str, actuator: str, pod: str) -> ControlledGpu:
        device = self.devices.get(uuid)
        if device is None:
            raise GpuBusy(f"GPU {uuid} is not on this node")
        try:
            lock = GpuLock(self._lock_dir, uuid)
        except GpuLockHeld as exc:
            raise GpuBusy(str(exc)) from exc
        try:
            session = ControlledGpu(device, actuator, self._store, pod, False, lock)
        except SessionRefused as exc:
            lock.release()
            raise GpuError(str(exc)) from exc
        except BaseException:
            lock.release()
            raise
        self._sessions[uuid] = session
        return session

    def restore(self, uuid: str) -> bool:
        """The original back on ``uuid`` and its lock released; False when nothing of ours was on it.
        Raises ``GpuError`` (the session and its state file stay: the restore is retried)."""
        session = self._sessions.get(uuid)
        if session is None:
            return False
        session.restore()
        session.unlock()
        del self._sessions[uuid]
        return True

    def original_w(self, uuid: str) -> float:
        """The recorded original while under control, else the limit in force (W)."""
        session = self._sessions.get(uuid)
        if session is not None:
            return session.original_w
        return self.devices[uuid].power_management_limit_mw() / 1000

    def max_clock_mhz(self, uuid: str) -> float:
        return float(self.devices[uuid].max_sm_clock_mhz())


def _agent_wording(message: str) -> str:
    return message.replace("sidecar", "writer")
