"""The demo's time-compressed copy of the rules keeps their meaning and stays valid for promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from demo.rules import compress_expr, duration_s, write_compressed_rules


def test_duration_parsing() -> None:
    assert duration_s("5m") == 300
    assert duration_s("1h30m") == 5400
    assert duration_s("250ms") == 0.25
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        duration_s("5 minutes")


def test_windows_offsets_and_subqueries_are_divided() -> None:
    expr = "rate(x[5m]) / (y offset 1d) + max_over_time(z[1h:1m])"
    assert compress_expr(expr, 10, 5) == "rate(x[30s]) / (y offset 8640s) + max_over_time(z[360s:6s])"


def test_windows_never_fall_below_the_minimum() -> None:
    assert compress_expr("rate(x[1m])", 60, 4) == "rate(x[4s])"


def test_label_matchers_with_brackets_are_left_alone() -> None:
    assert compress_expr('x{le=~"[0-9]+"}', 10, 1) == 'x{le=~"[0-9]+"}'


@pytest.mark.integration
def test_compressed_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make system-deps)")
    files = write_compressed_rules(tmp_path, factor=10, min_window_s=4)
    assert {f.name for f in files} >= {"workload.rules.yaml", "alerts.yaml"}
    text = (tmp_path / "workload.rules.yaml").read_text()
    assert "[30s]" in text and "[5m]" not in text
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, files)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
