"""What must survive the sidecar: each GPU's original setting (state files) and who controls it (locks).

State files live in a node directory (a hostPath) keyed by GPU UUID, so a sidecar restarted after a crash,
even in a new pod, finds the original limit of the GPU it left capped and restores it before anything
else. Writes are atomic (temporary file, fsync, rename, fsync of the directory): a crash leaves either
the old file or the new one, never half of one.

Locks are advisory ``flock`` locks on ``<lock dir>/<uuid>.lock``, held for the life of the process; the
kernel drops them when the process dies, so a crashed sidecar never leaves a GPU locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Status = Literal["controlling", "restored", "released"]
STATE_VERSION = 1


class StateFileError(Exception):
    """A state file exists but cannot be read or trusted."""


class GpuLockHeld(Exception):
    """Another process (a second sidecar, a node agent) holds this GPU's lock."""


@dataclass(frozen=True)
class GpuRecord:
    """One GPU's persisted state. ``status``: controlling (a setting of ours may be in force),
    restored (the original is back), released (someone else wrote the limit; it is theirs now)."""

    uuid: str
    actuator: str
    original_power_limit_mw: int
    original_clocks: str
    """Always "unlocked": NVML cannot read back a clock lock, so restoring means resetting clocks."""
    status: Status
    pod: str = ""
    pid: int = 0
    updated_at: float = 0.0


class StateStore:
    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def path(self, uuid: str) -> Path:
        return self._dir / f"{uuid}.json"

    def load(self, uuid: str) -> GpuRecord | None:
        path = self.path(uuid)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateFileError(f"cannot read {path}: {exc}") from exc
        try:
            if raw.pop("version", None) != STATE_VERSION:
                raise ValueError("unknown version")
            return GpuRecord(**raw)
        except (TypeError, ValueError, AttributeError) as exc:
            raise StateFileError(f"{path} is not a state file this sidecar understands: {exc}") from exc

    def save(self, record: GpuRecord) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        body = {"version": STATE_VERSION, **asdict(record), "pid": os.getpid(), "updated_at": time.time()}
        target = self.path(record.uuid)
        fd, tmp = tempfile.mkstemp(prefix=f".{record.uuid}.", suffix=".tmp", dir=self._dir)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(body, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # The rename itself is durable only once the directory entry is on disk.
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class GpuLock:
    """An exclusive, non-blocking advisory lock on one GPU UUID."""

    def __init__(self, directory: Path, uuid: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{uuid}.lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            raise GpuLockHeld(
                f"GPU {uuid} is controlled by another process ({holder}; lock {self.path})"
            ) from None
        # Who holds it, for the next one's error message; the lock is the flock, not this text.
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown holder"
        except OSError:
            return "unknown holder"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
