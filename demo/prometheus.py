"""Run a real Prometheus (and Alertmanager) on loopback for the demo, the integration tests and benches.

Each process gets a private data directory and a free port, is waited on until ready, and is stopped
(terminate, then kill) by ``stop()`` or by leaving the ``with`` block.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

log = logging.getLogger(__name__)


class PrometheusNotInstalled(RuntimeError):
    """The binary is missing: `make test` and `make demo` install Debian's packages."""


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrometheusNotInstalled(f"{name} not found on PATH; run `make system-deps` to install it")
    return path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL we built)
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s:\n{log_path.read_text()[-2000:]}")


class _Process:
    name = "process"

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"eo-{self.name}-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _launch(self, binary: str, config: dict[str, Any], flags: Sequence[str], timeout_s: float) -> None:
        """Write ``config`` to the work directory, start ``binary`` with it on this port (plus ``flags``)
        and wait until its ``/-/ready`` answers (Prometheus and Alertmanager both have one)."""
        config_path = self.workdir / f"{self.name}.yml"
        config_path.write_text(yaml.safe_dump(config))
        argv = [
            _binary(binary),
            f"--config.file={config_path}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            *flags,
        ]
        log_path = self.workdir / f"{self.name}.log"
        with log_path.open("wb") as out:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        log.info("started %s on %s (pid %d, logs %s)", self.name, self.url, self._proc.pid, log_path)
        _wait_ready(self.url + "/-/ready", self._proc, log_path, timeout_s)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> _Process:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Prometheus(_Process):
    """A real Prometheus scraping ``targets`` (``host:port`` strings) every ``scrape_interval_s``."""

    name = "prometheus"

    def __init__(
        self,
        targets: Sequence[str] = (),
        scrape_interval_s: float = 1.0,
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        evaluation_interval_s: float | None = None,
        extra_scrape_configs: Sequence[dict[str, Any]] = (),
        job_name: str = "eo",
    ) -> None:
        super().__init__()
        self.job_name = job_name
        self.targets = list(targets)
        self.scrape_interval_s = scrape_interval_s
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.alertmanager_url = alertmanager_url
        self.evaluation_interval_s = evaluation_interval_s or scrape_interval_s
        self.extra_scrape_configs = list(extra_scrape_configs)

    def config(self) -> dict[str, Any]:
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        cfg: dict[str, Any] = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": f"{int(self.evaluation_interval_s * 1000)}ms",
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                # honor_labels: the exporter's own namespace/pod labels describe the workload, not itself.
                {
                    "job_name": self.job_name,
                    "honor_labels": True,
                    "static_configs": [{"targets": self.targets}],
                },
                *self.extra_scrape_configs,
            ],
        }
        if self.alertmanager_url:
            host = urllib.parse.urlparse(self.alertmanager_url).netloc
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
        return cfg

    def start(self, timeout_s: float = 30.0) -> Prometheus:
        flags = [
            f"--storage.tsdb.path={self.workdir / 'data'}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
        ]
        self._launch("prometheus", self.config(), flags, timeout_s)
        return self

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns Prometheus' ``data.result`` list."""
        params = {"query": promql}
        if at is not None:
            params["time"] = str(at)
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback URL we built)
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return list(body["data"]["result"])

    def wait_for(self, promql: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``promql`` until it returns at least one series."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                if not result:
                    raise TimeoutError(f"no series for {promql!r} after {timeout_s}s")
                return result
            time.sleep(0.2)

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/alerts", timeout=10) as resp:  # noqa: S310
            return list(json.load(resp)["data"]["alerts"])


class Alertmanager(_Process):
    """A real Alertmanager whose alerts can be read back from its API; with ``webhook_url`` it also
    delivers every alert there (the demo's loopback receiver), otherwise to a no-op receiver."""

    name = "alertmanager"

    def __init__(self, webhook_url: str | None = None) -> None:
        super().__init__()
        self.webhook_url = webhook_url

    def config(self) -> dict[str, Any]:
        # Short waits: the demo's alerts fire within seconds and should reach the receiver as quickly.
        route: dict[str, Any] = {"group_by": ["alertname"], "group_wait": "1s", "group_interval": "1s"}
        if self.webhook_url is None:
            return {"route": {**route, "receiver": "null"}, "receivers": [{"name": "null"}]}
        webhook = {"url": self.webhook_url, "send_resolved": True, "max_alerts": 0}
        return {
            "route": {**route, "receiver": "webhook"},
            "receivers": [{"name": "webhook", "webhook_configs": [webhook]}],
        }

    def start(self, timeout_s: float = 30.0) -> Alertmanager:
        flags = [f"--storage.path={self.workdir / 'data'}", "--cluster.listen-address="]
        self._launch("prometheus-alertmanager", self.config(), flags, timeout_s)
        return self

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as resp:  # noqa: S310
            return list(json.load(resp))


@contextlib.contextmanager
def running_prometheus(**kwargs: Any) -> Iterator[Prometheus]:
    prom = Prometheus(**kwargs).start()
    try:
        yield prom
    finally:
        prom.stop()
