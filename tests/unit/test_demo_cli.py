"""The demo's command line and its bookkeeping of sidecar moves."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from demo.cli import QUICK_PHASES, STANDARD_PHASES, main, parse_args, parse_phases
from demo.loop import setting_changes
from demo.schedule import Phase
from devices.simulated import SimulatedGpu


def test_phases_parse_in_order() -> None:
    assert parse_phases("a:10:2, b:5:0") == (Phase("a", 10.0, 2.0), Phase("b", 5.0, 0.0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a:10", "expected name:seconds:speedup"),
        ("a:ten:2", "must be numbers"),
        ("a:0:2", "seconds > 0"),
        ("a:10:-1", "speedup >= 0"),
    ],
)
def test_bad_phases_name_the_piece(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message) as err:
        parse_phases(text)
    assert repr(text.split(",", maxsplit=1)[0]) in str(err.value)


def test_bad_phases_exit_with_usage_not_a_trace(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--phases", "warm-up:x:2"], {})
    assert exit_.value.code == 2
    assert "must be numbers" in capsys.readouterr().err


def test_bad_phases_from_the_variable_name_it_and_the_piece(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args([], {"EO_DEMO_PHASES": "a:10:2,b:0:1"})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--phases / EO_DEMO_PHASES" in err and "'b:0:1'" in err and "Traceback" not in err


def test_options_read_eo_demo_variables_and_the_option_wins() -> None:
    env = {"EO_DEMO_QUICK": "1", "EO_DEMO_GPUS": "3", "EO_DEMO_ACTUATOR": "power", "EO_DEMO_OUT": "x"}
    s = parse_args([], env)
    assert (s.quick, s.gpus, s.actuator, s.out, s.phases) == (True, 3, "power", Path("x"), None)
    assert parse_args(["--gpus", "4"], env).gpus == 4
    assert parse_args([], {"EO_GPUS": "5"}).gpus == 6, "the demo reads EO_DEMO_*, not EO_*"
    assert parse_args([], {"EO_DEMO_PHASES": "a:10:2"}).phases == (Phase("a", 10.0, 2.0),)


def test_defaults_and_the_short_verbose_flag() -> None:
    s = parse_args([], {})
    assert (s.quick, s.gpus, s.actuator, s.out, s.verbose) == (False, 6, "clocks", Path("out"), False)
    assert parse_args(["-v"], {}).verbose and parse_args(["--verbose"], {}).verbose


def test_bad_actuator_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--actuator", "volts"], {})
    assert exit_.value.code == 2
    assert "--actuator / EO_DEMO_ACTUATOR" in capsys.readouterr().err


def test_schedules_include_silence_and_a_surge() -> None:
    for phases in (STANDARD_PHASES, QUICK_PHASES):
        assert phases[-1].speedup == 0, "the workload must be able to scale to zero at the end"
        assert max(p.speedup for p in phases) >= 4 * phases[0].speedup


def test_setting_changes_skip_the_permission_probe() -> None:
    gpu = SimulatedGpu(0)
    default = gpu.power_limit_default_mw()
    gpu.set_power_limit_mw(default)  # the sidecar's start-up probe re-writes the limit in force
    assert setting_changes(gpu) == 0
    gpu.set_power_limit_mw(default - 100_000)
    gpu.set_power_limit_mw(default)
    gpu.lock_sm_clocks_mhz(210, 1500)
    gpu.reset_sm_clocks()
    assert setting_changes(gpu) == 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpus", "40"], "--gpus (EO_DEMO_GPUS) must be between 1 and 16"),
        (["--trace", "/nonexistent.csv"], "trace /nonexistent.csv not found"),
    ],
)
def test_bad_options_are_messages_before_anything_starts(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
