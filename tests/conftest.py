"""Shared fixtures: where the calibration data and traces live."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def calibration_csv() -> Path:
    path = SHARED / "data" / "calibration" / "mlenergy_v3_llama31_chat.csv"
    if not path.exists():
        pytest.skip(f"calibration data not found at {path}")
    return path
