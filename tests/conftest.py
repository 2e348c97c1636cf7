"""Shared fixtures: where the calibration data and traces live."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Real-process fixtures (Prometheus, Alertmanager, kubelet PodResources, vLLM-format server) for every test.
pytest_plugins = ["tests.support.fixtures"]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def calibration_csv() -> Path:
    path = SHARED / "data" / "calibration" / "mlenergy_v3_llama31_chat.csv"
    if not path.exists():
        pytest.skip(f"calibration data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Binaries' ``main()`` run in-process install root handlers on the test's captured stderr; put the
    root logger back afterwards, or later tests log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


_MARK_BY_DIRECTORY = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the folder it lives in, so no file can forget its marker."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        mark = _MARK_BY_DIRECTORY.get(folder)
        if mark is not None:
            item.add_marker(mark)
