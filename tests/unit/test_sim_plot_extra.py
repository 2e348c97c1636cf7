"""eo-sim without matplotlib (the `plot` extra): it runs, and `--plot` is a clear error before it simulates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A `None` entry in sys.modules makes `import matplotlib` raise ImportError, as on an install without it.
RUN_WITHOUT_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; from sim.cli import main; sys.exit(main(sys.argv[1:]))"
)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_trace(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    path.write_text(
        "arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{i / 2},200,50\n" for i in range(120))
    )
    return path


def _eo_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_MATPLOTLIB, *args],
        cwd=REPO, check=False, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_plot_without_matplotlib_is_a_clear_error_before_simulating(tiny_trace: Path, tmp_path: Path) -> None:
    result = _eo_sim("--trace", str(tiny_trace), "--capacity-rps", "10", "--plot", str(tmp_path / "x.png"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--plot needs matplotlib" in result.stderr
    assert "energy-orchestrator[plot]" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == "", "nothing was simulated"
    assert not (tmp_path / "x.png").exists()


def test_eo_sim_runs_without_matplotlib_when_no_plot_is_asked(tiny_trace: Path) -> None:
    result = _eo_sim("--trace", str(tiny_trace), "--capacity-rps", "10", "--policies", "static,eo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\nstatic " in result.stdout
