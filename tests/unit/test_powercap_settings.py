"""``eo-powercap``'s settings: every published flag and variable kept, one check per rule naming the flag
and the variable, and the one conversion to the controller's config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from common.settings import from_values
from powercap.controller import ControllerConfig
from powercap.main import build_parser, load_settings, main
from powercap.settings import GpuRange, Settings, StartupRefused, controller_config

REPO = Path(__file__).resolve().parents[2]
TARGET = {"EO_LATENCY_TARGET_SECONDS": "2"}

# The flags eo-powercap published before its settings were declared once, with their defaults: names
# and defaults are an interface (manifests, docs, users' scripts) and must not move.
PUBLISHED_DEFAULTS: dict[str, object] = {
    "--gpu-backend": "nvml",
    "--gpu-uuids": "",
    "--gpu-uuids-file": None,
    "--gpu-uuids-wait-seconds": 600.0,
    "--simulated-gpus": 1,
    "--simulated-unprivileged": False,
    "--actuator": "power",
    "--dry-run": False,
    "--apply-via": "direct",
    "--latency-quantile": 0.95,
    "--latency-window-seconds": 60.0,
    "--latency-source": "metrics",
    "--metrics-url": "http://127.0.0.1:8000/metrics",
    "--server": "vllm",
    "--latency-kind": "e2e",
    "--latency-metric": None,
    "--latency-scale": None,
    "--latency-labels": {},
    "--scrape-timeout-seconds": 2.0,
    "--prometheus-url": "http://prometheus:9090",
    "--prometheus-query": None,
    "--prometheus-load-query": None,
    "--prometheus-bearer-token-file": None,
    "--prometheus-timeout-seconds": 5.0,
    "--interval-seconds": 5.0,
    "--floor-watts": None,
    "--ceiling-watts": None,
    "--max-step-watts": 25.0,
    "--floor-sm-clock-mhz": None,
    "--ceiling-sm-clock-mhz": None,
    "--max-step-mhz": 90.0,
    "--lower-below-ratio": 0.85,
    "--raise-above-ratio": 0.95,
    "--raise-fraction": 0.5,
    "--settle-seconds": 30.0,
    "--stale-after-seconds": 30.0,
    "--thermal-margin-celsius": 5.0,
    "--breach-memory-seconds": 300.0,
    "--load-jump-ratio": 0.5,
    "--error-backoff-seconds": 60.0,
    # The clock governor (issue 13): added, never moved.
    "--control": "auto",
    "--ttft-target-seconds": None,
    "--itl-target-seconds": None,
    "--target-share": 1.0,
    "--target-quantile": 0.99,
    "--ttft-history-seconds": 300.0,
    "--breach-significance": 0.05,
    "--workload": "",
    "--scale-up-source": "scaler",
    "--scale-up-query": None,
    "--power-budget-watts": None,
    "--state-dir": Path("/var/lib/energy-orchestrator/powercap"),
    "--lock-dir": None,
    "--listen-address": "0.0.0.0",
    "--port": 9104,
    "--pod-name": "",
    "--pod-namespace": "",
    "--pod-uid": "",
    "--node-name": "",
    "--kube-events": "auto",
    "--kube-api-url": None,
    "--kube-token-file": Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
    "--kube-ca-file": Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"),
    "--log-format": "text",
    "--log-level": "info",
}


def _dests() -> dict[str, str]:
    """flag -> Settings field, from the parser the binary uses."""
    return {
        option: action.dest
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_published_flag_is_kept_with_its_default() -> None:
    dests = _dests()
    assert set(dests) == set(PUBLISHED_DEFAULTS) | {"--latency-target-seconds"}
    defaults = load_settings([], TARGET)
    for flag, default in PUBLISHED_DEFAULTS.items():
        assert getattr(defaults, dests[flag]) == default, flag


@pytest.mark.parametrize("flag", [*PUBLISHED_DEFAULTS, "--latency-target-seconds"])
def test_every_flag_is_also_its_variable_and_help_names_it(flag: str) -> None:
    variable = "EO_" + flag.removeprefix("--").replace("-", "_").upper()
    assert variable in " ".join(build_parser().format_help().split())


def test_docs_flag_table_is_the_settings() -> None:
    text = (REPO / "docs" / "powercap.md").read_text()
    section = text.split("## Flags", 1)[1].split("\n## ", 1)[0]
    rows = "\n".join(line for line in section.splitlines() if line.startswith("| `--"))
    documented = set(re.findall(r"`(--[a-z0-9-]+)`", rows))
    assert documented == set(_dests())


def test_latency_target_is_required_and_help_says_so() -> None:
    with pytest.raises(StartupRefused, match="--latency-target-seconds / EO_LATENCY_TARGET_SECONDS"):
        load_settings([], {})
    help_text = " ".join(build_parser().format_help().split())
    assert "EO_LATENCY_TARGET_SECONDS; default: none, required" in help_text


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # Read as "not dry-run" by the old parser: a typo turned enforcement on. Now refused.
        ("EO_DRY_RUN", "ture"),
        # Made the old wait for --gpu-uuids-file endless (a NaN deadline is never reached).
        ("EO_GPU_UUIDS_WAIT_SECONDS", "nan"),
        # Crashed the old default Prometheus query with a traceback (int(inf)).
        ("EO_LATENCY_WINDOW_SECONDS", "inf"),
        ("EO_SIMULATED_GPUS", "0"),
        ("EO_ACTUATOR", "fans"),
        ("EO_SERVER", "ollama"),
        ("EO_LATENCY_QUANTILE", "nan"),
        ("EO_FLOOR_WATTS", "-1"),
        ("EO_SETTLE_SECONDS", "inf"),
        ("EO_PORT", "70000"),
    ],
)
def test_a_bad_value_is_refused_naming_flag_and_variable(variable: str, value: str) -> None:
    flag = "--" + variable.removeprefix("EO_").lower().replace("_", "-")
    with pytest.raises(StartupRefused, match=f"{flag} / {variable}:"):
        load_settings([], {**TARGET, variable: value})


def test_a_typo_in_dry_run_refuses_in_a_real_start(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--gpu-backend", "simulated", "--latency-target-seconds", "2", "--dry-run", "ture"]
    assert main(args) == 2
    assert "--dry-run / EO_DRY_RUN: must be true or false" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EO_FLOOR_SM_CLOCK_MHZ": "1500", "EO_CEILING_SM_CLOCK_MHZ": "900"},
            "--floor-sm-clock-mhz (1500.0) is above --ceiling-sm-clock-mhz (900.0) "
            "(EO_FLOOR_SM_CLOCK_MHZ, EO_CEILING_SM_CLOCK_MHZ)",
        ),
        (
            {"EO_LOWER_BELOW_RATIO": "0.9", "EO_RAISE_ABOVE_RATIO": "0.9"},
            "(EO_LOWER_BELOW_RATIO, EO_RAISE_ABOVE_RATIO)",
        ),
        (
            {"EO_LATENCY_SOURCE": "prometheus"},
            "--prometheus-query, or --pod-name and --pod-namespace for the default query "
            "(EO_PROMETHEUS_QUERY, EO_POD_NAME, EO_POD_NAMESPACE)",
        ),
        (
            {"EO_SERVER": "triton", "EO_LATENCY_KIND": "e2e"},
            "name one with --latency-metric (and --latency-scale for non-second units) "
            "(EO_SERVER, EO_LATENCY_KIND, EO_LATENCY_METRIC)",
        ),
    ],
)
def test_cross_field_checks_name_every_flag_and_variable_in_full(env: dict[str, str], message: str) -> None:
    with pytest.raises(StartupRefused) as err:
        load_settings([], {**TARGET, **env})
    assert message in str(err.value)


def test_flags_win_and_booleans_parse_one_way() -> None:
    env = {**TARGET, "EO_DRY_RUN": "yes", "EO_INTERVAL_SECONDS": "2"}
    assert (load_settings([], env).dry_run, load_settings([], env).interval_s) == (True, 2.0)
    assert load_settings(["--dry-run=false", "--interval-seconds", "1"], env).interval_s == 1.0
    assert load_settings(["--dry-run", "off"], env).dry_run is False
    assert load_settings(["--dry-run"], TARGET).dry_run is True


def test_labels_and_the_derived_reads() -> None:
    s = load_settings(
        ["--latency-labels", "model_name=llama, lora = a", "--interval-seconds", "1.5"],
        {**TARGET, "EO_SERVER": "triton", "EO_LATENCY_KIND": "ttft"},
    )
    assert s.latency_labels == {"model_name": "llama", "lora": "a"}
    assert s.latency_histogram == ("nv_inference_first_response_histogram_ms", 0.001)
    assert (s.scrape_deadline_s, s.prometheus_deadline_s) == (1.5, 1.5), "never longer than the interval"
    scaled = load_settings(["--latency-metric", "x_ms", "--latency-scale", "0.001"], TARGET)
    assert scaled.latency_histogram == ("x_ms", 0.001)


def test_default_prometheus_queries_are_the_pods() -> None:
    s = load_settings(["--latency-source", "prometheus", "--pod-name", "p", "--pod-namespace", "ns"], TARGET)
    latency, load = s.prometheus_queries
    assert latency == (
        'histogram_quantile(0.95, sum by (le) (rate(eo_pod_request_latency_seconds_bucket{namespace="ns",'
        'pod="p"}[60s])))'
    )
    assert load == 'sum(rate(eo_pod_request_latency_seconds_count{namespace="ns",pod="p"}[60s]))'
    given = load_settings(["--latency-source", "prometheus", "--prometheus-query", "q"], TARGET)
    assert given.prometheus_queries == ("q", None)


def test_in_process_settings_need_no_environment() -> None:
    s = from_values(Settings, {"latency_target_s": 1.0, "port": 0}, environ={})
    assert (s.port, s.interval_s, s.locks) == (0, 5.0, s.state_dir / "locks")


# -- the one conversion to ControllerConfig -----------------------------------------------------------
def _settings(**values: object) -> Settings:
    return from_values(Settings, {"latency_target_s": 2.0, **values}, environ={})


def test_control_law_defaults_are_declared_once_on_the_controller() -> None:
    config = controller_config(_settings(), GpuRange(low=200.0, high=700.0, original=700.0))
    law = [f for f in dataclasses.fields(ControllerConfig) if f.default is not dataclasses.MISSING]
    assert len(law) == 8
    for field in law:
        assert getattr(config, field.name) == field.default, field.name


def test_power_bounds_default_to_the_gpu_minimum_and_original() -> None:
    config = controller_config(_settings(), GpuRange(low=200.0, high=700.0, original=600.0))
    assert (config.actuator, config.floor, config.ceiling, config.max_step_down) == (
        "power",
        200.0,
        600.0,
        25.0,
    )
    assert config.target_latency_s == 2.0


def test_given_bounds_are_intersected_with_the_gpu_range() -> None:
    gpus = GpuRange(low=200.0, high=700.0, original=700.0)
    config = controller_config(_settings(floor_w=100.0, ceiling_w=900.0), gpus)
    assert (config.floor, config.ceiling) == (200.0, 700.0)
    config = controller_config(_settings(floor_w=300.0, ceiling_w=500.0), gpus)
    assert (config.floor, config.ceiling) == (300.0, 500.0)


def test_clock_bounds_and_tuning_carry_over() -> None:
    s = _settings(
        actuator="clocks",
        max_step_mhz=60.0,
        ceiling_mhz=1500.0,
        lower_below_ratio=0.8,
        raise_above_ratio=0.9,
        raise_fraction=0.25,
        settle_s=10.0,
        stale_after_s=20.0,
        thermal_margin_c=3.0,
        breach_memory_s=100.0,
        load_jump_ratio=0.0,
    )
    config = controller_config(s, GpuRange(low=900.0, high=1980.0, original=1980.0))
    assert dataclasses.asdict(config) == {
        "actuator": "clocks",
        "floor": 900.0,
        "ceiling": 1500.0,
        "target_latency_s": 2.0,
        "max_step_down": 60.0,
        "lower_below_ratio": 0.8,
        "raise_above_ratio": 0.9,
        "raise_fraction": 0.25,
        "settle_s": 10.0,
        "stale_after_s": 20.0,
        "thermal_margin_c": 3.0,
        "breach_memory_s": 100.0,
        "load_jump_ratio": 0.0,
    }


def test_an_empty_intersection_refuses_naming_both_bounds() -> None:
    with pytest.raises(StartupRefused, match="floor 750 W is above ceiling 700 W"):
        controller_config(_settings(floor_w=750.0), GpuRange(low=200.0, high=700.0, original=700.0))
