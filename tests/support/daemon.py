"""One of our daemons (``eo-powercap``, ``eo-node-agent``) as a real process, read the way an operator would.

The process gets this checkout's code and none of the shell's ``EO_*`` variables or GPU selection; its
JSON log lines are collected from stderr, its port is learnt from the ``serving :PORT`` start line, and
its ``/metrics`` samples are read over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]


def console_command(script: str, module: str) -> list[str]:
    """The installed console script when there is one (what users run), else the module."""
    path = Path(sys.executable).with_name(script)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


class DaemonProcess:
    name = "daemon"

    def __init__(self, argv: Sequence[str], start_timeout_s: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EO_")}
        env.pop("NVIDIA_VISIBLE_DEVICES", None)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        # This checkout's code, whatever an older install of the package maps its modules to.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            list(argv), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.port = 0
        self.wait_for(self._started, start_timeout_s, "started")

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _started(self) -> bool:
        for line in list(self.lines):
            if found := re.search(r"serving :(\d+)", line):
                self.port = int(found.group(1))
        return bool(self.port)

    def log_text(self) -> str:
        return "\n".join(self.lines[-40:])

    def messages(self) -> list[str]:
        out = []
        for line in list(self.lines):
            try:
                out.append(str(json.loads(line)["message"]))
            except (ValueError, KeyError, TypeError):
                out.append(line)
        return out

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, labels: Mapping[str, str]) -> float | None:
        """The first /metrics sample named ``name`` carrying ``labels``; None when absent."""
        _, text = self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    def wait_for(self, cond: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Seconds until ``cond()`` held (polled every 50 ms); AssertionError naming ``what`` after
        ``timeout_s`` or when the process exits first."""
        start = time.monotonic()
        while not cond():
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise AssertionError(
                    f"{self.name} exited {self.proc.returncode} before {what}: {self.log_text()}"
                )
            if time.monotonic() - start > timeout_s:
                raise AssertionError(f"not {what} within {timeout_s:g}s: {self.log_text()}")
            time.sleep(0.05)
        return time.monotonic() - start

    def terminate(self, timeout_s: float) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if still running after ``timeout_s``, seconds it took)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()
