"""eo-exporter's configuration: one frozen, typed ``Settings``, each field declared once.

``Settings`` is a ``common.settings.BinarySettings``: every field's unit (in its name), default,
validation, flag, ``EO_*`` variable and help are declared here, and the command line, the environment
reading and ``--help`` are derived from them. Every flag ``--some-flag`` has the variable
``EO_SOME_FLAG``; a flag wins over its variable. Values are validated once at start; a bad one raises
``SettingsError`` naming both the flag and the variable, which ``main`` prints before exiting with
status 2. Checks that span fields (credentials in pairs, timeouts within intervals) are the model
validator below.

The pod attribution's defaults and its own invariant (reads end before the next sample) are declared on
``exporter.pods.settings.PodSettings`` and taken from there, so the two cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import PlainValidator, field_validator, model_validator

from common.settings import (
    BinarySettings,
    ExistingFile,
    Flag,
    OptionalBaseUrl,
    OptionalPath,
    OptionalText,
    Port,
    Seconds,
    SettingsError,
    from_values,
    setting,
)
from common.settings import build_parser as settings_parser
from exporter.pods.settings import PodSettings
from exporter.rapl import DEFAULT_RAPL_ROOT
from exporter.simload import DEFAULT_SIM_LOAD, LoadPattern, parse_load_pattern

__all__ = ["DEFAULT_PORT", "Settings", "SettingsError", "build_parser", "parse_settings"]

DEFAULT_PORT = 9102
_DESCRIPTION = (
    "Energy Orchestrator node exporter: GPU (NVML), CPU (RAPL) and node (Redfish) power and energy on "
    "/metrics, liveness on /healthz. Every flag --some-flag can also be set with the environment "
    "variable EO_SOME_FLAG; the flag wins."
)


def _pod_default(name: str) -> Any:
    """The pod attribution's default for ``name``, declared on ``PodSettings``."""
    return next(f.default for f in dataclasses.fields(PodSettings) if f.name == name)


def _load_pattern(value: object) -> LoadPattern:
    if isinstance(value, LoadPattern):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a load pattern such as sine:120:96")
    return parse_load_pattern(value)


SimLoad = Annotated[LoadPattern, PlainValidator(_load_pattern)]


