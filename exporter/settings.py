"""eo-exporter's configuration: one frozen, typed settings object, from flags or ``EO_*`` variables.

Every flag ``--some-flag`` has the environment variable ``EO_SOME_FLAG``; a flag wins over its
variable. Values are validated once at start; a bad one raises ``SettingsError`` naming both the flag
and the variable, which ``main`` prints before exiting with status 2.
"""

from __future__ import annotations

import argparse
import math
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.pods.cgroup import DEFAULT_CGROUP_ROOT
from exporter.pods.scrape import DEFAULT_MAX_BODY_BYTES
from exporter.rapl import DEFAULT_RAPL_ROOT
from exporter.simload import DEFAULT_SIM_LOAD, LoadPattern, parse_load_pattern

DEFAULT_PORT = 9102
DEFAULT_KUBELET_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
_DEFAULT_LOAD = parse_load_pattern(DEFAULT_SIM_LOAD)


class SettingsError(ValueError):
    """A setting has a bad value; the message names the flag and its environment variable."""


@dataclass(frozen=True)
class Settings:
    listen_address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    node_name: str = ""
    gpu_backend: str = "nvml"
    sim_gpus: int = 4
    sim_load: LoadPattern = _DEFAULT_LOAD
    gpu_retry_interval_s: float = 10.0
    rapl_root: Path | None = DEFAULT_RAPL_ROOT
    redfish_url: str | None = None
    redfish_username_file: Path | None = None
    redfish_password_file: Path | None = None
    redfish_ca_file: Path | None = None
    redfish_insecure_skip_verify: bool = False
    redfish_chassis_id: str | None = None
    redfish_interval_s: float = 30.0
    redfish_timeout_s: float = 5.0
    redfish_max_age_s: float = 120.0
    log_format: str = "text"
    log_level: str = "info"
    pod_attribution: str = "auto"
    kubelet_socket: Path = Path(DEFAULT_KUBELET_SOCKET)
    pod_sample_interval_s: float = 5.0
    pod_metrics_timeout_s: float = 1.0
    pod_metrics_max_bytes: int = DEFAULT_MAX_BODY_BYTES
    pod_grace_period_s: float = 300.0
    kubeconfig: Path | None = None
    cgroup_root: Path = Path(DEFAULT_CGROUP_ROOT)


def env_name(flag: str) -> str:
    return "EO_" + flag.removeprefix("--").replace("-", "_").upper()


# -- converters: text in, typed value out, ValueError with a short reason --------------------------------
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be an integer") from None


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port 0..65535 (0 picks a free one)")
    return value


def _count(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 64:
        raise ValueError("must be an integer 1..64")
    return value


def _byte_count(text: str) -> int:
    value = _int(text)
    if not 64 * 1024 <= value <= 256 * 1024 * 1024:
        raise ValueError("must be a number of bytes from 65536 (64 KiB) to 268435456 (256 MiB)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number of seconds > 0") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number of seconds > 0")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return convert


def _file(text: str) -> Path | None:
    if not text:
        return None
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"file {text!r} does not exist")
    return path


def _optional_dir(text: str) -> Path | None:
    return Path(text) if text else None


def _url(text: str) -> str | None:
    if not text:
        return None
    if not text.startswith(("https://", "http://")):
        raise ValueError("must be an http(s):// URL of the BMC, e.g. https://10.0.0.5")
    return text.rstrip("/")


def _text(text: str) -> str | None:
    return text or None


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be true or false")


@dataclass(frozen=True)
class _Option:
    flag: str
    field: str
    convert: Callable[[str], Any]
    default: str
    help: str
    is_switch: bool = False


