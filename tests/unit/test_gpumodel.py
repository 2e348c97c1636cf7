"""The GPU model must reproduce the published H100 measurements it was fitted to."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gpumodel import H100_LLAMA_8B, H100X4_LLAMA_70B, ServerProfile, operating_point

MODEL_PROFILES = {"Llama-3.1-8B-Instruct": H100_LLAMA_8B, "Llama-3.1-70B-Instruct": H100X4_LLAMA_70B}


def h100_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r["gpu_model"] == "H100"]


def test_reproduces_calibration_table_within_10_percent(calibration_csv: Path) -> None:
    rows = h100_rows(calibration_csv)
    assert len(rows) >= 20
    for row in rows:
        profile = MODEL_PROFILES[row["model"]]
        op = operating_point(profile, float(row["avg_batch_size"]))
        measured_tps = float(row["output_tokens_per_second"])
        measured_jpt = float(row["energy_per_token_joules"])
        assert op.tokens_per_s == pytest.approx(measured_tps, rel=0.10), row
        assert op.joules_per_token == pytest.approx(measured_jpt, rel=0.10), row
        assert op.power_w == pytest.approx(float(row["avg_power_watts"]), rel=0.10), row


@pytest.mark.parametrize("profile", [H100_LLAMA_8B, H100X4_LLAMA_70B])
def test_idle_power_is_model_resident_figure(profile: ServerProfile) -> None:
    assert operating_point(profile, 0).power_w == profile.idle_power_w
    assert operating_point(profile, 0).tokens_per_s == 0


def test_cap_above_native_draw_does_nothing() -> None:
    native = operating_point(H100_LLAMA_8B, 8)
    capped = operating_point(H100_LLAMA_8B, 8, power_cap_w=native.power_w + 50)
    assert capped == native
    assert not capped.power_capped


def test_binding_cap_trades_a_little_speed_for_energy() -> None:
    # Published: ~65% of TDP keeps decode throughput within ~5-7% and saves ~20-30% energy per token.
    full = operating_point(H100_LLAMA_8B, 256)
    capped = operating_point(H100_LLAMA_8B, 256, power_cap_w=0.65 * 700)
    assert capped.power_capped
    assert capped.power_w == pytest.approx(0.65 * 700, rel=0.01)
    assert 0.90 < capped.tokens_per_s / full.tokens_per_s < 0.97
    assert 0.65 < capped.joules_per_token / full.joules_per_token < 0.80


def test_clock_lock_saves_energy_where_a_cap_never_binds() -> None:
    full = operating_point(H100_LLAMA_8B, 8, power_cap_w=700)
    locked = operating_point(H100_LLAMA_8B, 8, locked_clock_mhz=1200)
    assert not full.power_capped
    assert locked.joules_per_token < 0.8 * full.joules_per_token
