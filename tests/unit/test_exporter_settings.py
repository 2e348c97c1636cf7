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
    assert len(flags) - 1 == len(Settings.model_fields)


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


# The flags and variables are a published interface (manifests, docs, users' scripts): exactly these.
PUBLISHED_FLAGS = (
    "--listen-address",
    "--port",
    "--node-name",
    "--gpu-backend",
    "--sim-gpus",
    "--sim-load",
    "--gpu-retry-interval-seconds",
    "--rapl-root",
    "--redfish-url",
    "--redfish-username-file",
    "--redfish-password-file",
    "--redfish-ca-file",
    "--redfish-insecure-skip-verify",
    "--redfish-chassis-id",
    "--redfish-interval-seconds",
    "--redfish-timeout-seconds",
    "--redfish-max-age-seconds",
    "--pod-attribution",
    "--kubelet-socket",
    "--pod-sample-interval-seconds",
    "--pod-metrics-timeout-seconds",
    "--pod-metrics-max-bytes",
    "--pod-grace-period-seconds",
    "--kubeconfig",
    "--cgroup-root",
    "--log-format",
    "--log-level",
)


def test_the_published_flags_and_variables_are_unchanged() -> None:
    flags = [a for action in build_parser()._actions for a in action.option_strings if a != "-h"]
    assert sorted(flags) == sorted((*PUBLISHED_FLAGS, "--help"))
    help_text = " ".join(build_parser().format_help().split())
    for flag in PUBLISHED_FLAGS:
        assert f"(env EO_{flag[2:].replace('-', '_').upper()};" in help_text, flag
    # A few read from their variables (the rest by the tests above and the manifests' crosscheck).
    env = {"EO_REDFISH_CHASSIS_ID": "1U", "EO_POD_GRACE_PERIOD_SECONDS": "60", "EO_SIM_GPUS": "8"}
    s = parse_settings([], env)
    assert (s.redfish_chassis_id, s.pod_grace_period_s, s.sim_gpus) == ("1U", 60.0, 8)


def test_every_default_is_the_documented_one() -> None:
    s = parse_settings([], {})
    assert (s.listen_address, s.port, s.gpu_backend, s.sim_gpus) == ("0.0.0.0", 9102, "nvml", 4)
    assert s.sim_load == LoadPattern("sine", batch=96.0, period_s=120.0)
    assert s.gpu_retry_interval_s == 10.0
    assert s.rapl_root == Path("/sys/class/powercap")
    assert (s.redfish_url, s.redfish_username_file, s.redfish_password_file, s.redfish_ca_file) == (
        None,
        None,
        None,
        None,
    )
    assert (s.redfish_insecure_skip_verify, s.redfish_chassis_id) == (False, None)
    assert (s.redfish_interval_s, s.redfish_timeout_s, s.redfish_max_age_s) == (30.0, 5.0, 120.0)
    assert s.pod_attribution == "auto"
    assert s.kubelet_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    assert (s.pod_sample_interval_s, s.pod_metrics_timeout_s, s.pod_grace_period_s) == (5.0, 1.0, 300.0)
    assert (s.kubeconfig, s.cgroup_root) == (None, Path("/sys/fs/cgroup"))
    assert (s.log_format, s.log_level) == ("text", "info")
    assert s.node_name  # this host's name when none is given


def test_the_pod_defaults_are_the_pod_attributions_own() -> None:
    """Declared once, on PodSettings: the exporter's defaults hand over unchanged."""
    pods = PodSettings.from_exporter(parse_settings([], {"EO_NODE_NAME": "n"}))
    assert pods == PodSettings(node_name="n")


def test_empty_variables_mean_unset_where_the_setting_is_optional() -> None:
    env = {"EO_NODE_NAME": "", "EO_RAPL_ROOT": "", "EO_REDFISH_URL": "", "EO_KUBECONFIG": ""}
    s = parse_settings([], env)
    assert s.node_name not in ("", None)
    assert (s.rapl_root, s.redfish_url, s.kubeconfig) == (None, None, None)


def test_redfish_url_keeps_no_trailing_slash_and_is_not_echoed_when_refused() -> None:
    assert parse_settings(["--redfish-url", "https://10.0.0.5/"], {}).redfish_url == "https://10.0.0.5"
    with pytest.raises(SettingsError) as err:
        parse_settings(["--redfish-url", "ftp://admin:hunter2@bmc"], {})
    assert "--redfish-url / EO_REDFISH_URL" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_the_switch_takes_a_value_too() -> None:
    assert (
        parse_settings(["--redfish-insecure-skip-verify", "false"], {}).redfish_insecure_skip_verify is False
    )
    with pytest.raises(
        SettingsError, match="--redfish-insecure-skip-verify / EO_REDFISH_INSECURE_SKIP_VERIFY"
    ):
        parse_settings([], {"EO_REDFISH_INSECURE_SKIP_VERIFY": "maybe"})


def test_ca_file_and_skip_verify_contradict(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    with pytest.raises(SettingsError, match="contradicts --redfish-ca-file / EO_REDFISH_CA_FILE"):
        parse_settings(["--redfish-ca-file", str(ca), "--redfish-insecure-skip-verify"], {})


def test_pod_timing_is_checked_at_start_naming_both_flags() -> None:
    with pytest.raises(SettingsError) as err:
        parse_settings([], {"EO_POD_METRICS_TIMEOUT_SECONDS": "6"})
    assert "--pod-metrics-timeout-seconds / EO_POD_METRICS_TIMEOUT_SECONDS" in str(err.value)
    assert "--pod-sample-interval-seconds" in str(err.value)


def test_help_shows_the_choices() -> None:
    text = build_parser().format_help()
    for choices in ("{nvml,simulated}", "{auto,on,off}", "{text,json}", "{debug,info,warning,error}"):
        assert choices in text