_OPTIONS: tuple[_Option, ...] = (
    _Option("--listen-address", "listen_address", str, "0.0.0.0", "address to serve HTTP on"),
    _Option(
        "--port", "port", _port, str(DEFAULT_PORT), "TCP port for /metrics and /healthz (0: a free port)"
    ),
    _Option(
        "--node-name",
        "node_name",
        str,
        "",
        "value of the node label (the DaemonSet passes spec.nodeName); default: this host's name",
    ),
    _Option(
        "--gpu-backend", "gpu_backend", _choice("nvml", "simulated"), "nvml", "where GPU readings come from"
    ),
    _Option("--sim-gpus", "sim_gpus", _count, "4", "number of simulated GPUs (with --gpu-backend simulated)"),
    _Option(
        "--sim-load",
        "sim_load",
        parse_load_pattern,
        DEFAULT_SIM_LOAD,
        "running batch of each simulated GPU over time: idle, constant:BATCH, sine:PERIOD_S:MAX_BATCH or "
        "square:PERIOD_S:BATCH (PERIOD_S in seconds; GPUs are phase-shifted)",
    ),
    _Option(
        "--gpu-retry-interval-seconds",
        "gpu_retry_interval_s",
        _seconds,
        "10",
        "seconds between attempts to reopen NVML after it failed or a GPU was lost",
    ),
    _Option(
        "--rapl-root",
        "rapl_root",
        _optional_dir,
        str(DEFAULT_RAPL_ROOT),
        "powercap sysfs directory holding the intel-rapl / amd-rapl zones (empty: no CPU energy)",
    ),
    _Option(
        "--redfish-url", "redfish_url", _url, "", "BMC base URL, e.g. https://10.0.0.5 (empty: no node power)"
    ),
    _Option("--redfish-username-file", "redfish_username_file", _file, "", "file holding the BMC user name"),
    _Option("--redfish-password-file", "redfish_password_file", _file, "", "file holding the BMC password"),
    _Option(
        "--redfish-ca-file", "redfish_ca_file", _file, "", "PEM CA bundle to verify the BMC's certificate"
    ),
    _Option(
        "--redfish-insecure-skip-verify",
        "redfish_insecure_skip_verify",
        _bool,
        "false",
        "do not verify the BMC's TLS certificate (unsafe; for self-signed BMCs without a CA file)",
        is_switch=True,
    ),
    _Option(
        "--redfish-chassis-id",
        "redfish_chassis_id",
        _text,
        "",
        "Redfish chassis to read (empty: the first chassis that reports power)",
    ),
    _Option("--redfish-interval-seconds", "redfish_interval_s", _seconds, "30", "seconds between BMC polls"),
    _Option(
        "--redfish-timeout-seconds",
        "redfish_timeout_s",
        _seconds,
        "5",
        "timeout of each BMC HTTP request, in seconds (at most the poll interval)",
    ),
    _Option(
        "--redfish-max-age-seconds",
        "redfish_max_age_s",
        _seconds,
        "120",
        "seconds after which the last node power reading is no longer published (at least the interval)",
    ),
    _Option(
        "--pod-attribution",
        "pod_attribution",
        _choice("auto", "on", "off"),
        "auto",
        "per-pod energy, requests and tokens: auto (on when the kubelet socket exists), on or off",
    ),
    _Option(
        "--kubelet-socket",
        "kubelet_socket",
        Path,
        DEFAULT_KUBELET_SOCKET,
        "unix socket of the kubelet's PodResources API (which pod holds which GPU)",
    ),
    _Option(
        "--pod-sample-interval-seconds",
        "pod_sample_interval_s",
        _seconds,
        "5",
        "seconds between pod samples (kubelet devices, inference-server counters and energy, read together)",
    ),
    _Option(
        "--pod-metrics-timeout-seconds",
        "pod_metrics_timeout_s",
        _seconds,
        "1",
        "one deadline for all inference-server reads of a sample, in seconds (below the sample interval)",
    ),
    _Option(
        "--pod-metrics-max-bytes",
        "pod_metrics_max_bytes",
        _byte_count,
        str(DEFAULT_MAX_BODY_BYTES),
        "largest inference-server /metrics body read, in bytes after decompression (a larger one is a "
        "failed read of that pod)",
    ),
    _Option(
        "--pod-grace-period-seconds",
        "pod_grace_period_s",
        _seconds,
        "300",
        "seconds a pod's series are still published after it stops holding a GPU",
    ),
    _Option(
        "--kubeconfig",
        "kubeconfig",
        _file,
        "",
        "kubeconfig for the pod cache (empty: the in-cluster service account)",
    ),
    _Option(
        "--cgroup-root",
        "cgroup_root",
        Path,
        str(DEFAULT_CGROUP_ROOT),
        "cgroup v2 mount holding kubepods, for the pods' CPU energy share (source=cpu)",
    ),
    _Option("--log-format", "log_format", _choice("text", "json"), "text", "log line format"),
    _Option(
        "--log-level",
        "log_level",
        _choice("debug", "info", "warning", "error"),
        "info",
        "debug, info, warning or error",
    ),
)


