"""Real-process fixtures, registered for every test by ``tests/conftest.py``.

Each fixture starts a real peer on loopback (or a unix socket) and stops it when the test ends:

- ``start_prometheus(**kwargs)`` (``start_module_prometheus`` for module-scoped fixtures): a real Prometheus (``targets``, ``rule_files``, ``scrape_interval_s``,
  ``alertmanager_url``, as the runner takes them), started and ready; ``start_alertmanager(**kwargs)``
  likewise. The runner is the demo's own (``demo.prometheus``), shared on purpose so the demo and the
  tests run Prometheus the same way; tests reach it only through these fixtures.
- ``kubelet``: a kubelet PodResources gRPC server on a unix socket, ``(socket_path, servicer)``; the
  test sets ``servicer.pods``.
- ``vllm_server()``: a vLLM-format ``/metrics`` server whose counters the test advances.
- ``free_port()``: a free TCP port on 127.0.0.1 (for binaries started as subprocesses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.prometheus import Alertmanager, Prometheus, PrometheusNotInstalled
from demo.prometheus import free_port as _free_port
from powercap.sidecar import PowercapHandle
from tests.support.pods import PodResourcesServicer, VllmServer, start_kubelet

free_port = _free_port
StartPrometheus = Callable[..., Prometheus]
StartAlertmanager = Callable[..., Alertmanager]
__all__ = ["Alertmanager", "Prometheus", "StartAlertmanager", "StartPrometheus", "free_port"]


class _Starter:
    """Starts runners of one kind and stops all it started."""

    def __init__(self, kind: Callable[..., Any]) -> None:
        self.kind = kind
        self.running: list[Any] = []

    def __call__(self, **kwargs: Any) -> Any:
        try:
            process = self.kind(**kwargs).start()
        except PrometheusNotInstalled as exc:
            pytest.fail(f"{exc} (make test installs it)")
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            process.stop()


@pytest.fixture
def start_prometheus() -> Iterator[StartPrometheus]:
    starter = _Starter(Prometheus)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def start_module_prometheus() -> Iterator[StartPrometheus]:
    """``start_prometheus`` for module-scoped fixtures: one Prometheus shared by a module's tests."""
    starter = _Starter(Prometheus)
    yield starter
    starter.stop_all()


@pytest.fixture
def start_alertmanager() -> Iterator[StartAlertmanager]:
    starter = _Starter(Alertmanager)
    yield starter
    starter.stop_all()


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[tuple[Path, PodResourcesServicer]]:
    socket_path = tmp_path / "kubelet.sock"
    server, servicer = start_kubelet(socket_path)
    yield socket_path, servicer
    server.stop(grace=None)


@pytest.fixture
def vllm_server() -> Iterator[Callable[..., VllmServer]]:
    running: list[VllmServer] = []

    def start(**kwargs: Any) -> VllmServer:
        server = VllmServer(**kwargs)
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def handles() -> Iterator[list[PowercapHandle]]:
    """The eo-powercap sidecars a test starts (it appends each handle), stopped after it: every GPU
    setting restored however the test ends."""
    started: list[PowercapHandle] = []
    yield started
    for h in started:
        h.stop()