class Settings(BinarySettings):
    """Everything ``eo-exporter`` takes. Each flag ``--some-flag`` is also ``EO_SOME_FLAG``."""

    # -- serving -----------------------------------------------------------------------------------------
    listen_address: str = setting("0.0.0.0", "address to serve HTTP on")
    port: Port = setting(DEFAULT_PORT, "TCP port for /metrics and /healthz (0: a free port)")
    node_name: str = setting(
        "", "value of the node label (the DaemonSet passes spec.nodeName; empty: this host's name)"
    )

    # -- GPUs --------------------------------------------------------------------------------------------
    gpu_backend: Literal["nvml", "simulated"] = setting("nvml", "where GPU readings come from")
    sim_gpus: int = setting(4, "number of simulated GPUs, 1..64 (with --gpu-backend simulated)", ge=1, le=64)
    sim_load: SimLoad = setting(
        DEFAULT_SIM_LOAD,
        "running batch of each simulated GPU over time: idle, constant:BATCH, sine:PERIOD_S:MAX_BATCH or "
        "square:PERIOD_S:BATCH (PERIOD_S in seconds; GPUs are phase-shifted)",
    )
    gpu_retry_interval_s: Seconds = setting(
        10.0,
        "seconds between attempts to reopen NVML after it failed or a GPU was lost",
        flag="--gpu-retry-interval-seconds",
    )

    # -- CPU (RAPL) --------------------------------------------------------------------------------------
    rapl_root: OptionalPath = setting(
        DEFAULT_RAPL_ROOT,
        "powercap sysfs directory holding the intel-rapl / amd-rapl zones (empty: no CPU energy)",
    )

    # -- node (Redfish) ----------------------------------------------------------------------------------
    redfish_url: OptionalBaseUrl = setting(None, "BMC base URL, e.g. https://10.0.0.5 (empty: no node power)")
    redfish_username_file: ExistingFile = setting(None, "file holding the BMC user name")
    redfish_password_file: ExistingFile = setting(None, "file holding the BMC password")
    redfish_ca_file: ExistingFile = setting(None, "PEM CA bundle to verify the BMC's certificate")
    redfish_insecure_skip_verify: Flag = setting(
        False, "do not verify the BMC's TLS certificate (unsafe; for self-signed BMCs without a CA file)"
    )
    redfish_chassis_id: OptionalText = setting(
        None, "Redfish chassis to read (empty: the first chassis that reports power)"
    )
    redfish_interval_s: Seconds = setting(
        30.0, "seconds between BMC polls", flag="--redfish-interval-seconds"
    )
    redfish_timeout_s: Seconds = setting(
        5.0,
        "total deadline of each BMC HTTP request, in seconds (at most the poll interval)",
        flag="--redfish-timeout-seconds",
    )
    redfish_max_age_s: Seconds = setting(
        120.0,
        "seconds after which the last node power reading is no longer published (at least the interval)",
        flag="--redfish-max-age-seconds",
    )

    # -- pods --------------------------------------------------------------------------------------------
    pod_attribution: Literal["auto", "on", "off"] = setting(
        _pod_default("attribution"),
        "per-pod energy, requests and tokens: auto (on when the kubelet socket exists), on or off",
    )
    kubelet_socket: Path = setting(
        Path(_pod_default("kubelet_socket")),
        "unix socket of the kubelet's PodResources API (which pod holds which GPU)",
    )
    pod_sample_interval_s: Seconds = setting(
        _pod_default("sample_interval_s"),
        "seconds between pod samples (kubelet devices, inference-server counters and energy, read together)",
        flag="--pod-sample-interval-seconds",
    )
    pod_metrics_timeout_s: Seconds = setting(
        _pod_default("metrics_timeout_s"),
        "one deadline for all inference-server reads of a sample, in seconds (below the sample interval)",
        flag="--pod-metrics-timeout-seconds",
    )
    pod_metrics_max_bytes: int = setting(
        _pod_default("metrics_max_bytes"),
        "largest inference-server /metrics body read, in bytes after decompression, 65536 (64 KiB) to "
        "268435456 (256 MiB); a larger one is a failed read of that pod",
        ge=64 * 1024,
        le=256 * 1024 * 1024,
    )
    pod_grace_period_s: Seconds = setting(
        _pod_default("grace_period_s"),
        "seconds a pod's series are still published after it stops holding a GPU",
        flag="--pod-grace-period-seconds",
    )
    kubeconfig: ExistingFile = setting(
        None, "kubeconfig for the pod cache (empty: the in-cluster service account)"
    )
    cgroup_root: Path = setting(
        _pod_default("cgroup_root"),
        "cgroup v2 mount holding kubepods, for the pods' CPU energy share (source=cpu)",
    )

    # -- logs --------------------------------------------------------------------------------------------
    log_format: Literal["text", "json"] = setting("text", "log line format")
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", "debug, info, warning or error")

    @field_validator("node_name")
    @classmethod
    def _host_name_when_empty(cls, value: str) -> str:
        return value or platform.node() or "unknown"

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        self.require_together("redfish_username_file", "redfish_password_file", ": set both or neither")
        if self.redfish_ca_file is not None and self.redfish_insecure_skip_verify:
            raise ValueError(
                f"{self.flag_and_variable('redfish_insecure_skip_verify')} contradicts "
                f"{self.flag_and_variable('redfish_ca_file')}: pick one"
            )
        interval = f"{self.flag_for('redfish_interval_s')} ({self.redfish_interval_s})"
        if self.redfish_timeout_s > self.redfish_interval_s:
            raise ValueError(
                f"{self.flag_and_variable('redfish_timeout_s')} ({self.redfish_timeout_s}) must not exceed "
                f"{interval}"
            )
        if self.redfish_max_age_s < self.redfish_interval_s:
            raise ValueError(
                f"{self.flag_and_variable('redfish_max_age_s')} ({self.redfish_max_age_s}) must be at least "
                f"{interval}"
            )
        # The pod attribution's own invariants (its ValueError names the flags): checked here so a bad
        # combination refuses the start before anything is opened.
        PodSettings.from_exporter(self)
        return self


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(Settings, "eo-exporter", _DESCRIPTION)


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` (flags) over ``env`` (``EO_*``; none when not given) over the defaults.

    Raises ``SettingsError``; argparse itself exits (status 2 on an unknown flag, 0 on ``--help``).
    """
    given = vars(build_parser().parse_args(argv))
    return from_values(Settings, given, environ={} if env is None else env)
