"""Ctrl-C in the middle of ``python -m demo`` stops everything it started and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(180)]


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (Prometheus and Alertmanager, once they run)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_prometheus_alertmanager_and_the_loop(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "demo", "--phases", "only:120:2", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as demo:
        try:
            assert demo.stdout is not None
            header = ""
            deadline = time.monotonic() + 120
            while "time" not in header and time.monotonic() < deadline:  # the table has started
                header = demo.stdout.readline()
            children = _children(demo.pid)
            assert len(children) >= 2, "Prometheus and Alertmanager run as child processes"
            demo.send_signal(signal.SIGINT)
            out, err = demo.communicate(timeout=60)
        finally:
            if demo.poll() is None:
                demo.kill()
    assert demo.returncode == 130
    assert "interrupted: everything the demo started has been stopped" in out
    assert "Traceback" not in err
    assert not [pid for pid in children if _alive(pid)]
