"""``eo-powercap`` as users run it: a real process, SIGTERM, exit codes, refusals without stack traces."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.simulated import SimulatedGpu
from powercap.main import load_settings, main
from powercap.selection import visible_uuids
from powercap.settings import StartupRefused
from powercap.sidecar import start_powercap
from tests.support.powercap import ScriptedSource, TextServer, settings, vllm_histogram

REPO = Path(__file__).resolve().parents[2]
SIM_UUID = "GPU-5e1a0000-0000-4000-8000-000000000000"


@pytest.fixture(autouse=True)
def clean_process_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No GPU selection or EO_ settings inherited from the machine; main() reconfigures logging: undo it."""
    for var in [v for v in os.environ if v.startswith("EO_")] + [
        "NVIDIA_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES",
    ]:
        monkeypatch.delenv(var, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def vllm() -> Iterator[TextServer]:
    """A vLLM stand-in whose requests keep finishing fast (plenty of headroom)."""
    served = {"n": 0.0}

    def body() -> str:
        served["n"] += 20.0
        return vllm_histogram({0.5: served["n"], 1.0: served["n"], float("inf"): served["n"]})

    s = TextServer(body_fn=body)
    yield s
    s.stop()


def base_args(tmp_path: Path, url: str) -> list[str]:
    return [
        "--gpu-backend", "simulated",
        "--metrics-url", url,
        "--state-dir", str(tmp_path / "state"),
        "--listen-address", "127.0.0.1",
        "--port", "0",
        "--kube-events", "off",
    ]  # fmt: skip


def test_sigterm_restores_and_persists_restored(tmp_path: Path, vllm: TextServer) -> None:
    env = {**os.environ, "EO_LATENCY_TARGET_SECONDS": "2", "EO_LOG_FORMAT": "json"}
    env.pop("NVIDIA_VISIBLE_DEVICES", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    args = [*base_args(tmp_path, vllm.url), "--interval-seconds", "0.1", "--settle-seconds", "0"]
    args += ["--latency-window-seconds", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "powercap", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    state = tmp_path / "state" / f"{SIM_UUID}.json"
    try:
        deadline = time.monotonic() + 30
        while not (state.exists() and json.loads(state.read_text())["status"] == "controlling"):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the sidecar never lowered the cap"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    record = json.loads(state.read_text())
    assert record["status"] == "restored" and record["original_power_limit_mw"] == 700_000
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any("SIGTERM" in entry["message"] for entry in logs)
    assert any("original setting restored" in entry["message"] for entry in logs)


def test_refusal_in_a_real_process_is_a_message_and_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EO_")}
    args = [*base_args(tmp_path, "http://127.0.0.1:9/metrics"), "--latency-target-seconds", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "powercap", *args, "--simulated-unprivileged"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr and "CAP_SYS_ADMIN" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--simulated-unprivileged"], "CAP_SYS_ADMIN"),
        (["--latency-quantile", "1.5"], "--latency-quantile"),
        (
            ["--floor-watts", "500", "--ceiling-watts", "400"],
            "--floor-watts (500.0) is above --ceiling-watts",
        ),
        (["--floor-watts", "800"], "floor 800 W is above ceiling 700 W"),
        (["--gpu-uuids", "GPU-not-ours"], "GPU-not-ours not visible"),
        (["--gpu-uuids-file", "/nonexistent/gpus", "--gpu-uuids-wait-seconds", "0"], "still missing"),
        (["--server", "tgi", "--latency-kind", "ttft"], "--latency-metric"),
        (["--raise-above-ratio", "0.5"], "--lower-below-ratio"),
        (["--interval-seconds", "0"], "--interval-seconds"),
        (["--latency-labels", "model_name"], "--latency-labels"),
        (
            ["--scrape-timeout-seconds", "0"],
            "--scrape-timeout-seconds / EO_SCRAPE_TIMEOUT_SECONDS: must be a number > 0",
        ),
        (
            [
                "--latency-source",
                "prometheus",
                "--prometheus-query",
                "q",
                "--prometheus-timeout-seconds",
                "-1",
            ],
            "--prometheus-timeout-seconds / EO_PROMETHEUS_TIMEOUT_SECONDS: must be a number > 0",
        ),
    ],
)
def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    args = [*base_args(tmp_path, "http://127.0.0.1:9/metrics"), "--latency-target-seconds", "2", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and message in err


def test_refuses_when_the_container_sees_no_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "void")
    assert main([*base_args(tmp_path, "http://x/"), "--latency-target-seconds", "2"]) == 2
    assert "no GPU is visible" in capsys.readouterr().err


def test_refuses_a_gpu_locked_by_another_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = start_powercap(settings(tmp_path), [SimulatedGpu(0)], ScriptedSource(), run_loop=False)
    try:
        assert main([*base_args(tmp_path, "http://x/"), "--latency-target-seconds", "2"]) == 2
    finally:
        other.stop()
    err = capsys.readouterr().err
    assert f"GPU {SIM_UUID} is controlled by another process" in err and "--dry-run" in err


def test_bad_env_value_names_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EO_INTERVAL_SECONDS", "soon")
    assert main([*base_args(tmp_path, "http://x/"), "--latency-target-seconds", "2"]) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and "--interval-seconds / EO_INTERVAL_SECONDS" in err
    assert "Traceback" not in err


def test_flag_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EO_MAX_STEP_WATTS", "10")
    monkeypatch.setenv("EO_DRY_RUN", "true")
    monkeypatch.setenv("EO_LATENCY_TARGET_SECONDS", "2")
    assert load_settings([]).max_step_w == 10.0
    assert load_settings([]).dry_run is True
    assert load_settings(["--max-step-watts", "40"]).max_step_w == 40.0
    assert load_settings(["--dry-run=false"]).dry_run is False


def test_visible_uuids() -> None:
    assert visible_uuids("GPU-a, GPU-b", {"NVIDIA_VISIBLE_DEVICES": "none"}) == ["GPU-a", "GPU-b"]
    assert visible_uuids("", {"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}) == ["GPU-a", "GPU-b"]
    assert visible_uuids("", {"NVIDIA_VISIBLE_DEVICES": "all"}) is None
    assert visible_uuids("", {"CUDA_VISIBLE_DEVICES": "0,1"}) is None
    assert visible_uuids("", {}) is None
    with pytest.raises(StartupRefused, match="CUDA_VISIBLE_DEVICES"):
        visible_uuids("", {"CUDA_VISIBLE_DEVICES": ""})
