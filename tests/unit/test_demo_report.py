"""The demo's end-of-run summary: the sidecars' decisions by reason in the JSON and in the printed lines."""

from __future__ import annotations

import pytest

from demo.cli import print_summary
from demo.report import DemoResult, decisions_line


def result(decisions: dict[str, int] | None = None) -> DemoResult:
    extra = {} if decisions is None else {"decisions": decisions}
    return DemoResult(
        rows=[], slo_s=2.0, capacity_rps=1.5, requests=10, finished=9, gpu_energy_j=9000.0, cap_changes=4,
        alerts_seen={"EoSloBurn"}, gpus_restored=True, max_desired=3, final_desired=1, actuator="clocks",
        by_phase={"steady": (9, 8)}, **extra,
    )  # fmt: skip


def test_the_summary_counts_the_decisions_by_reason_sorted_by_name() -> None:
    summary = result({"scale_up_bridge": 2, "feedforward": 7, "at_ceiling": 7}).summary()
    assert list(summary["sidecar_decisions_by_reason"].items()) == [
        ("at_ceiling", 7), ("feedforward", 7), ("scale_up_bridge", 2),
    ]  # fmt: skip


def test_a_run_without_decisions_counts_none() -> None:
    assert result().summary()["sidecar_decisions_by_reason"] == {}
    assert decisions_line({}) == "none"


def test_the_line_puts_the_most_frequent_first() -> None:
    assert decisions_line({"scale_up_bridge": 2, "feedforward": 7, "at_ceiling": 7}) == (
        "at_ceiling 7, feedforward 7, scale_up_bridge 2"
    )


def test_the_printed_summary_has_one_line_of_decisions(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary(result({"feedforward": 5, "queue_forming": 1}), wall_s=60.0)
    lines = [line for line in capsys.readouterr().out.splitlines() if "sidecar decisions" in line]
    assert lines == ["  sidecar decisions        feedforward 5, queue_forming 1 (by reason)"]


def test_the_scalers_decisions_have_their_own_key_and_line(capsys: pytest.CaptureFixture[str]) -> None:
    r = DemoResult(
        rows=[], slo_s=2.0, capacity_rps=1.5, requests=10, finished=9, gpu_energy_j=9000.0, cap_changes=4,
        alerts_seen=set(), gpus_restored=True, max_desired=3, final_desired=0, actuator="clocks",
        by_phase={"steady": (9, 8)}, decisions={"feedforward": 5},
        scaler_decisions={"hold": 30, "slo_breach": 2, "idle_zero": 4},
    )  # fmt: skip
    assert r.summary()["scaler_decisions_by_reason"] == {"hold": 30, "idle_zero": 4, "slo_breach": 2}
    assert result().summary()["scaler_decisions_by_reason"] == {}
    print_summary(r, wall_s=60.0)
    lines = [line for line in capsys.readouterr().out.splitlines() if "scaler decisions" in line]
    assert lines == ["  scaler decisions         hold 30, idle_zero 4, slo_breach 2 (by reason)"]
