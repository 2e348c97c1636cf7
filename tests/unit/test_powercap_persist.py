"""Persisted originals (atomic state files) and per-GPU advisory locks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from powercap.persist import GpuLock, GpuLockHeld, GpuRecord, StateFileError, StateStore

UUID = "GPU-5e1a0000-0000-4000-8000-000000000000"


def record(status: str = "controlling") -> GpuRecord:
    return GpuRecord(UUID, "power", 700_000, "unlocked", status, pod="ns/pod")  # type: ignore[arg-type]


def test_save_then_load_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.save(record())
    loaded = store.load(UUID)
    assert loaded is not None
    assert (loaded.original_power_limit_mw, loaded.status, loaded.pid) == (
        700_000,
        "controlling",
        os.getpid(),
    )
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [f"{UUID}.json"]
    assert json.loads(store.path(UUID).read_text())["version"] == 1


def test_save_replaces_the_previous_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(record("controlling"))
    store.save(record("restored"))
    loaded = store.load(UUID)
    assert loaded is not None and loaded.status == "restored"


def test_absent_state_is_none(tmp_path: Path) -> None:
    assert StateStore(tmp_path).load(UUID) is None


@pytest.mark.parametrize("body", ["{not json", '{"version": 99}', '{"version": 1, "uuid": "x"}', "[]"])
def test_unreadable_state_is_an_error_not_a_guess(tmp_path: Path, body: str) -> None:
    store = StateStore(tmp_path)
    store.path(UUID).write_text(body)
    with pytest.raises(StateFileError):
        store.load(UUID)


def test_second_lock_on_the_same_gpu_is_refused_and_names_the_holder(tmp_path: Path) -> None:
    first = GpuLock(tmp_path, UUID)
    with pytest.raises(GpuLockHeld, match=f"pid {os.getpid()}"):
        GpuLock(tmp_path, UUID)
    first.release()
    GpuLock(tmp_path, UUID).release()


def test_locks_are_per_gpu(tmp_path: Path) -> None:
    a = GpuLock(tmp_path, UUID)
    b = GpuLock(tmp_path, UUID.replace("000000000000", "000000000001"))
    a.release()
    b.release()
