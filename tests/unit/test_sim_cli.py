"""The eo-sim command on a tiny generated trace: table, JSON, PNG, and clear errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sim.cli import main


@pytest.fixture
def tiny_trace(tmp_path: Path) -> Path:
    rng = random.Random(3)
    lines = ["arrival_s,prompt_tokens,output_tokens"]
    t = 0.0
    while t < 240:
        rate = 12.0 if 60 < t < 150 else 2.0
        t += rng.expovariate(rate)
        lines.append(f"{t:.3f},{rng.randint(50, 1500)},{rng.randint(5, 300)}")
    path = tmp_path / "tiny.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_table_json_and_png(tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    rc = main(["--trace", str(tiny_trace), "--capacity-rps", "10", "--json", str(out_json),
               "--plot", str(out_png)])  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    for name in ("static", "threshold", "optimum", "eo", "eo-replicas", "caps-only"):
        assert f"\n{name} " in stdout
    assert "Patel et al., ISCA 2024" in stdout
    assert "TTFT <= " in stdout and "ITL <= " in stdout  # the default pair
    assert "in TTFT" in stdout and "in ITL" in stdout and "in E2E" not in stdout
    doc = json.loads(out_json.read_text())
    assert [p["policy"] for p in doc["policies"]][:3] == ["static", "threshold", "optimum"]
    assert set(doc["slos"]) == {"ttft", "itl"}
    for p in doc["policies"]:
        assert p["energy_kwh"] > 0
        assert 0 <= p["slo_attainment"] <= min(p["ttft_attainment"], p["itl_attainment"]) <= 1
        assert p["e2e_attainment"] is None
        assert len(p["series"]["t_s"]) == len(p["series"]["power_w"]) == len(p["series"]["itl_p99_s"]) > 10
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_env_vars_set_flags(
    tiny_trace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EO_TRACE", str(tiny_trace))
    monkeypatch.setenv("EO_POLICIES", "static")
    monkeypatch.setenv("EO_SLO_SECONDS", "20")
    assert main(["--capacity-rps", "10"]) == 0
    out = capsys.readouterr().out
    assert "<= 20 s" in out
    assert "\nthreshold" not in out


def test_slo_flags_replace_the_default_pair(tiny_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--trace", str(tiny_trace), "--capacity-rps", "10", "--policies",
               "static,optimum-replicas,eo-learned", "--ttft-slo-seconds", "2", "--slo-seconds", "30"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "TTFT <= 2 s, end-to-end <= 30 s" in out and "ITL <=" not in out
    assert "in TTFT" in out and "in E2E" in out and "in ITL" not in out
    for name in ("optimum-replicas", "eo-learned"):
        assert f"\n{name} " in out


def test_synthetic_trace_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--trace", "synth:long-context", "--seed", "2", "--capacity-rps", "1", "--policies", "static",
               "--static-replicas", "4"])  # fmt: skip
    assert rc == 0
    assert "trace synth:long-context seed 2:" in capsys.readouterr().out
    assert main(["--trace", "synth:nope", "--policies", "static"]) == 2
    assert "unknown synthetic trace" in capsys.readouterr().err


def test_bad_trace_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,ten,5\n")
    assert main(["--trace", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv:3" in err and "Traceback" not in err
    assert main(["--trace", str(tmp_path / "missing.csv")]) == 2
    assert "no such trace file" in capsys.readouterr().err
    assert main(["--trace", str(bad), "--policies", "magic"]) == 2
    assert "unknown magic" in capsys.readouterr().err


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--speedup" in text and "EO_SPEEDUP" in text and "decide()" in text
