"""Settings: flags over EO_* variables over defaults; a bad value names the setting and exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.pods.settings import PodSettings
from exporter.settings import Settings, SettingsError, build_parser, parse_settings
from exporter.simload import LoadPattern


def test_defaults() -> None:
    s = parse_settings([], {"EO_NODE_NAME": "gpu-node-7"})
    assert (s.port, s.gpu_backend, s.node_name, s.log_format) == (9102, "nvml", "gpu-node-7", "text")
    assert s.rapl_root == Path("/sys/class/powercap")
    assert s.redfish_url is None


def test_flag_wins_over_env_and_env_is_used_otherwise() -> None:
    env = {"EO_PORT": "9200", "EO_GPU_BACKEND": "simulated", "EO_SIM_LOAD": "constant:8"}
    s = parse_settings(["--port", "9300"], env)
    assert s.port == 9300
    assert s.gpu_backend == "simulated"
    assert s.sim_load == LoadPattern("constant", batch=8.0)


def test_pod_metrics_body_cap_defaults_to_4_mib_and_reaches_the_pod_settings() -> None:
    assert parse_settings([], {}).pod_metrics_max_bytes == 4 * 1024 * 1024
    s = parse_settings([], {"EO_POD_METRICS_MAX_BYTES": "8388608"})
    assert PodSettings.from_exporter(s).metrics_max_bytes == 8 * 1024 * 1024


def test_switch_from_env(tmp_path: Path) -> None:
    s = parse_settings([], {"EO_REDFISH_INSECURE_SKIP_VERIFY": "true", "EO_REDFISH_URL": "https://bmc"})
    assert s.redfish_insecure_skip_verify is True
    assert s.redfish_url == "https://bmc"
    assert parse_settings(["--redfish-insecure-skip-verify"], {}).redfish_insecure_skip_verify is True


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--port", "abc"], {}, "--port / EO_PORT"),
        ([], {"EO_PORT": "70000"}, "--port / EO_PORT"),
        (["--gpu-backend", "cuda"], {}, "--gpu-backend / EO_GPU_BACKEND"),
        (["--sim-load", "sine:x:1"], {}, "--sim-load / EO_SIM_LOAD"),
        (["--sim-gpus", "0"], {}, "--sim-gpus / EO_SIM_GPUS"),
        (["--redfish-url", "bmc.local"], {}, "--redfish-url / EO_REDFISH_URL"),
        (["--redfish-password-file", "/nonexistent/pw"], {}, "--redfish-password-file"),
        (["--redfish-timeout-seconds", "-1"], {}, "--redfish-timeout-seconds"),
        (["--redfish-timeout-seconds", "40"], {}, "--redfish-timeout-seconds"),
        (["--redfish-max-age-seconds", "10"], {}, "--redfish-max-age-seconds"),
        ([], {"EO_LOG_FORMAT": "xml"}, "--log-format / EO_LOG_FORMAT"),
        (["--pod-metrics-max-bytes", "1024"], {}, "--pod-metrics-max-bytes / EO_POD_METRICS_MAX_BYTES"),
        ([], {"EO_POD_METRICS_MAX_BYTES": "4MiB"}, "--pod-metrics-max-bytes / EO_POD_METRICS_MAX_BYTES"),
    ],
)
def test_bad_values_name_the_setting(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace("/", "/")):
        parse_settings(argv, env)


def test_credentials_go_together(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.write_text("admin\n")
    with pytest.raises(SettingsError, match="set both or neither"):
        parse_settings(["--redfish-username-file", str(user)], {})


def test_every_flag_has_help_with_its_env_var_and_default() -> None:
    text = build_parser().format_help()
    flags = [a for action in build_parser()._actions for a in action.option_strings if a.startswith("--")]
    for flag in flags:
        if flag == "--help":
            continue
        env = "EO_" + flag[2:].replace("-", "_").upper()
        assert env in text.replace("\n", " ").replace("  ", ""), flag
    assert len(flags) - 1 == len(Settings.__dataclass_fields__)


def test_cli_bad_value_exits_2_with_a_message_and_no_traceback() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--gpu-backend",
            "simulated",
            "--redfish-interval-seconds",
            "soon",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--redfish-interval-seconds / EO_REDFISH_INTERVAL_SECONDS" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_help_exits_0_and_explains_units() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--help"], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "seconds" in proc.stdout and "EO_SIM_LOAD" in proc.stdout