def _metavar(flag: str) -> str:
    last = flag.rsplit("-", 1)[-1]
    named = {
        "seconds": "SECONDS",
        "file": "FILE",
        "root": "DIR",
        "url": "URL",
        "id": "ID",
        "gpus": "N",
        "socket": "PATH",
        "kubeconfig": "FILE",
        "bytes": "BYTES",
    }
    choices = {
        "--gpu-backend": "{nvml,simulated}",
        "--log-format": "{text,json}",
        "--sim-load": "PATTERN",
        "--pod-attribution": "{auto,on,off}",
    }
    return choices.get(flag, named.get(last, last.upper()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eo-exporter",
        description="Energy Orchestrator node exporter: GPU (NVML), CPU (RAPL) and node (Redfish) power and "
        "energy on /metrics, liveness on /healthz. Every flag --some-flag can also be set with the "
        "environment variable EO_SOME_FLAG; the flag wins.",
    )
    for opt in _OPTIONS:
        text = f"{opt.help} [env {env_name(opt.flag)}; default: {opt.default or 'unset'}]"
        if opt.is_switch:
            parser.add_argument(opt.flag, dest=opt.field, action="store_const", const="true", help=text)
        else:
            parser.add_argument(opt.flag, dest=opt.field, metavar=_metavar(opt.flag), help=text)
    return parser


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` (flags) over ``env`` (``EO_*``) over defaults. Raises SettingsError.

    argparse itself exits with status 2 on an unknown flag or ``--help``.
    """
    env = {} if env is None else env
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for opt in _OPTIONS:
        given = getattr(args, opt.field)
        where = opt.flag
        if given is None and env_name(opt.flag) in env:
            given, where = env[env_name(opt.flag)], env_name(opt.flag)
        text = opt.default if given is None else given
        try:
            values[opt.field] = opt.convert(text)
        except ValueError as err:
            raise SettingsError(
                f"{opt.flag} / {env_name(opt.flag)}: bad value {text!r} (from {where}): {err}"
            ) from None
    if not values["node_name"]:
        values["node_name"] = platform.node() or "unknown"
    settings = Settings(**values)
    _check_combinations(settings)
    return settings


def _check_combinations(s: Settings) -> None:
    if s.pod_metrics_timeout_s >= s.pod_sample_interval_s:
        raise SettingsError(
            "--pod-metrics-timeout-seconds / EO_POD_METRICS_TIMEOUT_SECONDS "
            f"({s.pod_metrics_timeout_s}) must be below --pod-sample-interval-seconds "
            f"({s.pod_sample_interval_s})"
        )
    if (s.redfish_username_file is None) != (s.redfish_password_file is None):
        raise SettingsError(
            "--redfish-username-file / EO_REDFISH_USERNAME_FILE and --redfish-password-file / "
            "EO_REDFISH_PASSWORD_FILE go together: set both or neither"
        )
    if s.redfish_ca_file is not None and s.redfish_insecure_skip_verify:
        raise SettingsError(
            "--redfish-insecure-skip-verify / EO_REDFISH_INSECURE_SKIP_VERIFY contradicts "
            "--redfish-ca-file / EO_REDFISH_CA_FILE: pick one"
        )
    if s.redfish_timeout_s > s.redfish_interval_s:
        raise SettingsError(
            f"--redfish-timeout-seconds / EO_REDFISH_TIMEOUT_SECONDS ({s.redfish_timeout_s}) must not exceed "
            f"--redfish-interval-seconds ({s.redfish_interval_s})"
        )
    if s.redfish_max_age_s < s.redfish_interval_s:
        raise SettingsError(
            f"--redfish-max-age-seconds / EO_REDFISH_MAX_AGE_SECONDS ({s.redfish_max_age_s}) must be "
            "at least "
            f"--redfish-interval-seconds ({s.redfish_interval_s})"
        )
