"""One controlled GPU: its lock, its persisted original, the setters, the restore, foreign-write detection.

Every setter call goes through here, so the invariants are enforced in one place whatever the controller
asks: the value is clamped to [floor, ceiling] and to the GPU's own range, and the state file says
"controlling" (with the original) before any value of ours reaches the GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from devices.base import GpuDevice, GpuError, GpuNoPermission
from powercap.persist import GpuLock, GpuLockHeld, GpuRecord, StateFileError, StateStore
from powercap.settings import StartupRefused

log = logging.getLogger(__name__)

Status = Literal["controlling", "restored", "error", "released"]
# NVML reports limits in mW; a change under a watt is rounding, not another writer.
FOREIGN_WRITE_TOLERANCE_MW = 1000


class ControlledGpu:
    def __init__(
        self,
        device: GpuDevice,
        actuator: str,
        store: StateStore,
        pod: str,
        dry_run: bool,
        lock: GpuLock | None,
        original_from_default: bool = False,
    ) -> None:
        self.device = device
        self.uuid = device.uuid
        self.actuator = actuator
        self._store = store
        self._pod = pod
        self.dry_run = dry_run
        self._lock = lock
        self._original_from_default = original_from_default
        self.status: Status = "restored"
        self.error_since_s: float | None = None
        self.restore_pending = False
        self.recovered = False
        """True when this sidecar restored what a crashed predecessor left in force."""
        low_mw, high_mw = device.power_limit_constraints_mw()
        self.limit_range_w = (low_mw / 1000, high_mw / 1000)
        clocks = sorted(device.supported_sm_clocks_mhz())
        self.clocks_mhz: Sequence[int] = clocks
        self.clock_range_mhz = (float(clocks[0]), float(device.max_sm_clock_mhz()))
        self.record = self._recover()
        self.original_w = self.record.original_power_limit_mw / 1000
        # The management limit we believe is set; a different reading means someone else wrote. (Not
        # the enforced limit: another limit in force may hold that lower without anyone writing ours.)
        self.expected_mw = device.power_management_limit_mw()
        self.locked_max_mhz: int | None = None

    # -- startup -------------------------------------------------------------------------------------
    def _recover(self) -> GpuRecord:
        """Restore what a crashed sidecar left in force (before anything else), and learn the original."""
        try:
            previous = self._store.load(self.uuid)
        except StateFileError as exc:
            raise StartupRefused(f"{exc}; inspect it, restore the GPU by hand, then delete the file") from exc
        if previous is not None and previous.status == "controlling":
            if self.dry_run:
                log.warning(
                    "GPU %s: a previous sidecar left it under control (original %.0f W); a sidecar that sets "
                    "nothing (dry-run, or --apply-via agent) does not restore it",
                    self.uuid,
                    previous.original_power_limit_mw / 1000,
                )
                return previous
            log.warning("GPU %s: restoring what a previous sidecar left in force", self.uuid)
            try:
                self._restore_to(previous)
            except GpuNoPermission as exc:
                raise StartupRefused(_permission_message(self.uuid, exc)) from exc
            except GpuError as exc:
                raise StartupRefused(
                    f"GPU {self.uuid}: restoring the previous sidecar's state failed: {exc}"
                ) from exc
            restored = replace(previous, status="restored", pod=self._pod)
            self._store.save(restored)
            self.recovered = True
            return replace(restored, actuator=self.actuator)
        return GpuRecord(
            uuid=self.uuid,
            actuator=self.actuator,
            original_power_limit_mw=self._original_mw(),
            original_clocks="unlocked",
            status="restored",
            pod=self._pod,
        )

    def _original_mw(self) -> int:
        """The limit to take as how the GPU was found. Through the node agent the limit in force may be
        the agent's cap (a restarted sidecar would take it for the original and could never ask above
        it), so that sidecar takes the board's default limit; the agent itself never sets more than the
        original it recorded, so asking for the default means "no cap"."""
        if self._original_from_default:
            return min(self.device.power_limit_default_mw(), self.device.power_limit_constraints_mw()[1])
        return self.device.power_management_limit_mw()

    def check_permission(self) -> None:
        """Prove we may set limits: a true no-op, the management limit written back as it is (NVML checks
        privileges first). Writing the *enforced* limit instead would lower the management limit
        whenever another limit holds the enforced one lower, and leave the GPU capped."""
        try:
            self.device.set_power_limit_mw(self.device.power_management_limit_mw())
        except GpuNoPermission as exc:
            raise StartupRefused(_permission_message(self.uuid, exc)) from exc

    # -- control -------------------------------------------------------------------------------------
    def foreign_write(self, now_mw: int) -> int | None:
        """``now_mw`` (the limit in force) when it is not what we left (someone else wrote), else None."""
        if self.dry_run or self.status != "controlling":
            return None
        return now_mw if abs(now_mw - self.expected_mw) > FOREIGN_WRITE_TOLERANCE_MW else None

    def apply(self, setpoint: float, floor: float, ceiling: float) -> float:
        """Put ``setpoint`` (W or MHz) in force within bounds; returns what is in force."""
        low, high = self.limit_range_w if self.actuator == "power" else self.clock_range_mhz
        value = min(max(setpoint, floor, low), ceiling, high)
        if self.actuator == "power":
            return self._set_power_limit_w(value)
        mhz = self._supported_clock(value)
        if mhz >= self.clock_range_mhz[1]:
            if self.locked_max_mhz is not None:
                self.device.reset_sm_clocks()
                self.locked_max_mhz = None
            return self.clock_range_mhz[1]
        if mhz != self.locked_max_mhz:
            self._mark_controlling()
            self.device.lock_sm_clocks_mhz(self.clocks_mhz[0], mhz)
            self.locked_max_mhz = mhz
        return float(mhz)

    def apply_budget(self, watts: float | None) -> float:
        """Hold a power limit alongside the clocks (the budget guard), within the GPU's range and never
        above the original; None puts the original back (the budget withdrawn). Persisted first, as
        every setting of ours; ``restore`` puts both the limit and the clocks back. Returns what is in
        force (W)."""
        low, high = self.limit_range_w
        original_w = self.record.original_power_limit_mw / 1000
        value = original_w if watts is None else min(max(watts, low), high, original_w)
        return self._set_power_limit_w(value)

    def _set_power_limit_w(self, watts: float) -> float:
        """Write ``watts`` (already within bounds) unless it is in force; persisted first. Returns it (W)."""
        mw = round(watts * 1000)
        if mw != self.expected_mw:
            self._mark_controlling()
            self.device.set_power_limit_mw(mw)
            self.expected_mw = mw
        return mw / 1000

    def _supported_clock(self, mhz: float) -> int:
        fitting = [c for c in self.clocks_mhz if c <= mhz]
        return fitting[-1] if fitting else self.clocks_mhz[0]

    def _mark_controlling(self) -> None:
        # Persist BEFORE the first value of ours reaches the GPU: a crash right after the set is recoverable.
        if self.status != "controlling" or self.record.status != "controlling":
            self.record = replace(self.record, status="controlling", actuator=self.actuator)
            self._store.save(self.record)
            self.status = "controlling"

    def restore(self) -> None:
        """Put the original back and say so in the state file. Raises GpuError (state stays controlling)."""
        if self.dry_run:
            self.status = "restored"
            return
        self._restore_to(self.record)
        self.expected_mw = self.record.original_power_limit_mw
        self.locked_max_mhz = None
        self.restore_pending = False
        self.record = replace(self.record, status="restored")
        self._store.save(self.record)
        if self.status != "error":
            self.status = "restored"

    def _restore_to(self, record: GpuRecord) -> None:
        if self.device.power_management_limit_mw() != record.original_power_limit_mw:
            self.device.set_power_limit_mw(record.original_power_limit_mw)
        if record.actuator == "clocks":
            self.device.reset_sm_clocks()

    def release(self, now_mw: int) -> None:
        """Someone else wrote the limit: it is theirs now. Stop controlling, never restore over them."""
        self.status = "released"
        self.record = replace(self.record, status="released")
        self._store.save(self.record)
        log.warning(
            "GPU %s: power limit changed under us (expected %.0f W, found %.0f W): another writer controls "
            "it; this sidecar stops controlling it",
            self.uuid,
            self.expected_mw / 1000,
            now_mw / 1000,
        )

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def open_gpus(
    devices: Sequence[GpuDevice],
    actuator: str,
    store: StateStore,
    lock_dir: Path,
    pod: str,
    dry_run: bool,
    original_from_default: bool = False,
) -> list[ControlledGpu]:
    """Lock (unless dry-run), recover and, unless dry-run, permission-check every GPU; all or nothing.
    ``dry_run``: this process sets nothing (dry-run, or the node agent applies)."""
    opened: list[ControlledGpu] = []
    try:
        for device in devices:
            lock = None
            if not dry_run:
                try:
                    lock = GpuLock(lock_dir, device.uuid)
                except GpuLockHeld as exc:
                    raise StartupRefused(
                        f"{exc}. Two writers on one GPU would fight over its limit: stop the other sidecar "
                        "or node agent, or run this one with --dry-run"
                    ) from exc
            try:
                gpu = ControlledGpu(device, actuator, store, pod, dry_run, lock, original_from_default)
            except BaseException:
                if lock is not None:
                    lock.release()
                raise
            opened.append(gpu)
            if not dry_run:
                gpu.check_permission()
    except BaseException:
        for gpu in opened:
            gpu.unlock()
        raise
    return opened


def _permission_message(uuid: str, exc: Exception) -> str:
    return (
        f"GPU {uuid}: no permission to set power limits or clocks ({exc}). The sidecar needs root with "
        "CAP_SYS_ADMIN (securityContext.capabilities.add: [SYS_ADMIN]); run with --dry-run to only observe"
    )
