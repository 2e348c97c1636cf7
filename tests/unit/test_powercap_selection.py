"""The GPU UUID hand-over file: waited for, validated, never guessed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from powercap.selection import read_uuids_file
from powercap.settings import StartupRefused


def test_waits_for_the_file_another_container_writes(tmp_path: Path) -> None:
    path = tmp_path / "gpus"
    writer = threading.Timer(0.2, lambda: path.write_text("GPU-aaa, MIG-bbb\n"))
    writer.start()
    try:
        assert read_uuids_file(path, wait_s=5, poll_s=0.02) == "GPU-aaa,MIG-bbb"
    finally:
        writer.cancel()


def test_an_empty_file_is_still_waited_for_then_refused(tmp_path: Path) -> None:
    path = tmp_path / "gpus"
    path.write_text("")
    with pytest.raises(StartupRefused, match=r"missing or empty after 0\.1s"):
        read_uuids_file(path, wait_s=0.1, poll_s=0.02)


@pytest.mark.parametrize("content", ["0", "all", "GPU-aaa,1"])
def test_indices_are_refused_not_mapped(tmp_path: Path, content: str) -> None:
    path = tmp_path / "gpus"
    path.write_text(content)
    with pytest.raises(StartupRefused, match="not GPU UUIDs"):
        read_uuids_file(path, wait_s=1)


def test_stop_ends_the_wait(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(StartupRefused):
        read_uuids_file(tmp_path / "never", wait_s=60, stop=stop, poll_s=0.01)
